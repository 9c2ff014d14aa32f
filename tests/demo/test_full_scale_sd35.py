"""The `make bench-sd3.5` build (SD3.5 Medium's real transformer) meets SD3 Medium's contract and its bars.

SD3.5 Medium keeps SD3 Medium's widths at every interface (joint 4096, pooled 2048, hidden
1536, 77 + 77 tokens), so the app loads its folder as it is: the same contract file holds.
Marked slow_sd35: it reads `results/bench/`, which only `make bench-sd3.5` builds.
"""

import json

import pytest
from harness import REPO
from package_contract import assert_client_requirements_met, assert_package_meets, folder_names, load_contract

CONTRACT = load_contract("sd3_medium_packages.yaml")
FOLDER = REPO / "results" / "bench" / "coremlsd3_sd35_medium_packages"
REPORTS = REPO / "results" / "bench" / "reports" / FOLDER.name

pytestmark = pytest.mark.slow_sd35


def test_sd35_folder_holds_exactly_the_contract_files():
    assert FOLDER.is_dir(), "run `make bench-sd3.5` first"
    assert {path.name for path in FOLDER.iterdir()} == folder_names(CONTRACT)


@pytest.mark.parametrize("name", sorted(CONTRACT["packages"]))
def test_sd35_package_meets_contract(name):
    assert_package_meets(FOLDER / f"{name}.mlpackage", CONTRACT["packages"][name], CONTRACT["spec_version"])


def test_sd35_folder_meets_the_clients_requirements():
    assert_client_requirements_met(FOLDER, CONTRACT)


def test_every_sd35_package_passes_its_fidelity_bar():
    report = json.loads((REPORTS / "fidelity.json").read_text())
    assert report["passed"] and all(float(row["psnr_db"]) >= row["min_psnr_db"] for row in report["outputs"])
