"""Compiling packages with a test-double compiler, and the Mac hand-off of a packages folder."""

import json
import subprocess
from pathlib import Path

import pytest
from harness import FAKE_COMPILER_TEMPLATE, STAGE, make_entries, make_package, sha256_check_command

from sd3coreml import checksums
from sd3coreml.commands import main as cli
from sd3coreml.errors import PipelineError
from sd3coreml.release import compile, folder, folder_check

AFTER_COMPILE = ["coremlsd3_4step", "coremlsd3_4step_packages", "sources"]
MODELS = ["TextEncoder", "TextEncoder2", "VAEDecoder", "MultiModalDiffusionTransformerConditioning"]


def make_packages_folder(tmp_path: Path, stage_count: int = 3) -> Path:
    """A packages folder as the pipeline assembles it on a host without the compiler."""
    packages_dir = tmp_path / "coremlsd3_4step_packages"
    entries = make_entries(tmp_path / "sources", stage_count)
    folder.assemble_folder(entries, packages_dir, {"config": {"latent_size": 64}})
    return packages_dir


def test_compile_package_writes_the_contract_name_with_the_target(tmp_path):
    package = make_package(tmp_path, "TextEncoder.mlpackage")
    out_modelc = tmp_path / "out" / "TextEncoder.mlmodelc"
    compile.compile_package(package, out_modelc, FAKE_COMPILER_TEMPLATE, "18.2")
    metadata = json.loads((out_modelc / "metadata.json").read_text())
    assert metadata == {"deployment_target": "18.2", "platform": "iOS", "source": "TextEncoder.mlpackage"}
    assert (out_modelc / "model.mil").read_bytes().startswith((package / "Manifest.json").read_bytes())
    assert [path.name for path in out_modelc.parent.iterdir()] == ["TextEncoder.mlmodelc"]


def test_compile_package_renames_to_the_requested_name(tmp_path):
    package = make_package(tmp_path / "blocks-0-4", "package.mlpackage")
    out_modelc = tmp_path / "out" / f"{STAGE}1.mlmodelc"
    compile.compile_package(package, out_modelc, FAKE_COMPILER_TEMPLATE, "18.2")
    assert json.loads((out_modelc / "metadata.json").read_text())["source"] == "package.mlpackage"


def test_paths_with_spaces_and_quotes_reach_the_compiler_intact(tmp_path):
    package = make_package(tmp_path / "my packages's dir", "Text Encoder.mlpackage")
    out_modelc = tmp_path / "app folder" / "TextEncoder.mlmodelc"
    compile.compile_package(package, out_modelc, FAKE_COMPILER_TEMPLATE, "18.2")
    assert (out_modelc / "metadata.json").is_file()


def test_a_failing_compiler_names_the_package_and_keeps_the_old_output(tmp_path):
    package = make_package(tmp_path, "VAEDecoder.mlpackage")
    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").unlink()
    out_modelc = tmp_path / "out" / "VAEDecoder.mlmodelc"
    out_modelc.mkdir(parents=True)
    (out_modelc / "previous.bin").write_text("from the last good build")

    with pytest.raises(PipelineError) as raised:
        compile.compile_package(package, out_modelc, FAKE_COMPILER_TEMPLATE, "18.2")
    message = str(raised.value)
    assert "VAEDecoder.mlpackage" in message
    assert "missing Data/com.apple.CoreML/model.mlmodel" in message
    assert "\n" not in message
    assert (out_modelc / "previous.bin").is_file()
    assert [path.name for path in out_modelc.parent.iterdir()] == ["VAEDecoder.mlmodelc"]

    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"fixed")
    compile.compile_package(package, out_modelc, FAKE_COMPILER_TEMPLATE, "18.2")
    assert not (out_modelc / "previous.bin").exists()


def test_wrong_compiler_arguments_are_reported(tmp_path):
    package = make_package(tmp_path, "TextEncoder.mlpackage")
    template = FAKE_COMPILER_TEMPLATE.replace("--platform iOS", "--platform macOS")
    with pytest.raises(PipelineError, match="TextEncoder.mlpackage.*usage: compile"):
        compile.compile_package(package, tmp_path / "X.mlmodelc", template, "18.2")


