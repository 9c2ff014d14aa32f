"""Compile `.mlpackage`s to the `.mlmodelc`s the app loads, and hand a packages folder to a Mac.

Only Apple's `coremlcompiler` (macOS, Xcode) can compile; nothing here imitates it. The
compiler is a command template, so tests and unusual installs can name another program.
`compile_folder` is the Mac hand-off: a packages folder built on any host becomes the
app folder, with the packages' manifest carried inside the new one.

The compiler's `--deployment-target` (e.g. 18.2) is not the conversion target
(`ct.target.iOS18`) that shaped the packages; the two are separate settings.
"""

import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.atomic import replace_path
from sd3coreml.errors import PipelineError
from sd3coreml.release import folder
from sd3coreml.release.client import APP_RECORD_KEYS
from sd3coreml.release.compiler_command import (
    _template_words,
    _xcrun_tool,
    compiler_record,
)
from sd3coreml.release.manifest import MANIFEST_NAME, read_manifest
from sd3coreml.release.toolchain import TOOL_TIMEOUT_SECONDS

DEFAULT_COMPILER = (
    "xcrun coremlcompiler compile {package} {output_dir} --platform iOS --deployment-target {deployment_target}"
)
DEFAULT_DEPLOYMENT_TARGET = "18.2"
TEMPLATE_FIELDS = "{package}, {output_dir}, {deployment_target}"
DEPLOYMENT_TARGET = re.compile(r"[0-9]+(\.[0-9]+)*")
HAND_OFF = "python -m sd3coreml compile-folder <packages folder> <app folder>"


def compiler_command(command_template: str, package: Path, output_dir: Path, deployment_target: str) -> list[str]:
    """The argument list for one compile: the template filled with shell-quoted values."""
    if not DEPLOYMENT_TARGET.fullmatch(deployment_target):
        raise PipelineError(f"deployment target {deployment_target!r}: write it as a version such as 18.2")
    try:
        command = command_template.format(
            package=shlex.quote(str(package)),
            output_dir=shlex.quote(str(output_dir)),
            deployment_target=shlex.quote(deployment_target),
        )
        return shlex.split(command)
    except (KeyError, IndexError, ValueError) as error:
        raise PipelineError(
            f"compiler template {command_template!r}: {error!r}; use only the fields {TEMPLATE_FIELDS}"
        ) from None


