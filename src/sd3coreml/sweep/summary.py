"""The sweep's summary: one row per stage layout and compression mode, and what sharing saved.

Input: the plan the `sweep_summary` rule writes (per row, each stage's package, its fp16
twin, its fidelity measurement and the benchmark files of the jobs that made it; a stage whose
attention is split per head also its joint twin and the figures against it). Output, in one
folder: summary.csv, summary.md, stages.csv (one row per stage) and summary.png.

What an attention costs is read from the fp16 programs: its ops (program_stats.attention_ops;
the Neural Engine compiler's memory and time grow with op count), the compute ops a stage gains
over its joint twin, and the largest attention scores one op makes (what the Neural Engine
must hold at once for it).
"""

import csv
import json
import math
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.atomic import written_atomically
from sd3coreml.errors import PipelineError
from sd3coreml.pipeline.artifacts import setting_of_package
from sd3coreml.stages import JOINT
from sd3coreml.sweep.bench_report import read_benchmark
from sd3coreml.sweep.device_verdict import DEVICE_COLUMNS, VERDICTS, worst
from sd3coreml.sweep.front import SIZE, on_front, quality
from sd3coreml.sweep import kv_chunking
from sd3coreml.sweep.program_stats import attention_ops, attention_shape, largest_attention_scores, program_stats

MIB = 1024 * 1024
NEEDS_A_MAC = "needs a Mac"
ROW_COLUMNS = (
    "layout", "mode", "attention", "stages", "mmdit_weights_mib", "end_to_end_db", "on_front",
    "largest_stage_weights_mib", "total_mib", "compute_ops", "peak_activation_mib", "ops_per_attention", "ops_over_joint", "largest_scores_mib", "build_s", "disk_mib",
    "min_psnr_db", "min_fp16_psnr_db", "min_against_joint_db", "passed", "weight_limit", *DEVICE_COLUMNS,
)  # fmt: skip
STAGE_COLUMNS = (
    "layout", "mode", "attention", "stage", "package", "weights_mib", "package_mib", "compute_ops",
    "peak_activation_mib", "ops_per_attention", "ops_over_joint", "largest_scores_mib", "psnr_db", "fp16_psnr_db",
    "against_joint_db", "weight_limit", *DEVICE_COLUMNS,
)  # fmt: skip
# A joint stage is not held against anything; its cells stay empty.
NOT_SPLIT = ""
NOT_MEASURED = ""
# A stage's weights against sweep.max_stage_weight_bytes: a heuristic until a Mac has measured it.
UNDER_LIMIT, OVER_LIMIT = "under (heuristic)", "over (heuristic)"


def job_seconds(benchmark: str) -> float | None:
    """Wall seconds of a job's benchmark (first run), or None if the job left none."""
    record = read_benchmark(Path(benchmark))
    return None if record is None else float(record["s"])


def min_psnr(measurement: dict, package: str) -> float:
    """Lowest executor PSNR over the outputs of one package in a measurement."""
    for record in measurement["packages"]:
        if Path(record["package"]).name == Path(package).name:
            return min(float(figures["psnr_db"]) for figures in record["executor"].values())
    raise PipelineError(f"{package} is not in its measurement; delete the measurement and rerun the sweep")


def device_figures(stage: dict, verdict_thresholds: dict) -> dict:
    if "device" not in stage:
        return dict.fromkeys(DEVICE_COLUMNS, NEEDS_A_MAC)
    from sd3coreml.sweep.device_profile import device_columns
    from sd3coreml.sweep.device_verdict import VerdictThresholds

    return device_columns(json.loads(Path(stage["device"]).read_text()), VerdictThresholds(**verdict_thresholds))


def weight_limit(weight_bytes: int, limit: int, device: dict) -> str:
    """The weights heuristic's label, or the Mac's verdict where one measured the stage."""
    if device["verdict"] in VERDICTS:
        return f"Mac: {device['verdict']}"
    return OVER_LIMIT if weight_bytes > limit else UNDER_LIMIT


def attention_figures(stage: dict) -> dict:
    """What a stage's attention costs, from its fp16 program, and a split stage's figures against its
    joint twins (the lowest PSNR over their outputs, fp16 and compressed)."""
    fp16 = Path(stage["fp16_package"])
    ops = attention_ops(fp16)
    figures = {
        "ops_per_attention": max(ops.values(), default=0),
        "largest_scores_mib": largest_attention_scores(fp16) / MIB,
        "ops_over_joint": 0,
        "against_joint_db": NOT_SPLIT,
    }
    if "against_joint" in stage:
        joint_ops = program_stats(Path(stage["joint_fp16_package"])).compute_ops
        figures["ops_over_joint"] = program_stats(fp16).compute_ops - joint_ops
        against = [json.loads(Path(path).read_text())["executor"] for path in stage["against_joint"]]
        figures["against_joint_db"] = min(float(output["psnr_db"]) for record in against for output in record.values())
    return figures


