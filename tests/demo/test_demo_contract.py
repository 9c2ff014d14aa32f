"""Every package of the demo build meets the contract kept in tests/contract (not derived from the code)."""

import pytest
from package_contract import (
    MIL_INTEGER_TYPES,
    assert_client_requirements_met,
    assert_package_meets,
    folder_names,
    load_contract,
    read_spec,
)

CONTRACT = load_contract("demo_packages.yaml")
# The tiny SD3.5 has the tiny SD3's widths, so its folder meets the same contract.
FOLDERS = ["coremlsd3_4step_packages", "coremlsd3_2step_packages", "coremlsd3_sd35_packages"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_holds_exactly_the_contract_files(demo_build, folder):
    root = demo_build / "results" / "demo" / folder
    assert {path.name for path in root.iterdir()} == folder_names(CONTRACT)
    assert not list(root.rglob(".snakemake_timestamp"))


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("name", sorted(CONTRACT["packages"]))
def test_package_meets_contract(demo_build, folder, name):
    package = demo_build / "results" / "demo" / folder / f"{name}.mlpackage"
    assert_package_meets(package, CONTRACT["packages"][name], CONTRACT["spec_version"])


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_meets_the_clients_requirements(demo_build, folder):
    assert_client_requirements_met(demo_build / "results" / "demo" / folder, CONTRACT)


def test_token_ids_are_cast_to_integers_before_any_fp16_op(demo_build):
    spec = read_spec(demo_build / "results" / "demo" / FOLDERS[0] / "TextEncoder.mlpackage")
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    consumers = [
        op for op in block.operations if any(a.name == "input_ids" for v in op.inputs.values() for a in v.arguments)
    ]
    assert consumers[0].type == "cast"
    assert consumers[0].outputs[0].type.tensorType.dataType in MIL_INTEGER_TYPES
