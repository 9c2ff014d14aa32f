"""What a folder's `manifest.json` holds, from the request the workflow makes to the file on disk.

At parse time the workflow writes an assemble spec per folder (`folder_spec`): the entries to
copy and the manifest's request, which records what shaped each entry (its compression
setting, block range, conversion target), the client, the toolchain record and the input files
by path. `assemble-folder` completes the request (`complete_manifest`: input paths replaced by
their hashes, the toolchain record by the exact versions it holds, whether the app can load the
packages, the compiler's versions), and the folder
gets it with its `build_id` and `files` (`build_manifest`). Everything here is deterministic:
no host path and no time reaches a manifest. Torch-free: the workflow imports it at parse time.
"""

import hashlib
import json
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.compress.settings import A8_COVERS, A8_NEEDS, FolderCompression
from sd3coreml.contract import CLIENT, CONDITIONING, STAGE, TEXT_ENCODERS, TOKENIZER_FILES, VAE_DECODER
from sd3coreml.errors import PipelineError
from sd3coreml.stages import JOINT
from sd3coreml.step_spec import read_spec, write_spec

MANIFEST_NAME = "manifest.json"
MANIFEST_KEYS_WE_WRITE = ("files", "build_id")


class ManifestError(PipelineError):
    """A built folder's manifest.json that cannot be read; `why` says how in a word or two."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}; copy or rebuild the whole folder")
        self.why = why


def activations_record(setting) -> dict:
    """What an entry's 8-bit activations cover and what they need to run faster (compress/activations.py)."""
    return {"dtype": setting.activations, "covers": A8_COVERS, "gains_speed_on": A8_NEEDS}


def entry_settings(ranges, config: dict, compression: FolderCompression) -> dict[str, dict]:
    """Contract name (without suffix) -> the config values that shaped that folder entry."""
    target, latent = config["conversion_target"], config["latent_size"]

    def compressed(entry: str, family: str, source: str) -> dict:
        setting = compression.for_entry(entry, family)
        # Said only where activations are quantized, so other folders' manifests keep their bytes.
        activations = {"activations": activations_record(setting)} if setting.activations else {}
        return {"conversion_target": target, "compression": setting.to_config(), "source": source, **activations}

    settings = {name: compressed(name, "text_encoders", f"components/{folder}") for name, folder in TEXT_ENCODERS.items()}
    settings[VAE_DECODER] = {"conversion_target": target, "source": "components/vae", "latent_size": latent}
    settings[CONDITIONING] = compressed(CONDITIONING, "mmdit", "transformer_weights")
    stage0 = STAGE.format(index=0)
    settings[stage0] = {**compressed(stage0, "mmdit", "transformer_weights"), "latent_size": latent}
    for index, block_range in enumerate(ranges, 1):
        entry = STAGE.format(index=index)
        blocks = {"blocks": [block_range.start, block_range.end], "head": block_range.has_head}
        if block_range.attention != JOINT:
            # Recorded only where not the default, so a joint folder's manifest keeps its bytes.
            blocks["attention"] = block_range.attention
        settings[entry] = {**compressed(entry, "mmdit", "transformer_weights"), "latent_size": latent, **blocks}
    settings.update({name: {"source": "components/tokenizer"} for name in TOKENIZER_FILES})
    return settings


def manifest_request(
    model, config: dict, compression: FolderCompression, toolchain_record: str, kind: str, recipes: dict | None = None
) -> dict:
    """What shaped a folder of `kind` (packages or app): no host paths, no times.

    `model` is the model's plan (config.ModelPlan): its key, block ranges and input files;
    `compression` the config's compression as parsed once at parse time (a recipe is a file
    read). An app folder also records its compiler settings (assemble-folder adds the versions).
    `toolchain_record` is the file of the toolchain that built the packages
    (`toolchain.record_path`): the folder records its exact versions, whichever host assembles it.
    `recipes` ({slug: file}) are the recipes jobs made from budgets for its packages: each is an
    input the folder records by hash, as `recipe <slug>` (none: nothing added, so the manifests
    of other settings keep their bytes).
    """
    compiler = config["compiler"]
    compiled = {"compiler": {key: compiler[key] for key in ("command", "deployment_target")}} if kind == "app" else {}
    return {
        **compiled,
        "kind": kind,
        "client": CLIENT,
        "model": model.key,
        "config": {
            "stage_sizes": [r.end - r.start for r in model.ranges],
            "stage_block_ranges": [[r.start, r.end] for r in model.ranges],
            "latent_size": config["latent_size"],
            "batch_size": config["batch_size"],
            "conversion_target": config["conversion_target"],
            "compression": compression.to_config(),
        },
        "artifacts": entry_settings(model.ranges, config, compression),
        "toolchain_record": toolchain_record,
        "input_files": {
            "transformer_weights": str(model.weights),
            "transformer_config": str(model.config_path),
            "components": config["components"],
            **{f"recipe {slug}": path for slug, path in (recipes or {}).items()},
        },
    }