def stage_record(stage: dict, thresholds: dict, verdict_thresholds: dict, limit: int) -> dict:
    stats = program_stats(Path(stage["package"]))
    device = device_figures(stage, verdict_thresholds)
    measurement = json.loads(Path(stage["measurement"]).read_text())
    psnr = min_psnr(measurement, stage["package"])
    return {
        "stage": stage["stage"],
        "package": stage["package"],
        "weights_mib": stats.weight_bytes / MIB,
        "package_mib": stats.package_bytes / MIB,
        "compute_ops": stats.compute_ops,
        "peak_activation_mib": stats.peak_activation_bytes / MIB,
        **attention_figures(stage),
        "psnr_db": psnr,
        "fp16_psnr_db": min_psnr(measurement, stage["fp16_package"]),
        "passed": psnr >= thresholds[setting_of_package(stage["package"]).precision],
        "weight_limit": weight_limit(stats.weight_bytes, limit, device),
        **device,
    }


def row_record(row: dict, stages: list[dict]) -> dict:
    benchmarks = {file for stage in row["stages"] for file in stage["benchmarks"]}
    packages = {stage[key] for stage in row["stages"] for key in ("package", "fp16_package")}
    against_joint = [stage["against_joint_db"] for stage in stages if stage["against_joint_db"] != NOT_SPLIT]
    return {
        "layout": row["layout"],
        "mode": row["mode"],
        "attention": row.get("attention", JOINT),
        "stages": len(stages),
        "mmdit_weights_mib": sum(stage["weights_mib"] for stage in stages),
        "end_to_end_db": end_to_end_figure(row),
        "largest_stage_weights_mib": max(stage["weights_mib"] for stage in stages),
        "total_mib": sum(stage["package_mib"] for stage in stages),
        "compute_ops": sum(stage["compute_ops"] for stage in stages),
        "peak_activation_mib": max(stage["peak_activation_mib"] for stage in stages),
        "ops_per_attention": max(stage["ops_per_attention"] for stage in stages),
        "ops_over_joint": sum(stage["ops_over_joint"] for stage in stages),
        "largest_scores_mib": max(stage["largest_scores_mib"] for stage in stages),
        "min_against_joint_db": min(against_joint, default=NOT_SPLIT),
        "build_s": sum(seconds for seconds in map(job_seconds, sorted(benchmarks)) if seconds is not None),
        "disk_mib": sum(checksums.tree_bytes(package, allocated=True) for package in sorted(packages)) / MIB,
        "min_psnr_db": min(stage["psnr_db"] for stage in stages),
        "min_fp16_psnr_db": min(stage["fp16_psnr_db"] for stage in stages),
        "passed": all(stage["passed"] for stage in stages),
        "weight_limit": row_weight_limit(stages),
        **combined_device_figures(stages),
    }


def end_to_end_figure(row: dict):
    """The row's mode's end-to-end PSNR of the final latent (verify/end_to_end/compression_check.py),
    where the sweep measured it."""
    if "end_to_end" not in row:
        return NOT_MEASURED
    return json.loads(Path(row["end_to_end"]).read_text())["final_latent_db"]


def end_to_end_layout(plan: dict) -> str | None:
    """The layout the sweep's per-mode end-to-end checks ran on (one per mode, not per layout)."""
    checked = [row["end_to_end"] for row in plan["rows"] if "end_to_end" in row]
    return json.loads(Path(checked[0]).read_text())["layout"] if checked else None


def row_weight_limit(stages: list[dict]) -> str:
    """How many of a layout's stages the weights heuristic flags (Mac verdicts are in their own column)."""
    over = [stage["stage"] for stage in stages if stage["weight_limit"] == OVER_LIMIT]
    return f"{len(over)} over (heuristic): {', '.join(map(str, over))}" if over else UNDER_LIMIT


def combined_device_figures(stages: list[dict]) -> dict:
    """A layout's device figures: its worst stage's verdict and placement, the sums of its times
    (`step_s`: what one denoising step costs the app, every stage loaded, run and unloaded)."""
    verdicts = [stage["verdict"] for stage in stages]
    if not all(verdict in VERDICTS for verdict in verdicts):
        reason = next(verdict for verdict in verdicts if verdict not in VERDICTS)  # needs a Mac, needs macOS 15
        return dict.fromkeys(DEVICE_COLUMNS, reason)
    combined = {"verdict": worst(verdicts)}
    for column in DEVICE_COLUMNS[1:]:
        values = [stage[column] for stage in stages]
        if not all(isinstance(value, float | int) for value in values):
            combined[column] = next(value for value in values if not isinstance(value, float | int))
        else:
            combined[column] = min(values) if column == "neural_engine_pct" else sum(values)
    return combined


