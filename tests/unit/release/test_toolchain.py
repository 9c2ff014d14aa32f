"""What an app folder's manifest records of the compiler: its `version` answer, on whichever stream it comes."""

import json
from pathlib import Path

from harness import FAKE_COMPILER, make_package

from sd3coreml.release import compile

ARGUMENTS = "compile {package} {output_dir} --platform iOS --deployment-target {deployment_target}"


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_a_compiler_that_prints_its_version_to_stderr_is_recorded(tmp_path):
    # The test double, except that `version` answers on stderr, as coremlcompiler may.
    compiler = script(
        tmp_path / "stderr_compiler",
        f'if [ "$1" = version ]; then echo "coremlcompiler 3505.4.1" >&2; exit 0; fi\nexec {FAKE_COMPILER} "$@"',
    )
    template = f"{compiler} {ARGUMENTS}"
    assert compile.compiler_record(template, "18.2")["versions"] == {"compiler": "coremlcompiler 3505.4.1"}
    # The same template still compiles through the double.
    out_modelc = tmp_path / "out" / "TextEncoder.mlmodelc"
    compile.compile_package(make_package(tmp_path, "TextEncoder.mlpackage"), out_modelc, template, "18.2")
    assert json.loads((out_modelc / "metadata.json").read_text())["deployment_target"] == "18.2"


def test_stdout_wins_over_stderr_noise_and_a_silent_or_failing_tool_is_unavailable(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    script(
        bin_dir / "xcrun",
        'if [ "$1" = coremlcompiler ] && [ "$2" = version ]; then echo 3505.4.1 >&2; exit 0; fi\nexit 1',
    )
    # xcodebuild's plug-in warnings carry a pid and a time: recorded, they would change the manifest at every run.
    script(
        bin_dir / "xcodebuild",
        'echo "2026-05-27 10:00:00.000 xcodebuild[4242:1234] [MT] DVTPlugInLoading: Failed to load code" >&2\n'
        'printf "Xcode 16.4\\nBuild version 16F6\\n"',
    )
    monkeypatch.setenv("PATH", str(bin_dir))
    assert compile.compiler_record(compile.DEFAULT_COMPILER, "18.2")["versions"] == {
        "compiler": "3505.4.1",
        "xcode": "Xcode 16.4 Build version 16F6",
    }

    script(bin_dir / "xcodebuild", "exit 0")
    script(bin_dir / "xcrun", "echo 'xcrun: error: unable to find utility \"coremlcompiler\"' >&2; exit 72")
    assert compile.compiler_record(compile.DEFAULT_COMPILER, "18.2")["versions"] == {
        "compiler": "unavailable",
        "xcode": "unavailable",
    }
