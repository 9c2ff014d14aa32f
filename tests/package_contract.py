"""Read a saved package's spec and compare it with a contract file kept in tests/contract."""

import json
from pathlib import Path

import yaml

CONTRACTS = Path(__file__).parent / "contract"
FLOAT32, FLOAT16 = 65568, 65552  # ArrayFeatureType.ArrayDataType values in Core ML's proto
MIL_INTEGER_TYPES = {21, 22, 23, 24}  # MIL proto DataType: INT8, INT16, INT32, INT64


def load_contract(name: str) -> dict:
    return yaml.safe_load((CONTRACTS / name).read_text())


def read_spec(package: Path):
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((package / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    return spec


def features(descriptions) -> dict:
    return {f.name: (list(f.type.multiArrayType.shape), f.type.multiArrayType.dataType) for f in descriptions}


def op_types(spec) -> set[str]:
    blocks = spec.mlProgram.functions["main"].block_specializations.values()
    return {operation.type for block in blocks for operation in block.operations}


def folder_names(contract: dict) -> set[str]:
    return {f"{name}.mlpackage" for name in contract["packages"]} | set(contract["folder_files"])


def assert_package_meets(package: Path, expected: dict, spec_version: int) -> None:
    spec = read_spec(package)
    assert spec.specificationVersion == spec_version
    assert spec.WhichOneof("Type") == "mlProgram"
    assert features(spec.description.input) == {key: (shape, FLOAT32) for key, shape in expected["inputs"].items()}
    assert features(spec.description.output) == {key: (shape, FLOAT16) for key, shape in expected["outputs"].items()}
    if "compression" in expected:
        assert expected["compression"] in op_types(spec)
    else:
        assert not {op for op in op_types(spec) if op.startswith("constexpr_")}


def interfaces(contract: dict) -> dict[str, tuple[dict, dict]]:
    """The contract's packages as client.interface_problems reads a folder's."""
    return {name: (package["inputs"], package["outputs"]) for name, package in contract["packages"].items()}


def assert_client_requirements_met(folder: Path, contract: dict) -> None:
    """What the app (contract['client']) requires of the folder, beyond names and shapes."""
    client = contract["client"]
    for name in client["one_input"]:
        assert len(read_spec(folder / f"{name}.mlpackage").description.input) == 1, name
    for name in client["one_output"]:
        assert len(read_spec(folder / f"{name}.mlpackage").description.output) == 1, name
    for pattern in client["forbidden"]:
        assert not list(folder.glob(pattern)), pattern
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["client"] == {key: client[key] for key in ("repo", "commit", "branch")}
    assert manifest["app_loadable"] is client["app_loadable"]