def folder_spec(entries: dict, manifest: dict, packages: dict | None = None) -> str:
    """The JSON `assemble-folder` reads: entries, manifest request and (app folders) the packages compiled."""
    return write_spec({"entries": entries, "manifest": manifest, **({"packages": packages} if packages else {})})


def load_spec(spec_path: Path) -> tuple[dict[str, Path], dict, dict[str, Path]]:
    """Read an assemble spec `{"entries": {name: path}, "manifest": {...}, "packages": {name: path}}`.

    `packages` names the `.mlpackage` each compiled entry was made from (app folders), so
    the folder's interfaces can be read; a packages folder's entries are their own.
    """
    spec = read_spec(spec_path, "assemble")
    entries, manifest = spec.get("entries"), spec.get("manifest", {})
    if not isinstance(entries, dict) or not all(isinstance(path, str) for path in entries.values()):
        raise PipelineError(f"{spec_path}: key 'entries' must map folder names to source paths")
    if not isinstance(manifest, dict):
        raise PipelineError(f"{spec_path}: key 'manifest' must be a JSON object")
    packages = spec.get("packages") or {name: path for name, path in entries.items() if name.endswith(".mlpackage")}
    as_paths = {name: Path(path) for name, path in entries.items()}
    return as_paths, manifest, {name: Path(path) for name, path in packages.items()}


def complete_manifest(request: dict, packages: dict[str, Path]) -> dict:
    """The request with its inputs hashed, the app's verdict on the packages and the compiler's versions."""
    from sd3coreml.release.compiler_command import compiler_record

    manifest = {**hash_inputs(recorded_toolchain(request)), **app_record(packages)}
    if "compiler" in manifest:
        compiler = manifest["compiler"]
        manifest["compiler"] = compiler_record(compiler["command"], compiler["deployment_target"])
    return manifest


def recorded_toolchain(request: dict) -> dict:
    """The request with its `toolchain_record` (a path) replaced by the versions the record holds."""
    if "toolchain_record" not in request:
        return request
    request = dict(request)
    path = Path(request.pop("toolchain_record"))
    try:
        return {**request, "toolchain": json.loads(path.read_text(encoding="utf-8"))}
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: the toolchain record cannot be read ({error}); rerun the workflow") from None


def hash_inputs(manifest: dict) -> dict:
    """Replace `input_files` {label: path} by their sha256 under `inputs`, so no host path reaches a folder."""
    files = manifest.pop("input_files", {})
    hashes = {label: checksums.tree_sha256(Path(path)) for label, path in files.items()}
    return {**manifest, "inputs": {**manifest.get("inputs", {}), **hashes}}


def app_record(packages: dict[str, Path]) -> dict:
    """Whether the client app can load the folder made of these packages (client.py), from their interfaces."""
    from google.protobuf.message import DecodeError

    from sd3coreml.convert.package import package_interface
    from sd3coreml.release.client import loadable_record

    interfaces, unreadable = {}, []
    for name, path in sorted(packages.items()):
        try:
            interfaces[Path(name).stem] = package_interface(path)
        except (OSError, DecodeError):
            unreadable.append(f"{Path(name).stem} is no readable Core ML package")
    record = loadable_record(interfaces)
    if unreadable:
        record = {"app_loadable": False, "app_problems": unreadable + record.get("app_problems", [])}
    return record


def build_manifest(manifest: dict, folder: Path) -> dict:
    """The given manifest plus its `build_id` and a `files` section of `folder`.

    The build id is the sha256 of the canonical JSON of what was asked for (config, input
    hashes, toolchain), not of the files: two builds of the same request share an id, and
    `verify-folder` can then tell files of this build from files of another.
    """
    clashes = [key for key in MANIFEST_KEYS_WE_WRITE if key in manifest]
    if clashes:
        raise PipelineError(f"manifest keys {clashes}: written by assemble_folder; drop them from the manifest")
    files = {
        relative_path: {"sha256": checksums.file_sha256(path), "size": path.stat().st_size}
        for relative_path, path in checksums.folder_files(folder)
        if relative_path != MANIFEST_NAME
    }
    return {**manifest, "build_id": build_id(manifest), "files": files}


def build_id(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON, leaving out what assemble_folder writes."""
    request = {key: value for key, value in manifest.items() if key not in MANIFEST_KEYS_WE_WRITE}
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


def canonical_json(value) -> str:
    """JSON with sorted keys and no whitespace: the form the build id is taken over."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise PipelineError(f"manifest: {error}; pass only strings, numbers, lists and dicts") from None


def read_manifest(folder: Path) -> dict:
    """A built folder's `manifest.json`; a ManifestError (one line naming the file) where it is
    missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(path, "missing") from None
    except ValueError as error:
        raise ManifestError(path, f"not JSON ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ManifestError(path, "no 'files' section")
    return manifest


def write_manifest(manifest: dict, folder: Path) -> Path:
    """Write `folder/manifest.json` deterministically (sorted keys, indent 2, final newline)."""
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n")
    return path