def sharing_cost(rows: list[dict]) -> dict:
    """Job time the sweep ran (each shared job once) against building every row on its own."""
    per_row = [{file for stage in row["stages"] for file in stage["benchmarks"]} for row in rows]
    seconds = {file: job_seconds(file) for file in set().union(*per_row)}
    measured = {file: value for file, value in seconds.items() if value is not None}
    return {
        "builds": len(rows),
        "sweep_jobs": len(measured),
        "sweep_job_s": sum(measured.values()),
        "separate_jobs": sum(len(files & measured.keys()) for files in per_row),
        "separate_job_s": sum(measured[file] for files in per_row for file in files if file in measured),
        "jobs_without_benchmark": len(seconds) - len(measured),
    }


def summarize(plan: dict) -> tuple[list[dict], list[dict], dict]:
    thresholds, verdict_thresholds = plan["min_psnr_db"], plan.get("device", {})
    rows, stage_rows = [], []
    for row in plan["rows"]:
        stages = [
            stage_record(s, thresholds, verdict_thresholds, plan["max_stage_weight_bytes"]) for s in row["stages"]
        ]
        rows.append(row_record(row, stages))
        labels = {"layout": row["layout"], "mode": row["mode"], "attention": row.get("attention", JOINT)}
        stage_rows += [{**labels, **stage} for stage in stages]
    for row, front in zip(rows, on_front(rows)):
        row["on_front"] = "yes" if front else ""
    return rows, stage_rows, sharing_cost(plan["rows"])


def shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) else str(value)
    return str(value)


def write_csv(path: Path, records: list[dict], columns: tuple[str, ...]) -> None:
    with written_atomically(path) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: shown(record[key]) for key in columns} for record in records)


def cost_lines(cost: dict) -> list[str]:
    saved = 1 - cost["sweep_job_s"] / cost["separate_job_s"] if cost["separate_job_s"] else 0.0
    lines = [
        f"- Sweep: {cost['sweep_jobs']} jobs, {cost['sweep_job_s']:.0f} s of job time (each shared job once).",
        f"- The same {cost['builds']} layout and mode builds one by one: {cost['separate_jobs']} jobs, "
        f"{cost['separate_job_s']:.0f} s. Sharing saved {saved:.0%}.",
    ]
    if cost["jobs_without_benchmark"]:
        lines.append(
            f"- {cost['jobs_without_benchmark']} jobs left no benchmark file (built before benchmarks were kept)."
        )
    return lines


def markdown(plan: dict, rows: list[dict], cost: dict) -> str:
    header = "| " + " | ".join(ROW_COLUMNS) + " |"
    left = ("layout", "mode", "attention")
    rule = "|" + "|".join("---" if column in left else "---:" for column in ROW_COLUMNS) + "|"
    body = ["| " + " | ".join(shown(row[column]) for column in ROW_COLUMNS) + " |" for row in rows]
    title = f"# Sweep `{plan['sweep']}` of model `{plan['model']}`"
    layout = end_to_end_layout(plan)
    where = [f"Quality: each mode's final latent through the app's chain against the same chain with fp16 MMDiT "
             f"packages, measured once per mode on layout {layout}.", ""] if layout else []  # fmt: skip
    front = ["## Size-quality front", "", *where, *front_lines(rows)]
    chunking = kv_chunking.reference_lines(sweep_attention_shape(plan))
    reference = ["", "## Reference: the peer's key/value chunking", "", *chunking] if chunking else []
    return "\n".join([title, "", header, rule, *body, "", *front, *reference, "", "## Cost", "", *cost_lines(cost), ""])


def sweep_attention_shape(plan: dict):
    """(heads, queries, keys) of the first stage with attention, from its fp16 package."""
    for row in plan["rows"]:
        for stage in row["stages"]:
            shape = attention_shape(Path(stage["fp16_package"]))
            if shape is not None:
                return shape
    return None


def front_lines(rows: list[dict]) -> list[str]:
    """The rows on the front, fewest MMDiT bytes first: the folders worth choosing between."""
    front = sorted((row for row in rows if row["on_front"]), key=lambda row: row[SIZE])
    return [f"- {row['layout']} {row['mode']}: {row[SIZE]:.2f} MiB of MMDiT weights, {quality(row):.2f} dB" +
            ("" if row["end_to_end_db"] != NOT_MEASURED else " (lowest stage PSNR; no end-to-end figure)")
            for row in front] or ["- no row has a quality figure"]  # fmt: skip


def write_summary(plan: dict, out_dir: Path) -> None:
    from sd3coreml.sweep.plot import plot_summary

    rows, stage_rows, cost = summarize(plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "summary.csv", rows, ROW_COLUMNS)
    write_csv(out_dir / "stages.csv", stage_rows, STAGE_COLUMNS)
    with written_atomically(out_dir / "summary.md") as temporary:
        temporary.write_text(markdown(plan, rows, cost))
    plot_summary(rows, f"sweep {plan['sweep']} ({plan['model']})", out_dir / "summary.png")
