"""`docs/PERFORMANCE.md` from a build's Snakemake `benchmark:` files.

Each rule's `benchmark:` TSV records the job's wall time (`s`) and peak resident memory
(`max_rss`, MiB); this module tabulates them per job and per rule, adds the disk use of the
artifacts and a description of the machine, and writes Markdown.

Snakemake 9.27's sampler writes `NA` for every memory column on macOS (psutil has no
`io_counters` there; the AttributeError ends each sample unseen) and, anywhere, for a job that
ends before its first sample: such a peak is unknown, never zero.
"""

import csv
import json
import os
import platform
import shutil
from collections import defaultdict
from pathlib import Path

from sd3coreml import checksums
from sd3coreml.atomic import written_atomically

SYNTHETIC_PREFIX = "synthetic_"
# Not part of a packages build: `snakemake verify` runs it afterwards.
END_TO_END = "end_to_end"
# What Snakemake writes where it has no figure: `NA` (no sample taken), `-` (None), nothing.
NO_FIGURE = ("NA", "-", "")
UNKNOWN = "unknown"
UNKNOWN_MEMORY_NOTE = (
    "unknown (Snakemake writes NA on macOS, and anywhere for a job that ends before its first sample)"
)


def read_benchmark(tsv: Path) -> dict | None:
    """The first run's record of a Snakemake benchmark TSV, or None where the job left none."""
    if not Path(tsv).is_file():
        return None
    with Path(tsv).open() as stream:
        return next(csv.DictReader(stream, delimiter="\t"), None)


def memory_mib(value: str) -> float | None:
    """A benchmark's memory column in MiB, or None where Snakemake wrote no figure (`NA` on macOS)."""
    return None if value.strip() in NO_FIGURE else float(value)


def mib_text(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.0f}"


def largest_rss(rows: list[dict]) -> float | None:
    """The largest known max_rss of `rows`, or None where no row has one."""
    return max((row["max_rss_mib"] for row in rows if row["max_rss_mib"] is not None), default=None)


def read_benchmarks(benchmarks: Path) -> list[dict]:
    """One row per job: rule (first folder), job (the rest of the path), wall s, max_rss MiB (None: unknown)."""
    rows = []
    for tsv in sorted(Path(benchmarks).rglob("*.tsv")):
        record = read_benchmark(tsv)
        if record is None:
            continue
        relative = tsv.relative_to(benchmarks).with_suffix("")
        rows.append(
            {
                "rule": relative.parts[0],
                "job": "/".join(relative.parts[1:]) or relative.parts[0],
                "wall_s": float(record["s"]),
                "max_rss_mib": memory_mib(record["max_rss"]),
            }
        )
    return rows


def folder_size_mib(path: Path) -> float:
    return checksums.tree_bytes(path) / 2**20


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM"
    system = f"{platform.system()} {platform.release()}"
    return f"{system}, {os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}"


def rule_table(rows: list[dict]) -> list[str]:
    by_rule = defaultdict(list)
    for row in rows:
        by_rule[row["rule"]].append(row)
    lines = ["| rule | jobs | wall s (sum) | wall s (max) | max_rss MiB (max) |", "|---|---:|---:|---:|---:|"]
    for rule, jobs in sorted(by_rule.items()):
        walls = [job["wall_s"] for job in jobs]
        rss = mib_text(largest_rss(jobs))
        lines.append(f"| {rule} | {len(jobs)} | {sum(walls):.1f} | {max(walls):.1f} | {rss} |")
    return lines


def job_table(rows: list[dict]) -> list[str]:
    lines = ["| rule | job | wall s | max_rss MiB |", "|---|---|---:|---:|"]
    for row in sorted(rows, key=lambda r: (r["rule"], r["job"])):
        lines.append(f"| {row['rule']} | {row['job']} | {row['wall_s']:.1f} | {mib_text(row['max_rss_mib'])} |")
    return lines


def is_mmdit(row: dict) -> bool:
    return row["rule"] == "mmdit" or (row["rule"] == "compress" and row["job"].startswith("mmdit/"))


# Issue 17's targets on a 2-core, 24 GB machine. The memory limit is the largest job's peak
# at the commit that issue started from, measured by `make bench` there (CLIP-G's conversion).
LARGEST_PEAK_MIB = 4967


def is_clip_g_palettization(row: dict) -> bool:
    return (
        row["rule"] == "compress" and row["job"].startswith("text_encoders/") and "TextEncoder2.palettize" in row["job"]
    )


