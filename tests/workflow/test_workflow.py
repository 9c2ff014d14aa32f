"""Snakemake planning on a built demo: a change replans exactly what depends on it."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from harness import (
    DEMO_TARGETS,
    copy_of_build,
    new_workdir,
    planned_jobs,
    sha256_check_command,
    snakemake,
    write_config,
)

from sd3coreml import checksums
from sd3coreml.release import folder_check
from sd3coreml.release.compile import DEFAULT_COMPILER, compiler_available

ROOT = "results/demo"
FOLDER = "coremlsd3_4step_packages"
FOLDER_JOBS = {"packages_folder": 1, "coremlsd3_4step_packages": 1}
REPORT_JOBS = {"fidelity_report": 1, **FOLDER_JOBS}


def dry_run(workdir, config, *targets):
    return planned_jobs(snakemake(workdir, "-n", *(targets or ["coremlsd3_4step_packages"]), config=config))


def test_unchanged_config_plans_nothing(demo_workdir):
    assert dry_run(demo_workdir, "config/demo.yaml", *DEMO_TARGETS) == {}


def test_resizing_last_two_stages_plans_only_their_block_ranges(demo_workdir):
    config = write_config(demo_workdir, "resized.yaml", stage_sizes=[1, 3, 1])
    result = snakemake(demo_workdir, "-n", "coremlsd3_4step_packages", config=config)
    assert planned_jobs(result) == {
        "mmdit_block_range": 2,
        "compress_package": 2,
        "verify_mmdit_block_range": 2,
        **REPORT_JOBS,
    }
    assert "blocks1-4.fp16" in result.stdout and "blocks4-5_head.fp16" in result.stdout


def test_changing_compression_plans_only_compression_and_folders(demo_workdir):
    compression = {"mmdit": {"mode": "palettize", "nbits": 8}, "text_encoders": {"mode": "palettize", "nbits": 6}}
    config = write_config(demo_workdir, "palettized.yaml", compression=compression)
    assert dry_run(demo_workdir, config) == {
        "palettize_per_tensor": 5,
        "verify_mmdit_conditioning": 1,
        "verify_mmdit_input_stage": 1,
        "verify_mmdit_block_range": 3,
        **REPORT_JOBS,
    }


def test_a_per_stage_override_recompresses_only_that_stage(demo_workdir):
    int4_blocks = {"mode": "linear_symmetric", "nbits": 4, "granularity": "per_block", "block_size": 32}
    overrides = {"MultiModalDiffusionTransformerStage2": int4_blocks}
    demo = yaml.safe_load((demo_workdir / "config" / "demo.yaml").read_text())
    config = write_config(demo_workdir, "stage2_int4.yaml", compression={**demo["compression"], "overrides": overrides})
    result = snakemake(demo_workdir, "-n", "coremlsd3_4step_packages", config=config)
    assert planned_jobs(result) == {"compress_package": 1, "verify_mmdit_block_range": 1, **REPORT_JOBS}
    assert "blocks1-3.int4_linear_symmetric_per_block32.mlpackage" in result.stdout


def test_changing_a_fidelity_bar_rejudges_without_remeasuring(demo_workdir):
    config = write_config(demo_workdir, "stricter.yaml", fidelity={"min_psnr_db": {"fp16": 61}})
    assert dry_run(demo_workdir, config) == REPORT_JOBS


def test_changing_conversion_target_plans_every_conversion(demo_workdir):
    config = write_config(demo_workdir, "ios17.yaml", conversion_target="iOS17")
    without_sweep = yaml.safe_load((demo_workdir / config).read_text())
    del without_sweep["sweep"]  # the demo sweep's palettes and int4 blocks need iOS18
    (demo_workdir / config).write_text(yaml.safe_dump(without_sweep))
    assert dry_run(demo_workdir, config) == {
        "mmdit_conditioning": 1,
        "mmdit_input_stage": 1,
        "mmdit_block_range": 3,
        "text_encoder": 2,
        "vae_decoder": 1,
        "compress_package": 5,
        "palettize_per_tensor": 2,
        "verify_mmdit_conditioning": 1,
        "verify_mmdit_input_stage": 1,
        "verify_mmdit_block_range": 3,
        "verify_text_encoder": 2,
        "verify_vae_decoder": 1,
        **REPORT_JOBS,
    }


def test_changing_compiler_target_plans_only_compiles_and_app_folder(demo_app_workdir):
    config = yaml.safe_load((demo_app_workdir / "config" / "demo_fake_compiler.yaml").read_text())
    config["compiler"]["deployment_target"] = "18.4"
    (demo_app_workdir / "config" / "fake_compiler_18_4.yaml").write_text(yaml.safe_dump(config))
    jobs = dry_run(demo_app_workdir, "config/fake_compiler_18_4.yaml", "coremlsd3_4step")
    assert jobs == {"compile_package": 8, "app_folder": 1, "coremlsd3_4step": 1}


def test_app_folder_holds_compiled_contract_files(demo_app_workdir):
    folder = demo_app_workdir / "results" / "demo" / "coremlsd3_4step"
    names = {path.name for path in folder.iterdir()}
    stages = {f"MultiModalDiffusionTransformerStage{index}.mlmodelc" for index in range(4)}
    models = {"TextEncoder", "TextEncoder2", "VAEDecoder", "MultiModalDiffusionTransformerConditioning"}
    others = {"vocab.json", "merges.txt", "manifest.json", "SHA256SUMS"}
    assert names == stages | {f"{model}.mlmodelc" for model in models} | others
    assert '"deployment_target": "18.2"' in (folder / "TextEncoder.mlmodelc" / "metadata.json").read_text()
    assert not list(folder.rglob(".snakemake_timestamp"))


def test_folders_pass_sha256sum_check(demo_app_workdir):
    import subprocess

    for name in ["coremlsd3_4step_packages", "coremlsd3_2step_packages", "coremlsd3_4step"]:
        folder = demo_app_workdir / "results" / "demo" / name
        result = subprocess.run([*sha256_check_command(), "--strict", "SHA256SUMS"], cwd=folder, capture_output=True)
        assert result.returncode == 0, result.stdout
        listed = {line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"SHA256SUMS"}
        assert listed == on_disk


@pytest.mark.skipif(compiler_available(DEFAULT_COMPILER), reason="this host has Apple's compiler")
def test_app_folder_without_compiler_stops_before_any_job(tmp_path):
    workdir = new_workdir(tmp_path)
    result = snakemake(workdir, "-c1", "coremlsd3_4step", check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "coremlsd3_4step_packages" in errors[0] and "compile-folder" in errors[0]
    assert not (workdir / "results").exists()


def test_dry_run_of_app_folder_plans_everywhere(tmp_path):
    jobs = dry_run(new_workdir(tmp_path), "config/demo.yaml", "coremlsd3_4step")
    assert jobs["compile_package"] == 8 and jobs["app_folder"] == 1


def file_states(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under `root`: (mtime in ns, sha256)."""
    return {
        path.relative_to(root).as_posix(): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_a_layout_of_built_ranges_runs_only_the_report_and_the_folder(demo_workdir, tmp_path):
    """A real run on a copy of the build: the demo sweep built and checked [1, 4]'s ranges already."""
    workdir = copy_of_build(demo_workdir, tmp_path / "work")
    demo = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())
    demo["models"]["4step"]["stage_sizes"] = [1, 4]
    config = write_config(workdir, "layout_1_4.yaml", models=demo["models"])
    before = file_states(workdir / ROOT)

    result = snakemake(workdir, "-c2", FOLDER, config=config)
    assert planned_jobs(result) == REPORT_JOBS
    folder = workdir / ROOT / FOLDER
    stages = sorted(path.name for path in folder.glob("MultiModalDiffusionTransformerStage*"))
    assert stages == [f"MultiModalDiffusionTransformerStage{index}.mlpackage" for index in range(3)]
    assert json.loads((folder / "manifest.json").read_text())["config"]["stage_block_ranges"] == [[0, 1], [1, 5]]
    assert folder_check.folder_problems(folder) == []  # each real stage package holds the blocks of its place

    after = file_states(workdir / ROOT)
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    rewritten = {f"reports/{FOLDER}/{name}" for name in ("fidelity.json", "fidelity.md", "build_host.json")}
    rewritten |= {f"logs/fidelity/{FOLDER}.log", f"logs/folders/{FOLDER}.log", f"benchmarks/folders/{FOLDER}.tsv"}
    assert {path for path in changed if not path.startswith(f"{FOLDER}/")} == rewritten


def test_a_bar_above_a_figure_stops_the_folder_and_keeps_the_old_one(demo_workdir, tmp_path):
    workdir = copy_of_build(demo_workdir, tmp_path / "work")
    report = json.loads((workdir / ROOT / "reports" / FOLDER / "fidelity.json").read_text())
    worst = min((row for row in report["outputs"] if row["precision"] == "int8"), key=lambda row: row["psnr_db"])
    bars = {**report["thresholds_db"], "int8": 99}
    config = write_config(workdir, "strict.yaml", fidelity={"min_psnr_db": bars})
    folder = workdir / ROOT / FOLDER
    old = checksums.tree_sha256(folder)

    result = snakemake(workdir, "-c2", FOLDER, config=config, check=False)
    assert result.returncode != 0
    errors = {line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")}
    assert len(errors) == 1, result.stderr[-3000:]
    line = errors.pop()
    assert line.startswith(f"error: fidelity: {worst['package']} ({worst['entry']}) output '{worst['output']}'")
    assert f"has PSNR {worst['psnr_db']:.1f} dB in the MIL executor, under the int8 bar of 99 dB" in line
    assert checksums.tree_sha256(folder) == old and folder_check.folder_problems(folder) == []
