"""`snakemake sweep` on the demo, part of the session build: its table, plot and stage rows, and their figures."""

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml
from harness import snakemake

from sd3coreml.sweep.device_verdict import DEVICE_COLUMNS
from sd3coreml.sweep.program_stats import program_stats


@pytest.fixture(scope="module")
def demo_sweep(demo_workdir):
    """The reports of `snakemake sweep`, part of the session build: it shares the int8 stages of [1, 2, 2]."""
    return demo_workdir / "results" / "demo" / "reports" / "sweep"


def read_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_sweep_writes_table_plot_and_stage_rows(demo_sweep):
    reports = demo_sweep
    rows = read_rows(reports / "summary.csv")
    assert [(row["layout"], row["mode"]) for row in rows] == [
        ("1-2-2", "int8"), ("1-2-2", "mix"), ("1-4", "int8"), ("1-4", "mix")
    ]  # fmt: skip
    assert [row["stages"] for row in rows] == ["4", "4", "3", "3"]
    assert (reports / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (reports / "summary.md").read_text()
    assert "| 1-4 | mix |" in table and "Sharing saved" in table
    assert len(read_rows(reports / "stages.csv")) == 4 + 4 + 3 + 3


def test_sweep_figures_come_from_the_packages_and_measurements(demo_sweep, demo_workdir):
    reports = demo_sweep
    stages = {(row["layout"], row["mode"], row["stage"]): row for row in read_rows(reports / "stages.csv")}
    head = stages[("1-4", "mix", "2")]
    assert head["package"].endswith("blocks1-5_head.int8_linear_symmetric_per_channel.mlpackage")
    stats = program_stats(demo_workdir / head["package"])
    assert int(head["compute_ops"]) == stats.compute_ops
    assert float(head["weights_mib"]) == pytest.approx(stats.weight_bytes / 2**20, abs=0.01)
    measurement = json.loads(
        next((demo_workdir / "results/demo/fidelity").rglob("blocks1-5_head.int8*.json")).read_text()
    )
    figures = [f["psnr_db"] for p in measurement["packages"] if "int8" in p["package"] for f in p["executor"].values()]
    assert float(head["psnr_db"]) == pytest.approx(min(figures), abs=0.01)
    # The mix's middle stage is int4 per block; its input stage 4-bit palettes.
    assert "int4_linear_symmetric_per_block32" in stages[("1-4", "mix", "1")]["package"]
    assert "palettize4_per_grouped_channel8" in stages[("1-4", "mix", "0")]["package"]


def test_sweep_shares_jobs_and_says_what_it_saved(demo_sweep):
    reports = demo_sweep
    rows = {(row["layout"], row["mode"]): row for row in read_rows(reports / "summary.csv")}
    # Both layouts share Stage0 and blocks 0-1; both modes share the fp16 stages and the int8 head.
    assert float(rows[("1-4", "mix")]["build_s"]) > 0
    cost = [line for line in (reports / "summary.md").read_text().splitlines() if line.startswith("- ")]
    sweep_s = float(cost[0].split(" jobs, ")[1].split(" s ")[0])
    separate_s = float(cost[1].split(" jobs, ")[1].split(" s.")[0])
    assert sweep_s < separate_s == pytest.approx(sum(float(row["build_s"]) for row in rows.values()), abs=4)


@pytest.mark.skipif(sys.platform == "darwin", reason="a Mac fills these columns (profile_on_device)")
def test_device_columns_say_they_need_a_mac(demo_sweep):
    reports = demo_sweep
    for row in read_rows(reports / "summary.csv"):
        assert {row[column] for column in DEVICE_COLUMNS} == {"needs a Mac"}


def test_a_config_without_sweep_says_how_to_add_one(demo_workdir, tmp_path):
    config = yaml.safe_load((demo_workdir / "config" / "demo.yaml").read_text())
    del config["sweep"]
    (demo_workdir / "config" / "demo_no_sweep.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(demo_workdir, "-c1", "sweep", config="config/demo_no_sweep.yaml", check=False)
    assert result.returncode != 0
    assert "error: config has no 'sweep'; add e.g. 'sweep: {name: demo}'" in result.stderr + result.stdout


def test_the_demo_sweep_labels_its_weight_limit_flags(demo_sweep):
    # The demo's stages weigh kilobytes, under the 1 GiB default.
    assert {row["weight_limit"] for row in read_rows(demo_sweep / "stages.csv")} == {"under (heuristic)"}
    assert {row["weight_limit"] for row in read_rows(demo_sweep / "summary.csv")} == {"under (heuristic)"}
