"""The full-scale builds meet docs/APP_CONTRACT.md exactly, and every package its fidelity bar.

`make bench` builds SD3 Medium's folder, `make bench-sd3.5` SD3.5 Medium's; each is checked
under its own marker (`slow`, `slow_sd35`), since each reads what only its target builds
(see README). SD3.5 Medium keeps SD3 Medium's widths at every interface (joint 4096, pooled
2048, hidden 1536, 77 + 77 tokens), so the app loads its folder as it is: one contract file
holds for both.
"""

import json

import pytest
from harness import REPO
from package_contract import assert_client_requirements_met, assert_package_meets, folder_names, load_contract

CONTRACT = load_contract("sd3_medium_packages.yaml")
BENCH = REPO / "results" / "bench"
FOLDERS = [
    pytest.param(("coremlsd3_4step_packages", "make bench"), marks=pytest.mark.slow, id="sd3-medium"),
    pytest.param(
        ("coremlsd3_sd35_medium_packages", "make bench-sd3.5"), marks=pytest.mark.slow_sd35, id="sd3.5-medium"
    ),
]


@pytest.fixture(params=FOLDERS)
def folder(request):
    name, target = request.param
    assert (BENCH / name).is_dir(), f"run `{target}` first"
    return BENCH / name


def test_full_scale_folder_holds_exactly_the_contract_files(folder):
    assert {path.name for path in folder.iterdir()} == folder_names(CONTRACT)


@pytest.mark.parametrize("name", sorted(CONTRACT["packages"]))
def test_full_scale_package_meets_contract(folder, name):
    assert_package_meets(folder / f"{name}.mlpackage", CONTRACT["packages"][name], CONTRACT["spec_version"])


def test_full_scale_folder_meets_the_clients_requirements(folder):
    assert_client_requirements_met(folder, CONTRACT)


def test_every_full_scale_package_passes_its_fidelity_bar(folder):
    report = json.loads((BENCH / "reports" / folder.name / "fidelity.json").read_text())
    assert report["passed"] and all(float(row["psnr_db"]) >= row["min_psnr_db"] for row in report["outputs"])
