"""Save `.mlpackage`s deterministically and move them into place atomically.

coremltools writes random UUIDs into `Manifest.json`, serializes the spec's metadata map in
varying order and stamps the conversion date; the weight blob itself is deterministic. We
derive the ids from item paths, serialize the spec deterministically and take the date
from SOURCE_DATE_EPOCH (or drop it), so the same inputs give the same bytes.
"""

import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from sd3coreml.atomic import fresh_temporary, remove_path, replace_path

SPEC_PATH = Path("Data/com.apple.CoreML/model.mlmodel")
DATE_KEY = "com.github.apple.coremltools.conversion_date"
# What a package holds, in its metadata: verify-folder reads it to find stages out of place.
ARTIFACT_KEY = "sd3coreml.artifact"
PACKAGE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/sd3-coreml")


def stable_manifest(package: Path) -> None:
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {
        old_id: str(uuid.uuid5(PACKAGE_NAMESPACE, entry["path"])).upper()
        for old_id, entry in manifest["itemInfoEntries"].items()
    }
    manifest["itemInfoEntries"] = {renamed[key]: entry for key, entry in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def block_range_label(start: int, end: int) -> str:
    """The ARTIFACT_KEY value of a package holding joint blocks [start, end)."""
    return f"MMDiT blocks {start}-{end}"


def read_spec(package: Path):
    """A saved package's Model spec (coremltools' protobuf class; no Core ML runtime needed)."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((Path(package) / SPEC_PATH).read_bytes())
    return spec


def package_interface(package: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """({input: shape}, {output: shape}) of a saved package, in its declared order."""
    description = read_spec(package).description

    def shapes(features) -> dict[str, list[int]]:
        return {feature.name: list(feature.type.multiArrayType.shape) for feature in features}

    return shapes(description.input), shapes(description.output)


def stable_spec(package: Path, metadata: dict[str, str]) -> None:
    spec_path = package / SPEC_PATH
    spec = read_spec(package)
    user_defined = spec.description.metadata.userDefined
    user_defined.pop(DATE_KEY, None)
    if "SOURCE_DATE_EPOCH" in os.environ:
        stamp = datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), tz=timezone.utc)
        user_defined[DATE_KEY] = stamp.strftime("%Y-%m-%d")
    user_defined.update(metadata)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def save_package(mlmodel, destination: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a converted model to `destination` (.mlpackage) byte-reproducibly and atomically."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = fresh_temporary(destination)
    try:
        save_model(mlmodel, temporary)
        stable_manifest(temporary)
        stable_spec(temporary, metadata or {})
        replace_path(temporary, destination)
    finally:
        remove_path(temporary)


def save_model(mlmodel, path: Path) -> None:
    """coremltools' save, with a failed copy of the package's files raised as the OSError it was."""
    try:
        mlmodel.save(str(path))
    except shutil.Error as error:
        # coremltools copies its package with shutil.copytree, which gathers each file's OSError
        # as (source, destination, text): a full disk would reach the user as a traceback.
        _source, written, reason = error.args[0][0]
        code = re.match(r"\[Errno (\d+)\]", reason)
        if not code:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), written) from error


def load_package(path: Path):
    """Open a saved package for reading or compression (no Core ML runtime needed)."""
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True)


def load_program(model):
    """A loaded MLModel's MIL program, as coremltools' compression passes load it (compressing and
    calibrating transform or read this program, then save the model)."""
    from coremltools.converters.mil.frontend.milproto.load import load
    from coremltools.models.utils import _SPECIFICATION_VERSION_IOS_16

    spec = model.get_spec()
    version = max(spec.specificationVersion, _SPECIFICATION_VERSION_IOS_16)
    return load(spec, specification_version=version, file_weights_dir=model.weights_dir)
