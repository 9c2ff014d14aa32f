"""mac-selfcheck: its parsing and its spelling probe on recorded outputs and the compiler double; its refusal."""

import subprocess
import sys

import pytest
from harness import FAKE_COMPILER

from sd3coreml.sweep.mac_selfcheck import spelling_probe, summary, with_spelling, xcode_version

FAKE_TEMPLATE = (
    f"{FAKE_COMPILER} compile {{package}} {{output_dir}} --platform iOS --deployment-target {{deployment_target}}"
)


def test_xcodebuild_version_is_read():
    assert xcode_version("Xcode 16.2\nBuild version 16C5032a\n") == {"xcode": "16.2", "build": "16C5032a"}
    assert xcode_version("xcode-select: error: tool 'xcodebuild' requires Xcode") == {"xcode": None, "build": None}


def test_the_probe_compiles_with_each_spelling_and_records_what_the_compiler_took(demo_workdir):
    package = next((demo_workdir / "results/demo/mmdit").rglob("input.fp16.mlpackage"))
    probes = spelling_probe(package, FAKE_TEMPLATE)
    # The double accepts exactly the template's spelling, iOS.
    assert probes["iOS"]["exit"] == 0 and probes["iOS"]["tree"] == ["input.fp16.mlmodelc/metadata.json",
                                                                      "input.fp16.mlmodelc/model.mil"]  # fmt: skip
    assert probes["ios"]["exit"] == 1 and probes["ios"]["tree"] == [] and "usage" in probes["ios"]["stderr"]
    assert with_spelling(FAKE_TEMPLATE, "ios").count("--platform ios") == 1


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
