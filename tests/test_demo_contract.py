"""Every package of the demo build meets the contract kept in tests/contract (not derived from the code)."""

from pathlib import Path

import pytest
import yaml

CONTRACT = yaml.safe_load((Path(__file__).parent / "contract" / "demo_packages.yaml").read_text())
FOLDERS = ["coremlsd3_4step_packages", "coremlsd3_2step_packages"]
FLOAT32, FLOAT16 = 65568, 65552  # ArrayFeatureType.ArrayDataType values in Core ML's proto
MIL_INTEGER_TYPES = {21, 22, 23, 24}  # MIL proto DataType: INT8, INT16, INT32, INT64


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


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_holds_exactly_the_contract_files(demo_workdir, folder):
    root = demo_workdir / "results" / "demo" / folder
    expected = {f"{name}.mlpackage" for name in CONTRACT["packages"]} | set(CONTRACT["folder_files"])
    assert {path.name for path in root.iterdir()} == expected
    assert not list(root.rglob(".snakemake_timestamp"))


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("name", sorted(CONTRACT["packages"]))
def test_package_meets_contract(demo_workdir, folder, name):
    expected = CONTRACT["packages"][name]
    spec = read_spec(demo_workdir / "results" / "demo" / folder / f"{name}.mlpackage")
    assert spec.specificationVersion == CONTRACT["spec_version"]
    assert spec.WhichOneof("Type") == "mlProgram"
    assert features(spec.description.input) == {key: (shape, FLOAT32) for key, shape in expected["inputs"].items()}
    assert features(spec.description.output) == {key: (shape, FLOAT16) for key, shape in expected["outputs"].items()}
    if "compression" in expected:
        assert expected["compression"] in op_types(spec)
    else:
        assert not {op for op in op_types(spec) if op.startswith("constexpr_")}


def test_token_ids_are_cast_to_integers_before_any_fp16_op(demo_workdir):
    spec = read_spec(demo_workdir / "results" / "demo" / FOLDERS[0] / "TextEncoder.mlpackage")
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    first_use = next(
        op for op in block.operations if "input_ids" in {a.name for arg in op.inputs.values() for a in arg.arguments}
    )
    assert first_use.type == "cast"
    assert first_use.outputs[0].type.tensorType.dataType in MIL_INTEGER_TYPES
