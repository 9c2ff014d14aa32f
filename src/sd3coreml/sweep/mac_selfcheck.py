"""`mac-selfcheck`: what a first Mac can do with this pipeline, in one JSON and one summary.

The macOS version, `xcode-select -p`, `xcodebuild -version`, `coremlcompiler version` (its
stdout and stderr apart), whether the compiler takes `--platform iOS` and `--platform ios`
on one package (Xcode's own build passes lowercase; the tool's flags are not documented),
the compiled tree, and Core ML's compute plan and a timed prediction of that package, in a
child process. Off macOS it refuses in one line. The gathering runs only on a Mac; its
parsing and the spelling probe are plain functions, tested on recorded outputs and fakes.
"""

import platform
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

from sd3coreml.errors import PipelineError

SPELLINGS = ("iOS", "ios")
TOOL_TIMEOUT_S = 120
DEFAULT_COMPILER = (
    "xcrun coremlcompiler compile {package} {output_dir} --platform iOS --deployment-target {deployment_target}"
)


def answer(command: list[str]) -> dict:
    """A tool's exit code, stdout and stderr, apart; `missing` where it cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"command": shlex.join(command), "missing": str(error)}
    return {"command": shlex.join(command), "exit": result.returncode, "stdout": result.stdout.strip(),
            "stderr": result.stderr.strip()}  # fmt: skip


def xcode_version(xcodebuild_stdout: str) -> dict:
    """`Xcode 16.2\\nBuild version 16C5032a` -> {"xcode": "16.2", "build": "16C5032a"}."""
    version = re.search(r"^Xcode\s+(\S+)", xcodebuild_stdout, re.MULTILINE)
    build = re.search(r"^Build version\s+(\S+)", xcodebuild_stdout, re.MULTILINE)
    return {"xcode": version and version.group(1), "build": build and build.group(1)}


def compiled_tree(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in Path(folder).rglob("*") if path.is_file())


def with_spelling(template: str, spelling: str) -> str:
    """The compiler template with `--platform <spelling>`."""
    if not re.search(r"--platform\s+\S+", template):
        raise PipelineError(f"compiler template {template!r} has no --platform; use the default template")
    return re.sub(r"--platform\s+\S+", f"--platform {spelling}", template)


def spelling_probe(package: Path, template: str, deployment_target: str = "18.2") -> dict:
    """Compile `package` once per platform spelling: exit code, stderr, and the tree it made."""
    from sd3coreml.release.compile import compiler_command

    probes = {}
    for spelling in SPELLINGS:
        with tempfile.TemporaryDirectory(prefix="selfcheck-") as out_dir:
            command = compiler_command(
                with_spelling(template, spelling), Path(package), Path(out_dir), deployment_target
            )
            probes[spelling] = {**answer(command), "tree": compiled_tree(Path(out_dir))}
    return probes


def summary(record: dict) -> str:
    """The readable summary of a self-check record."""
    spellings = record["platform_spellings"]
    taken = [spelling for spelling, probe in spellings.items() if probe.get("exit") == 0] or ["none"]
    plan = record.get("coreml", {})
    lines = [
        "# mac-selfcheck",
        "",
        f"- macOS {record['macos']} ({record['machine']})",
        f"- xcode-select -p: {record['xcode_select'].get('stdout') or record['xcode_select']}",
        f"- Xcode {record['xcode']['xcode']} (build {record['xcode']['build']})",
        f"- coremlcompiler version: {record['coremlcompiler_version'].get('stdout') or '(no stdout)'}; "
        f"stderr: {record['coremlcompiler_version'].get('stderr') or '(none)'}",
        f"- --platform spellings the compiler takes: {', '.join(taken)}",
        f"- compiled tree: {len(spellings.get('iOS', {}).get('tree', []))} files",
        f"- Core ML: {plan.get('summary', plan)}",
    ]
    return "\n".join(lines) + "\n"


def coreml_probe(package: str) -> dict:
    """In the child: the compute plan's placement and a timed prediction (device_profile's measurements)."""
    from sd3coreml.sweep.device_profile import profile_package

    profile = profile_package(package, runs=3)
    share = profile["placement"]["pct"]["neural_engine"]
    return {**profile, "summary": f"{share:.0f}% on the Neural Engine, predict {profile['predict_s']:.3f} s"}


def gather(package: Path, template: str) -> dict:
    """Every fact of the self-check (macOS only)."""
    from sd3coreml.verify.isolated import describe, run_isolated

    version = answer(["xcodebuild", "-version"])
    result = run_isolated("sd3coreml.sweep.mac_selfcheck:coreml_probe", {"package": str(package)}, 1800)
    return {
        "macos": platform.mac_ver()[0],
        "machine": platform.machine(),
        "xcode_select": answer(["xcode-select", "-p"]),
        "xcodebuild": version,
        "xcode": xcode_version(version.get("stdout", "")),
        "coremlcompiler_version": answer(["xcrun", "coremlcompiler", "version"]),
        "platform_spellings": spelling_probe(package, template),
        "coreml": result.value if result.ok else {"summary": f"failed: {describe(result.failure)}", **result.failure},
    }