def test_a_compiler_producing_no_or_several_models_is_refused(tmp_path):
    package = make_package(tmp_path, "TextEncoder.mlpackage")
    with pytest.raises(PipelineError, match="TextEncoder.mlpackage.*found none"):
        compile.compile_package(package, tmp_path / "X.mlmodelc", "true {package} {output_dir}", "18.2")
    two = tmp_path / "two_models"
    two.write_text('#!/usr/bin/env bash\nmkdir "$1/A.mlmodelc" "$1/B.mlmodelc"\n')
    two.chmod(0o755)
    with pytest.raises(PipelineError, match="found A.mlmodelc, B.mlmodelc"):
        compile.compile_package(package, tmp_path / "X.mlmodelc", f"{two} {{output_dir}}", "18.2")
    assert not (tmp_path / "X.mlmodelc").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["TextEncoder.mlpackage", "two_models"]


@pytest.mark.parametrize(
    ("template", "target", "message"),
    [
        ("coremlcompiler {package} {output} {deployment_target}", "18.2", "use only the fields"),
        ("coremlcompiler {package} 'unclosed", "18.2", "quotation"),
        (FAKE_COMPILER_TEMPLATE, "18.2; rm -rf /", "write it as a version"),
    ],
)
def test_bad_templates_and_targets_are_refused(tmp_path, template, target, message):
    package = make_package(tmp_path, "TextEncoder.mlpackage")
    with pytest.raises(PipelineError, match=message):
        compile.compile_package(package, tmp_path / "TextEncoder.mlmodelc", template, target)