def target_table(rows: list[dict], wall_s: float) -> list[str]:
    """The targets for a 2-core, 24 GB machine, each with the measured figure."""
    mmdit = [r for r in rows if is_mmdit(r)]
    fidelity = [r for r in rows if r["rule"] == "fidelity"]
    palettes = [r for r in rows if is_clip_g_palettization(r)]
    checks = [
        ("whole packages folder (fidelity checks included), wall clock", wall_s, 300, "s"),
        ("CLIP-G 6-bit palettization, job wall", max((r["wall_s"] for r in palettes), default=0), 40, "s"),
        ("MMDiT fp16 + int8 jobs, job wall sum / 2 cores", sum(r["wall_s"] for r in mmdit) / 2, 60, "s"),
        ("per-package fidelity checks, job wall sum / 2 cores", sum(r["wall_s"] for r in fidelity) / 2, 90, "s"),
        ("largest job max_rss", largest_rss(rows), LARGEST_PEAK_MIB, "MiB"),
    ]
    lines = ["| target | measured | limit | met |", "|---|---:|---:|---|"]
    for name, value, limit, unit in checks:
        if value is None:
            lines.append(f"| {name} | {UNKNOWN} | {limit} {unit} | {UNKNOWN} |")
        else:
            lines.append(f"| {name} | {value:.0f} {unit} | {limit} {unit} | {'yes' if value <= limit else 'no'} |")
    return lines


def largest_rss_line(rows: list[dict]) -> str:
    """The summary's memory line; says where a figure is missing, and why."""
    largest, missing = largest_rss(rows), sum(row["max_rss_mib"] is None for row in rows)
    if largest is None:
        return f"- largest job max_rss: {UNKNOWN_MEMORY_NOTE}"
    if missing:
        return f"- largest job max_rss: {largest:.0f} MiB; {missing} of {len(rows)} jobs {UNKNOWN_MEMORY_NOTE}"
    return f"- largest job max_rss: {largest:.0f} MiB"


def end_to_end_lines(rows: list[dict], root: Path, folder: Path) -> list[str]:
    report = Path(root) / "reports" / Path(folder).name / "end_to_end.json"
    if not rows or not report.exists():
        return []
    figures = json.loads(report.read_text())
    return [
        "## End to end (`snakemake verify`, run after the build)",
        "",
        f"- {figures['steps']} steps, prompt {figures['prompt']!r}, seed {figures['seed']}: final-latent PSNR "
        f"**{figures['final_latent_psnr_db']} dB** (bar {figures['min_psnr_db']} dB), "
        f"{'passed' if figures['passed'] else 'FAILED'}",
        f"- job wall time {rows[0]['wall_s']:.0f} s, max_rss "
        + (UNKNOWN_MEMORY_NOTE if rows[0]["max_rss_mib"] is None else f"{rows[0]['max_rss_mib']:.0f} MiB"),
        "",
    ]


def write_report(root: Path, folder: Path, wall_s: float, command: str, out: Path, notes: Path | None = None) -> None:
    every_row = read_benchmarks(Path(root) / "benchmarks")
    rows = [row for row in every_row if not row["rule"].startswith(SYNTHETIC_PREFIX) and row["rule"] != END_TO_END]
    artifacts = [p for p in Path(root).iterdir() if p.is_dir() and p.name not in {"checkpoints", "logs", "benchmarks"}]
    lines = [
        "# Performance",
        "",
        f"Measured by `{command}` on {machine_description()}.",
        "",
        f"- whole build, wall clock: **{wall_s:.0f} s** ({len(rows)} jobs)",
        f"- sum of job wall times: {sum(r['wall_s'] for r in rows):.0f} s",
        largest_rss_line(rows),
        f"- packages folder `{Path(folder).name}`: {folder_size_mib(folder):.0f} MiB;"
        f" all artifacts under `{root}` (without checkpoints): {sum(folder_size_mib(p) for p in artifacts):.0f} MiB",
        f"- free disk after the build: {shutil.disk_usage(root).free / 2**30:.0f} GiB",
        "",
        "## Targets",
        "",
        *target_table(rows, wall_s),
        "",
        *([Path(notes).read_text().rstrip(), ""] if notes else []),
        "## Per rule",
        "",
        *rule_table(rows),
        "",
        "## Per job",
        "",
        *job_table(rows),
        "",
    ]
    at = lines.index("## Per rule")
    lines[at:at] = end_to_end_lines([row for row in every_row if row["rule"] == END_TO_END], root, folder)
    fidelity = Path(root) / "reports" / Path(folder).name / "fidelity.md"
    if fidelity.exists():
        table = fidelity.read_text().split("\n", 1)[1].strip()
        at = lines.index("## Per rule")
        lines[at:at] = ["## Fidelity of the packages (`reports/.../fidelity.md`)", "", table, ""]
    with written_atomically(Path(out)) as temporary:
        temporary.write_text("\n".join(lines))
