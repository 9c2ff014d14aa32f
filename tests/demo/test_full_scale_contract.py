"""The `make bench` build (SD3 Medium's real dimensions) meets DESIGN section 1 exactly.

Marked slow: it reads `results/bench/`, which only `make bench` builds (see README).
"""

import pytest
from harness import REPO
from package_contract import assert_client_requirements_met, assert_package_meets, folder_names, load_contract

CONTRACT = load_contract("sd3_medium_packages.yaml")
FOLDER = REPO / "results" / "bench" / "coremlsd3_4step_packages"

pytestmark = pytest.mark.slow


def test_full_scale_folder_holds_exactly_the_contract_files():
    assert FOLDER.is_dir(), "run `make bench` first"
    assert {path.name for path in FOLDER.iterdir()} == folder_names(CONTRACT)


@pytest.mark.parametrize("name", sorted(CONTRACT["packages"]))
def test_full_scale_package_meets_contract(name):
    assert_package_meets(FOLDER / f"{name}.mlpackage", CONTRACT["packages"][name], CONTRACT["spec_version"])


def test_full_scale_folder_meets_the_clients_requirements():
    assert_client_requirements_met(FOLDER, CONTRACT)