def test_compile_folder_builds_the_app_folder(tmp_path):
    packages_dir = make_packages_folder(tmp_path)
    app_dir = tmp_path / "coremlsd3_4step"
    compile.compile_folder(packages_dir, app_dir, FAKE_COMPILER_TEMPLATE, "17.4")

    expected = {f"{name}.mlmodelc" for name in MODELS + [f"{STAGE}{index}" for index in range(3)]}
    expected |= {"vocab.json", "merges.txt", "manifest.json", "SHA256SUMS"}
    assert {path.name for path in app_dir.iterdir()} == expected
    for modelc in app_dir.glob("*.mlmodelc"):
        metadata = json.loads((modelc / "metadata.json").read_text())
        assert metadata["deployment_target"] == "17.4"
        assert metadata["source"] == f"{modelc.stem}.mlpackage"
    assert (app_dir / "vocab.json").read_bytes() == (packages_dir / "vocab.json").read_bytes()

    manifest = json.loads((app_dir / "manifest.json").read_text())
    assert manifest["packages"] == json.loads((packages_dir / "manifest.json").read_text())
    assert manifest["compiler"]["deployment_target"] == "17.4"
    # The record names the program, never its path on the building host.
    assert manifest["compiler"]["command"].startswith("fake_coremlcompiler compile")
    assert manifest["compiler"]["versions"] == {"compiler": "fake_coremlcompiler 0.1 (test double)"}
    assert "compiler_version" not in manifest

    checked = subprocess.run([*sha256_check_command(), "SHA256SUMS"], cwd=app_dir, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == AFTER_COMPILE


def test_compile_folder_replaces_an_older_app_folder_whole(tmp_path):
    app_dir = tmp_path / "coremlsd3_4step"
    compile.compile_folder(make_packages_folder(tmp_path / "eight", stage_count=8), app_dir, FAKE_COMPILER_TEMPLATE)
    assert (app_dir / f"{STAGE}7.mlmodelc").is_dir()
    compile.compile_folder(make_packages_folder(tmp_path / "seven", stage_count=7), app_dir, FAKE_COMPILER_TEMPLATE)
    assert not (app_dir / f"{STAGE}7.mlmodelc").exists()
    assert checksums.check_sha256sums(app_dir) == []


def test_compile_folder_refuses_a_modified_packages_folder(tmp_path):
    packages_dir = make_packages_folder(tmp_path)
    (packages_dir / f"{STAGE}1.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"tampered")
    with pytest.raises(PipelineError, match=f"modified: {STAGE}1.mlpackage/Data/com.apple.CoreML/model.mlmodel"):
        compile.compile_folder(packages_dir, tmp_path / "app", FAKE_COMPILER_TEMPLATE)
    assert not (tmp_path / "app").exists()


def test_compile_folder_keeps_the_old_app_folder_when_a_package_fails(tmp_path):
    packages_dir = make_packages_folder(tmp_path)
    app_dir = tmp_path / "coremlsd3_4step"
    compile.compile_folder(packages_dir, app_dir, FAKE_COMPILER_TEMPLATE)
    before = checksums.tree_sha256(app_dir)
    failing = f"{FAKE_COMPILER_TEMPLATE} --extra"
    with pytest.raises(PipelineError, match="mlpackage"):
        compile.compile_folder(packages_dir, app_dir, failing)
    assert checksums.tree_sha256(app_dir) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == AFTER_COMPILE


def test_compile_folder_refuses_to_overwrite_its_packages(tmp_path):
    packages_dir = make_packages_folder(tmp_path)
    with pytest.raises(PipelineError, match="must differ"):
        compile.compile_folder(packages_dir, packages_dir, FAKE_COMPILER_TEMPLATE)
    assert checksums.check_sha256sums(packages_dir) == []


def test_require_compiler_with_the_default_template_on_a_host_without_xcode(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no xcrun, as on this Linux host
    assert not compile.compiler_available(compile.DEFAULT_COMPILER)
    with pytest.raises(PipelineError) as raised:
        compile.require_compiler(compile.DEFAULT_COMPILER, "coremlsd3_4step_packages")
    assert str(raised.value) == (
        "Apple's Core ML compiler is not available on this host ('xcrun --find coremlcompiler' failed): "
        "build 'coremlsd3_4step_packages' here, then on a Mac run: "
        "python -m sd3coreml compile-folder <packages folder> <app folder>"
    )


def write_fake_xcrun(bin_dir: Path, finds: bool) -> None:
    """A stand-in xcrun that logs every call to xcrun.log beside it."""
    bin_dir.mkdir()
    xcrun = bin_dir / "xcrun"
    xcrun.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "${0%/*}/xcrun.log"\n'
        'if [ "$1" = --find ] && [ "$2" = coremlcompiler ]; then '
        f"{'echo /x/coremlcompiler; exit 0' if finds else 'exit 1'}; fi\n"
        'if [ "$1" = coremlcompiler ] && [ "$2" = version ]; then echo 3505.4.1; exit 0; fi\n'
        "exit 1\n"
    )
    xcrun.chmod(0o755)


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / name).chmod(0o755)


SELECT_XCODE = "sudo xcode-select -s /Applications/Xcode.app/Contents/Developer"
# What macOS's xcode-select says where no developer folder is selected (no Xcode, no Command Line Tools).
NO_DEVELOPER_DIRECTORY = (
    'echo "xcode-select: error: unable to get active developer directory, use \\`sudo xcode-select --switch '
    'path/to/Xcode.app\\` to set one (or see \\`man xcode-select\\`)" >&2; exit 2'
)


@pytest.mark.parametrize(
    "selected, expected",
    [
        (
            "Library/Developer/CommandLineTools",
            "only the Command Line Tools are selected ({root}/Library/Developer/CommandLineTools), and coremlcompiler "
            f"comes with Xcode: install Xcode, then run {SELECT_XCODE}",
        ),
        (
            "Applications/Xcode.app/Contents/Developer",
            "Xcode's licence is not accepted yet, so xcrun runs none of its tools: run sudo xcodebuild -license accept",
        ),
        (
            None,
            "this Mac has no developer tools (xcode-select -p names none), and coremlcompiler comes with Xcode: "
            "install Xcode (the App Store or developer.apple.com; xcode-select --install gives only the Command "
            f"Line Tools, which lack it), then run {SELECT_XCODE}",
        ),
        (
            "Applications/Xcode-moved.app/Contents/Developer",
            "the developer folder xcode-select -p names ({root}/Applications/Xcode-moved.app/Contents/Developer) "
            "does not exist (Xcode or the Command Line Tools were moved or removed): install Xcode, then run "
            f"{SELECT_XCODE}",
        ),
    ],
    ids=["command-line-tools-only", "licence-not-accepted", "no-developer-tools", "selected-folder-gone"],
)
def test_a_mac_without_a_usable_xcode_is_told_what_to_do(tmp_path, monkeypatch, selected, expected):
    bin_dir = tmp_path / "bin"
    write_fake_xcrun(bin_dir, finds=False)
    if selected is None:
        fake_tool(bin_dir, "xcode-select", NO_DEVELOPER_DIRECTORY)
    else:
        fake_tool(bin_dir, "xcode-select", f'[ "$1" = -p ] && echo {tmp_path / selected}')
        if "moved" not in selected:
            (tmp_path / selected).mkdir(parents=True)
    # The licence is never accepted here: only a Mac with Xcode selected may be told so. Without
    # developer tools /usr/bin/xcodebuild is a stub whose licence check fails too.
    fake_tool(bin_dir, "xcodebuild", "exit 69")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(PipelineError) as raised:
        compile.require_compiler(compile.DEFAULT_COMPILER, "coremlsd3_4step_packages")
    assert str(raised.value).startswith(expected.format(root=tmp_path) + ": build 'coremlsd3_4step_packages' here")
    # Without a developer folder the xcrun stub is never run: it may open macOS's install dialog.
    assert (bin_dir / "xcrun.log").exists() is (selected is not None and "moved" not in selected)


@pytest.mark.parametrize("finds", [True, False])
def test_the_default_template_asks_xcrun_to_find_the_compiler(tmp_path, monkeypatch, finds):
    write_fake_xcrun(tmp_path / "bin", finds)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert compile.compiler_available(compile.DEFAULT_COMPILER) is finds
    versions = compile.compiler_record(compile.DEFAULT_COMPILER, "18.2")["versions"]
    # No xcodebuild on this PATH: its version is recorded as unavailable, not guessed.
    assert versions == {"compiler": "3505.4.1", "xcode": "unavailable"}


def test_custom_templates_need_an_executable_first_word(tmp_path):
    assert compile.compiler_available(FAKE_COMPILER_TEMPLATE)
    missing = str(tmp_path / "no_such_compiler") + " {package} {output_dir}"
    assert not compile.compiler_available(missing)
    with pytest.raises(PipelineError, match="'.*no_such_compiler' of the compiler template.*build 'pkgs' here"):
        compile.require_compiler(missing, "pkgs")


def test_cli_compile_folder_and_compile_package(tmp_path, monkeypatch, capsys):
    packages_dir = make_packages_folder(tmp_path)
    app_dir = tmp_path / "app"
    argv = ["compile-folder", str(packages_dir), str(app_dir), "--compiler", FAKE_COMPILER_TEMPLATE]
    argv += ["--deployment-target", "18.0"]
    assert cli.main(argv) == 0
    assert json.loads((app_dir / "manifest.json").read_text())["compiler"]["deployment_target"] == "18.0"
    assert folder_check.folder_problems(app_dir) == []

    out_modelc = tmp_path / "single" / "TextEncoder.mlmodelc"
    argv = ["compile-package", "--package", str(packages_dir / "TextEncoder.mlpackage"), "--out", str(out_modelc)]
    assert cli.main([*argv, "--compiler", FAKE_COMPILER_TEMPLATE]) == 0
    assert json.loads((out_modelc / "metadata.json").read_text())["deployment_target"] == "18.2"

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    capsys.readouterr()
    assert cli.main(["compile-folder", str(packages_dir), str(tmp_path / "app2")]) == 1
    assert "xcrun --find coremlcompiler" in capsys.readouterr().err
