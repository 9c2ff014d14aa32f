"""The tiny SD3.5 of the session build: verified against diffusers and run end to end under the app's sampler."""

import json

from harness import SD35_FOLDER


def report(workdir, name):
    return json.loads((workdir / "results" / "demo" / "reports" / SD35_FOLDER / name).read_text())


def test_every_sd35_package_passes_its_bar_beside_its_fp16_original(demo_build):
    fidelity = report(demo_build, "fidelity.json")
    rows = fidelity["outputs"]
    assert fidelity["passed"] and all(float(row["psnr_db"]) >= row["min_psnr_db"] for row in rows)
    # Stage1's block has the second attention, Stage2 has one block with it and one without.
    for stage in ("Stage1", "Stage2", "Stage3"):
        entries = {row["precision"] for row in rows if row["entry"] == f"MultiModalDiffusionTransformer{stage}"}
        assert entries == {"fp16", "int8"}


def test_end_to_end_runs_the_apps_sampler_on_sd35(demo_build):
    end_to_end = report(demo_build, "end_to_end.json")
    assert end_to_end["passed"] and end_to_end["steps"] == 4
    assert float(end_to_end["final_latent_psnr_db"]) >= end_to_end["min_psnr_db"]