def _xcrun_finds(tool: str) -> bool:
    if shutil.which("xcrun") is None:
        return False
    try:
        found = subprocess.run(
            ["xcrun", "--find", tool], capture_output=True, timeout=TOOL_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0


def compiler_available(command_template: str) -> bool:
    """Whether the template's compiler can run here.

    For an `xcrun <tool>` template (the default) that is a developer folder selected and present
    (on a Mac) and `xcrun --find <tool>` succeeding; for any other, its first word is an
    executable on PATH or an executable path.
    """
    tool = _xcrun_tool(command_template)
    if tool is not None:
        # Without developer tools, /usr/bin/xcrun is a stub that may open macOS's install dialog.
        return _developer_folder_problem() is None and _xcrun_finds(tool)
    return shutil.which(_template_words(command_template)[0]) is not None


def _unavailable_reason(command_template: str) -> str:
    tool = _xcrun_tool(command_template)
    if tool is not None:
        return (
            _xcode_problem() or f"Apple's Core ML compiler is not available on this host ('xcrun --find {tool}' failed)"
        )
    program = _template_words(command_template)[0]
    return f"the compiler {program!r} of the compiler template is not an executable on this host"


def _developer_folder_problem() -> str | None:
    """On a Mac, what is wrong with the developer folder `xcode-select -p` names: none, or gone.

    Checked before any other developer tool runs: /usr/bin/xcrun and /usr/bin/xcodebuild are
    stubs on every macOS, and without developer tools they fail (xcodebuild's `-license check`
    too, which would read as a licence not yet accepted) or open the install dialog.
    """
    if shutil.which("xcode-select") is None:
        return None  # not a Mac
    selected = _answer_of(["xcode-select", "-p"])
    if not selected:
        return (
            "this Mac has no developer tools (xcode-select -p names none), and coremlcompiler comes with Xcode: "
            "install Xcode (the App Store or developer.apple.com; xcode-select --install gives only the Command "
            "Line Tools, which lack it), then run sudo xcode-select -s /Applications/Xcode.app/Contents/Developer"
        )
    if not Path(selected).is_dir():
        return (
            f"the developer folder xcode-select -p names ({selected}) does not exist (Xcode or the Command Line "
            "Tools were moved or removed): install Xcode, then run "
            "sudo xcode-select -s /Applications/Xcode.app/Contents/Developer"
        )
    return None


def _xcode_problem() -> str | None:
    """What is wrong with a Mac's developer tools, where `xcrun --find coremlcompiler` fails."""
    problem = _developer_folder_problem()
    if problem is not None or shutil.which("xcode-select") is None:
        return problem
    selected = _answer_of(["xcode-select", "-p"])
    if "CommandLineTools" in selected:
        return (
            f"only the Command Line Tools are selected ({selected}), and coremlcompiler comes with Xcode: "
            "install Xcode, then run sudo xcode-select -s /Applications/Xcode.app/Contents/Developer"
        )
    if shutil.which("xcodebuild") is not None and _answer_of(["xcodebuild", "-license", "check"]) is None:
        return (
            "Xcode's licence is not accepted yet, so xcrun runs none of its tools: run sudo xcodebuild -license accept"
        )
    return None


def _answer_of(command: list[str]) -> str | None:
    """A tool's stdout when it succeeds, else None."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def require_compiler(command_template: str, packages_target_hint: str) -> None:
    """Fail early, in one line, when the compiler cannot run here, naming the hand-off."""
    if not compiler_available(command_template):
        raise PipelineError(
            f"{_unavailable_reason(command_template)}: build '{packages_target_hint}' here, "
            f"then on a Mac run: {HAND_OFF}"
        )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _run_compiler(command: list[str], package: Path) -> None:
    shown = shlex.join(command)
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise PipelineError(
            f"{package}: cannot run the compiler ({error.strerror}: {command[0]}) in `{shown}`; "
            f"install Xcode, fix the compiler template, or run on a Mac: {HAND_OFF}"
        ) from None
    if result.returncode != 0:
        raise PipelineError(
            f"{package}: compiler exited with {result.returncode} "
            f"({_last_line(result.stderr or result.stdout)}) running `{shown}`"
        )


def _single_modelc(output_dir: Path, package: Path, command: list[str]) -> Path:
    produced = sorted(output_dir.glob("*.mlmodelc"))
    if len(produced) != 1:
        found = ", ".join(path.name for path in produced) or "none"
        raise PipelineError(
            f"{package}: expected exactly one .mlmodelc from `{shlex.join(command)}`, found {found}; "
            "check the compiler template's {output_dir}"
        )
    return produced[0]


def compile_package(package: Path, out_modelc: Path, command_template: str, deployment_target: str) -> None:
    """Compile one `.mlpackage` to `out_modelc` (the contract name, e.g. TextEncoder.mlmodelc).

    The compiler writes into a fresh temporary folder beside `out_modelc`; a previous
    `out_modelc` is replaced only once the compile succeeded.
    """
    package, out_modelc = Path(package), Path(out_modelc)
    if package.suffix != ".mlpackage" or not package.is_dir():
        raise PipelineError(f"{package}: not an .mlpackage folder; build the packages target first")
    if out_modelc.suffix != ".mlmodelc":
        raise PipelineError(f"{out_modelc}: a compiled model's name ends in .mlmodelc; rename the output")
    out_modelc.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{out_modelc.name}.compile-", dir=out_modelc.parent))
    try:
        command = compiler_command(command_template, package.resolve(), work_dir.resolve(), deployment_target)
        _run_compiler(command, package)
        replace_path(_single_modelc(work_dir, package, command), out_modelc)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def verified_packages_manifest(packages_dir: Path) -> dict:
    """The packages folder's manifest, once the whole folder check (verify-folder's) found nothing.

    SHA256SUMS alone is not enough: regenerated over a stale stage it matches, and the app
    would run that stage.
    """
    from sd3coreml.release.folder_check import folder_problems

    if not packages_dir.is_dir():
        raise PipelineError(f"{packages_dir}: no such packages folder; build the packages target first")
    # Problems of whole entries (a stale stage) before those of single files inside them.
    problems = sorted(folder_problems(packages_dir), key=lambda problem: "/" in problem.split(" (")[0])
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise PipelineError(
            f"{packages_dir}: {shown} (python -m sd3coreml verify-folder lists all); rebuild or re-copy the packages folder"
        )
    return read_manifest(packages_dir)


def _hand_off_items(packages_dir: Path) -> tuple[list[Path], list[Path]]:
    """(packages to compile, other files to carry over) of a packages folder."""
    skipped = {checksums.SUMS_NAME, MANIFEST_NAME, checksums.SNAKEMAKE_MARKER}
    items = sorted(
        path for path in packages_dir.iterdir() if path.name not in skipped and not checksums.is_finder_file(path.name)
    )
    packages = [path for path in items if path.suffix == ".mlpackage"]
    if not packages:
        raise PipelineError(f"{packages_dir}: holds no .mlpackage; point compile-folder at a packages folder")
    return packages, [path for path in items if path.suffix != ".mlpackage"]


def compile_folder(
    packages_dir: Path,
    app_dir: Path,
    command_template: str = DEFAULT_COMPILER,
    deployment_target: str = DEFAULT_DEPLOYMENT_TARGET,
) -> None:
    """Turn a verified packages folder into the app folder: every `X.mlpackage` compiled to
    `X.mlmodelc`, the tokenizer files copied, and a manifest that carries the packages'
    manifest under `packages` plus the compiler settings."""
    packages_dir, app_dir = Path(packages_dir), Path(app_dir)
    if packages_dir.resolve() == app_dir.resolve():
        raise PipelineError(f"{app_dir}: the app folder must differ from the packages folder; name another folder")
    # The compiler first: hashing a full-size folder takes a while, and without Xcode it is in vain.
    if not compiler_available(command_template):
        raise PipelineError(f"{_unavailable_reason(command_template)}: run compile-folder on a Mac with Xcode")
    packages_manifest = verified_packages_manifest(packages_dir)
    packages, carried = _hand_off_items(packages_dir)
    # Name problems surface before minutes of compiling, not after.
    folder.validate_entry_names([path.name for path in carried] + [f"{path.stem}.mlmodelc" for path in packages])
    app_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{app_dir.name}.compile-", dir=app_dir.parent))
    try:
        entries = {path.name: path for path in carried}
        for package in packages:
            modelc = work_dir / f"{package.stem}.mlmodelc"
            compile_package(package, modelc, command_template, deployment_target)
            entries[modelc.name] = modelc
        manifest = {
            "packages": packages_manifest,
            "compiler": compiler_record(command_template, deployment_target),
            **{key: packages_manifest[key] for key in APP_RECORD_KEYS if key in packages_manifest},
        }
        folder.assemble_folder(entries, app_dir, manifest)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
