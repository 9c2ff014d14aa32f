"""The input rules for real: pinned downloads from an offline Hub cache, and an original-layout
transformer normalised, each planned before the conversion that reads its output."""

import yaml
from harness import job_blocks, new_workdir, snakemake, write_config
from offline_hub import COMMIT, MODEL_REPO, SD3_FILES, SD3_REPO, fill_cache, sha256
from transformer_files import write_original_layout

from sd3coreml.synthetic.checkpoints import write_synthetic_transformer

TINY_WEIGHTS = "checkpoints/tiny-4step.safetensors"
DOWNLOADS_CONFIG = "config/downloads.yaml"
DOWNLOADED = ["downloaded/tiny-4step.safetensors", "downloaded/sd3"]
AWKWARD_PATH = 'tokenizer/notes on it\'s "tokens".json'


def test_download_rules_run_offline_and_the_conversion_reads_their_output(hub_cache, tmp_path):
    """The rules for real: hub cache offline, pins through the shell, then the build plans on the download."""
    workdir = new_workdir(tmp_path / "work")
    write_synthetic_transformer("tiny", 4, tmp_path / "tiny.safetensors", tmp_path / "tiny.json")
    tiny = (tmp_path / "tiny.safetensors").read_bytes()
    fill_cache(hub_cache, MODEL_REPO, {TINY_WEIGHTS: tiny})
    # A path the shell must not split or unquote on its way to --pins-json.
    files = {**SD3_FILES, AWKWARD_PATH: b'{"said": "it\'s"}\n'}
    fill_cache(hub_cache, SD3_REPO, {AWKWARD_PATH: files[AWKWARD_PATH]})
    config = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())
    config["models"]["4step"]["weights"] = "downloaded/tiny-4step.safetensors"
    config["downloads"] = {
        "root": "downloaded",
        "files": {"tiny-4step.safetensors": {"repo": MODEL_REPO, "filename": TINY_WEIGHTS, "revision": COMMIT,
                                             "sha256": sha256(tiny)}},
        "snapshots": {"sd3": {"repo": SD3_REPO, "revision": COMMIT,
                              "files": {path: sha256(data) for path, data in files.items()}}},
    }  # fmt: skip
    (workdir / DOWNLOADS_CONFIG).write_text(yaml.safe_dump(config))

    planned = snakemake(workdir, "-n", "coremlsd3_4step_packages", config=DOWNLOADS_CONFIG)
    jobs = job_blocks(planned.stdout)
    names = [job.split(":", 1)[0].removeprefix("local").removeprefix("rule ") for job in jobs]
    first_conversion = next(index for index, name in enumerate(names) if name.startswith("mmdit_"))
    assert names.index("download_file_tiny_4step_safetensors") < first_conversion
    assert "downloaded/tiny-4step.safetensors" in jobs[first_conversion].split("output:")[0]

    snakemake(workdir, "-c2", *DOWNLOADED, config=DOWNLOADS_CONFIG)
    assert (workdir / "downloaded" / "tiny-4step.safetensors").read_bytes() == tiny
    placed = workdir / "downloaded" / "sd3"
    placed_files = {
        path.relative_to(placed).as_posix(): path.read_bytes() for path in placed.rglob("*") if path.is_file()
    }
    assert placed_files == {**files, ".snakemake_timestamp": b""}  # directory()'s marker

    without = snakemake(workdir, "--list-rules")
    assert "synthetic_transformer" in without.stdout
    assert "download" not in without.stdout


def test_workflow_normalises_an_original_file_before_converting_it(tmp_path):
    workdir = new_workdir(tmp_path / "work")
    write_synthetic_transformer("tiny", 0, tmp_path / "tiny.safetensors", tmp_path / "tiny.json")
    write_original_layout(tmp_path / "tiny.safetensors", workdir / "original.safetensors")
    config = write_config(workdir, "original.yaml")
    edited = yaml.safe_load((workdir / config).read_text())
    edited["models"]["4step"]["weights"] = "original.safetensors"
    (workdir / config).write_text(yaml.safe_dump(edited))
    planned = snakemake(workdir, "-n", "coremlsd3_4step_packages", config=config).stdout
    normalized = "results/demo/checkpoints/normalized/4step.safetensors"
    jobs = job_blocks(planned)
    normalizing = next(job for job in jobs if job.startswith("rule normalize_transformer:"))
    assert "original.safetensors" in normalizing and f"output: {normalized}" in normalizing
    conversions = [job for job in jobs if job.startswith("rule mmdit_")]
    assert conversions and all(normalized in job.split("output:")[0] for job in conversions)
