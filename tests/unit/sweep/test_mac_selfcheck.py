"""mac-selfcheck: its parsing on recorded outputs; its one-line refusal off a Mac."""

import subprocess
import sys

import pytest

from sd3coreml.sweep.mac_selfcheck import summary, xcode_version


def test_xcodebuild_version_is_read():
    assert xcode_version("Xcode 16.2\nBuild version 16C5032a\n") == {"xcode": "16.2", "build": "16C5032a"}
    assert xcode_version("xcode-select: error: tool 'xcodebuild' requires Xcode") == {"xcode": None, "build": None}


def test_the_summary_says_what_this_mac_can_do():
    record = {
        "macos": "15.3.1", "machine": "arm64",
        "xcode_select": {"stdout": "/Applications/Xcode.app/Contents/Developer"},
        "xcode": {"xcode": "16.2", "build": "16C5032a"},
        "coremlcompiler_version": {"stdout": "3404.23.1", "stderr": ""},
        "platform_spellings": {"iOS": {"exit": 0, "tree": ["a", "b"]}, "ios": {"exit": 0, "tree": ["a", "b"]}},
        "coreml": {"summary": "97% on the Neural Engine, predict 0.031 s"},
    }  # fmt: skip
    text = summary(record)
    assert "- macOS 15.3.1 (arm64)" in text and "Xcode 16.2 (build 16C5032a)" in text
    assert "spellings the compiler takes: iOS, ios" in text and "97% on the Neural Engine" in text


@pytest.mark.skipif(sys.platform == "darwin", reason="the refusal is what other hosts do")
def test_off_a_mac_it_refuses_in_one_line(tmp_path):
    command = [sys.executable, "-m", "sd3coreml", "mac-selfcheck", "--package", str(tmp_path / "x.mlpackage")]
    command += ["--out-json", str(tmp_path / "m.json"), "--out-summary", str(tmp_path / "m.md")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert (
        result.returncode == 1
        and result.stderr == "error: mac-selfcheck looks at a Mac's Xcode and Core ML; run it on a Mac\n"
    )
    assert list(tmp_path.iterdir()) == []
