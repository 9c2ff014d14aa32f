"""`snakemake sweep` on the demo, part of the session build: its table, plot and stage rows, and their figures."""

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml
from harness import snakemake
from safetensors.numpy import load_file

from sd3coreml.sweep.device_verdict import DEVICE_COLUMNS
from sd3coreml.sweep.program_stats import program_stats
from sd3coreml.verify.end_to_end.compression_check import JUDGED


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
    # The peer's key/value chunking beside the split, for the demo's attention (4 heads, 218 tokens).
    reference = table.split("## Reference: the peer's key/value chunking", 1)[1].split("## Cost")[0]
    assert "(4 heads, 218 queries, 218 keys;" in reference and "- 2 chunks: about 34 ops per attention" in reference
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
    cost_section = (reports / "summary.md").read_text().split("## Cost", 1)[1]
    cost = [line for line in cost_section.splitlines() if line.startswith("- ")]
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


def test_each_mode_is_measured_end_to_end_once_and_the_front_holds_the_undominated_rows(demo_sweep):
    rows = read_rows(demo_sweep / "summary.csv")
    for row in rows:
        check = json.loads((demo_sweep / "end_to_end" / f"{row['mode']}.json").read_text())
        assert check["layout"] == "1-2-2" and float(row["end_to_end_db"]) == pytest.approx(check["final_latent_db"], abs=0.01)
    # Every mode is held against one run of the fp16 chain, written once for the sweep.
    assert sorted(load_file(str(demo_sweep / "fp16_chain.safetensors"))) == sorted(JUDGED)
    by_mode = {row["mode"]: float(row["end_to_end_db"]) for row in rows}
    assert by_mode["int8"] > by_mode["mix"] + 5  # int4 blocks and 4-bit palettes cost more than int8
    # The CSV's figures are rounded: a row off the front is matched or beaten on both axes by one on it.
    size, quality = (lambda row: float(row["mmdit_weights_mib"])), (lambda row: float(row["end_to_end_db"]))
    front = [row for row in rows if row["on_front"] == "yes"]
    assert {row["mode"] for row in front} == {"int8", "mix"}
    for row in rows:
        if row["on_front"] != "yes":
            assert any(size(other) <= size(row) and quality(other) >= quality(row) for other in front)
    table = (demo_sweep / "summary.md").read_text()
    assert "## Size-quality front" in table and "measured once per mode on layout 1-2-2" in table
