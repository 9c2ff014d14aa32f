"""The Mac hand-off: packages folders built elsewhere, compiled into the app's folders.

Selected by config (`config/handoff.yaml`, key `handoff`): the packages folders are source
files of the workflow, not outputs of its rules, so no models, checkpoints or toolchain of
the converting machine are needed, and nothing but compile and folder jobs is planned. At
parse time only each folder's `manifest.json` is read; before the first job the compiler is
checked, then each folder with the whole check `verify-folder` runs (it hashes GBs at full size).
"""

from dataclasses import dataclass
from pathlib import Path

from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.artifacts import folder_name, handoff_compiled
from sd3coreml.release.manifest import folder_spec, read_manifest

MODEL_KEY_HINT = f"write e.g. '4step: results/{folder_name('4step', 'packages')}'"


@dataclass(frozen=True)
class HandoffFolder:
    key: str
    packages_dir: Path
    manifest: dict
    packages: tuple[str, ...]  # contract names of the .mlpackage entries, e.g. TextEncoder
    carried: tuple[str, ...]  # the other files the app folder takes as they are (tokenizer files)


def plan_handoff(handoff: dict) -> dict[str, HandoffFolder]:
    """Each configured packages folder, from its manifest; one line naming the key when one is unusable."""
    folders = handoff.get("folders") or {}
    if not folders:
        raise PipelineError(f"config key 'handoff.folders' names no packages folder; {MODEL_KEY_HINT}")
    return {key: handoff_folder(key, Path(path)) for key, path in folders.items()}


def handoff_folder(key: str, packages_dir: Path) -> HandoffFolder:
    where = f"config key 'handoff.folders.{key}' ({packages_dir})"
    try:
        manifest = read_manifest(packages_dir)
    except PipelineError as error:
        raise PipelineError(f"{where}: {error}") from None
    if manifest.get("kind") != "packages":
        raise PipelineError(f"{where}: its manifest is not a packages folder's; name a {folder_name('*', 'packages')} folder")
    entries = sorted({name.split("/", 1)[0] for name in manifest["files"]})
    packages = tuple(name.removesuffix(".mlpackage") for name in entries if name.endswith(".mlpackage"))
    carried = tuple(name for name in entries if not name.endswith(".mlpackage") and "/" not in name)
    return HandoffFolder(key, packages_dir, manifest, packages, carried)


def check_handoff_folders(folders: dict[str, HandoffFolder]) -> None:
    """The whole folder check of each packages folder: the app would run a stale stage."""
    from sd3coreml.release.folder_check import folder_problems

    for entry in folders.values():
        problems = sorted(folder_problems(entry.packages_dir), key=lambda problem: "/" in problem.split(" (")[0])
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise PipelineError(
                f"{entry.packages_dir}: {shown} (python -m sd3coreml verify-folder lists all); copy the packages "
                "folder again as built"
            )


def app_manifest(entry: HandoffFolder, compiler: dict) -> dict:
    """What the app folder's manifest.json records: the packages folder's manifest and the compiler."""
    return {"kind": "app", "packages": entry.manifest, "compiler": compiler, "client": entry.manifest.get("client")}


def app_folder_entries(entry: HandoffFolder, root: str, deployment_target: str) -> dict[str, str]:
    """The app folder's inputs: each package compiled under output_root, the other files as carried."""
    compiled = {
        f"{name}.mlmodelc": handoff_compiled(root, entry.key, deployment_target, name) for name in entry.packages
    }
    return {**compiled, **{name: str(entry.packages_dir / name) for name in entry.carried}}


def app_folder_spec(entry: HandoffFolder, root: str, compiler: dict) -> str:
    """What `assemble-folder` reads for one hand-off's app folder."""
    entries = app_folder_entries(entry, root, compiler["deployment_target"])
    packages = {f"{name}.mlmodelc": str(entry.packages_dir / f"{name}.mlpackage") for name in entry.packages}
    recorded = {key: compiler[key] for key in ("command", "deployment_target")}
    return folder_spec(entries, app_manifest(entry, recorded), packages)
