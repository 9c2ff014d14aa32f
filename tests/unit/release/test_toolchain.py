"""What an app folder's manifest records of the compiler (its `version` answer, on whichever stream
it comes); what of the toolchain reruns jobs (its releases) and what a folder records of it (the
exact versions that built its packages)."""

import json
from pathlib import Path

import pytest
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


LINUX = {"python": "3.11.7", "torch": "2.13.0+cpu", "coremltools": "9.0", "numpy": "2.3.5", "snakemake": "9.27.1"}


def test_a_mac_s_wheels_and_python_patch_level_rerun_nothing():
    """The team's `torch 2.13.0+cpu` against a Mac's `torch 2.13.0`, Python 3.11.7 against 3.11.2:
    the same releases, so the same fingerprint (no reconversion over Linux-built results)."""
    from sd3coreml.release.toolchain import fingerprint, rerun_versions

    mac = {**LINUX, "python": "3.11.2", "torch": "2.13.0"}
    assert fingerprint(mac) == fingerprint(LINUX)
    assert fingerprint({**LINUX, "torch": "2.13.0"}) == fingerprint(LINUX)  # the local label alone
    assert fingerprint({**LINUX, "python": "3.11.12"}) == fingerprint(LINUX)  # the patch level alone
    assert rerun_versions(LINUX) == {**LINUX, "python": "3.11", "torch": "2.13.0"}


@pytest.mark.parametrize(
    "change",
    [
        {"torch": "2.13.1"},
        {"torch": "2.14.0+cpu"},
        {"coremltools": "9.1"},
        {"coremltools": "9.0.post1"},
        {"numpy": "2.3.4"},
        {"python": "3.12.1"},
        {"snakemake": "missing"},
    ],
)
def test_another_release_still_replans(change):
    from sd3coreml.release.toolchain import fingerprint

    assert fingerprint({**LINUX, **change}) != fingerprint(LINUX)


def test_the_record_is_named_by_the_fingerprint_and_a_manifest_records_its_exact_versions(tmp_path):
    """A folder assembled on a Mac from Linux-built packages records the toolchain that built them:
    the record the Linux run wrote, found by the Mac under the same fingerprint."""
    from sd3coreml.release.manifest import recorded_toolchain
    from sd3coreml.release.toolchain import record_path, write_record

    mac = {**LINUX, "python": "3.11.2", "torch": "2.13.0"}
    root = str(tmp_path / "results")
    assert record_path(root, mac) == record_path(root, LINUX)
    assert record_path(root, {**LINUX, "torch": "2.13.1"}) != record_path(root, LINUX)
    write_record(record_path(root, LINUX), LINUX)  # the converting machine's run
    request = {"kind": "packages", "toolchain_record": record_path(root, mac)}  # the Mac's request
    assert recorded_toolchain(request) == {"kind": "packages", "toolchain": LINUX}


def test_a_missing_record_is_one_line(tmp_path):
    from sd3coreml.errors import PipelineError
    from sd3coreml.release.manifest import recorded_toolchain

    with pytest.raises(PipelineError, match=r"toolchain record cannot be read .*; rerun the workflow$"):
        recorded_toolchain({"toolchain_record": str(tmp_path / "gone.json")})
