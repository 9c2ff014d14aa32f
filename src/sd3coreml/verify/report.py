"""The fidelity report of one build: every measured package and output against its bar.

Input: the measurement JSONs of `measure.measure_packages`, keyed by the folder entry each
package becomes: the MIL executor's for every entry and, where the workflow planned them (on
macOS), Core ML's own. Output: `fidelity.json` and a Markdown table, which says under which
compute units Core ML predicted, or why it did not. Any figure under its precision's bar fails
the report with one line naming the package, the output and the figure.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from sd3coreml.atomic import write_json, written_atomically
from sd3coreml.errors import PipelineError


def figure(value) -> float:
    return float(value)  # "inf" and "-inf" are how JSON holds exact and hopeless matches


@dataclass(frozen=True)
class CoreMLPolicy:
    """How Core ML's own figures (macOS) count: their bar, and whether they can fail a build.

    Off by default (`fidelity.enforce_coreml`) until measured on a Mac: then a Core ML figure
    under `fidelity.coreml_min_psnr_db`, or a Core ML run that died, fails its row.
    """

    min_psnr_db: float = 30.0
    enforce: bool = False


# Core ML's status where the workflow planned no Core ML measurement: it runs only on macOS.
NOT_MEASURED = "needs macOS"


def coreml_records(path) -> dict[str, dict]:
    """A Core ML measurement's records by package path; none where there is no measurement."""
    if path is None:
        return {}
    return {package["package"]: package for package in json.loads(Path(path).read_text())["packages"]}


def report_rows(
    measurements: dict[str, Path],
    thresholds: dict[str, float],
    coreml=CoreMLPolicy(),
    coreml_measurements: dict[str, Path] | None = None,
) -> list[dict]:
    rows = []
    for entry, path in sorted(measurements.items()):
        measurement = json.loads(Path(path).read_text())
        measured_in_coreml = coreml_records((coreml_measurements or {}).get(entry))
        for package in measurement["packages"]:
            in_coreml = measured_in_coreml.get(package["package"], {"coreml": NOT_MEASURED, "compute_units": None})
            bar = thresholds.get(package["precision"])
            if bar is None:
                raise PipelineError(
                    f"config key 'fidelity.min_psnr_db' has no bar for {package['precision']!r} "
                    f"({package['package']}); add one"
                )
            for output, figures in sorted(package["executor"].items()):
                rows.append(
                    {
                        "entry": entry,
                        "package": package["package"],
                        "precision": package["precision"],
                        "output": output,
                        "psnr_db": figures["psnr_db"],
                        "min_psnr_db": bar,
                        "coreml_psnr_db": core_ml_figure(in_coreml["coreml"], output),
                        "coreml_min_psnr_db": coreml.min_psnr_db,
                        "coreml": core_ml_status(in_coreml["coreml"]),
                        "coreml_compute_units": in_coreml["compute_units"],
                        **verdict(figure(figures["psnr_db"]) >= bar, in_coreml["coreml"], output, coreml),
                    }
                )
    return rows


def verdict(executor_passed: bool, coreml_record, output: str, policy: CoreMLPolicy) -> dict:
    """`passed` and `decided_by`: the runner whose figure decided the row."""
    if not executor_passed:
        return {"passed": False, "decided_by": "MIL executor"}
    status = core_ml_status(coreml_record)
    if not policy.enforce or status not in ("measured", "failed"):
        return {"passed": True, "decided_by": "MIL executor" + ("" if policy.enforce else "; Core ML not enforced")}
    coreml_passed = status == "measured" and figure(coreml_record[output]["psnr_db"]) >= policy.min_psnr_db
    return {"passed": coreml_passed, "decided_by": "MIL executor and Core ML" if coreml_passed else "Core ML"}


def core_ml_figure(coreml, output: str):
    """Core ML's own PSNR for an output (macOS), or None where Core ML did not predict."""
    return None if core_ml_status(coreml) != "measured" else coreml[output]["psnr_db"]


def core_ml_status(coreml) -> str:
    """`measured`, `failed`, or why Core ML did not run (`needs macOS`, `needs macOS 15`)."""
    if isinstance(coreml, str):
        return coreml
    return "failed" if "failed" in coreml else "measured"


def shown(value) -> str:
    if value is None:
        return "-"
    number = figure(value)
    return f"{number:.1f}" if math.isfinite(number) else str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| entry | precision | output | PSNR (dB) | bar (dB) | Core ML PSNR (dB) | Core ML bar (dB) | | decided by | package |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        shown_verdict = "ok" if row["passed"] else "**FAIL**"
        lines.append(
            f"| {row['entry']} | {row['precision']} | {row['output']} | {shown(row['psnr_db'])} | {row['min_psnr_db']:g} "
            f"| {shown(row['coreml_psnr_db'])} | {row['coreml_min_psnr_db']:g} | {shown_verdict} | {row['decided_by']} "
            f"| `{Path(row['package']).name}` |"
        )
    return "\n".join(lines + ["", core_ml_summary(rows)]) + "\n"


def core_ml_summary(rows: list[dict]) -> str:
    """What Core ML ran under, per compute units, and why it did not run where it did not:
    `Core ML prediction (CPU_AND_NE): measured.`, `Core ML prediction: needs macOS.`"""
    statuses: dict[str, set] = {}
    for row in rows:
        units = f" ({row['coreml_compute_units']})" if row["coreml_compute_units"] else ""
        statuses.setdefault(units, set()).add(row["coreml"])
    lines = [f"Core ML prediction{units}: {', '.join(sorted(seen))}." for units, seen in sorted(statuses.items())]
    return " ".join(lines)


def first_failure(rows: list[dict], report: Path) -> str | None:
    failures = [row for row in rows if not row["passed"]]
    if not failures:
        return None
    worst = min(failures, key=lowest_figure)
    if worst["decided_by"] == "Core ML" and worst["coreml"] == "failed":
        return (
            f"fidelity: {worst['package']} ({worst['entry']}): Core ML's run failed and fidelity.enforce_coreml is on "
            f"({len(failures)} output(s) failing; table in {report})"
        )
    core_ml = worst["decided_by"] == "Core ML"
    runner = "in Core ML" if core_ml else "in the MIL executor"
    bar = worst["coreml_min_psnr_db"] if core_ml else worst["min_psnr_db"]
    return (
        f"fidelity: {worst['package']} ({worst['entry']}) output '{worst['output']}' has PSNR "
        f"{lowest_figure(worst):.1f} dB {runner}, under the {'Core ML' if core_ml else worst['precision']} bar of {bar:g} dB "
        f"({len(failures)} output(s) under their bar; table in {report})"
    )


def lowest_figure(row: dict) -> float:
    """The figure that decided a failing row."""
    if row["decided_by"] == "Core ML":
        return -math.inf if row["coreml_psnr_db"] is None else figure(row["coreml_psnr_db"])
    return figure(row["psnr_db"])


def write_report(
    measurements: dict[str, Path],
    thresholds: dict[str, float],
    out_json: Path,
    out_md: Path,
    coreml=CoreMLPolicy(),
    coreml_measurements: dict[str, Path] | None = None,
) -> None:
    rows = report_rows(measurements, thresholds, coreml, coreml_measurements)
    table = markdown_table(rows)
    print(table)
    failure = first_failure(rows, out_md)
    with written_atomically(Path(out_md)) as temporary:
        temporary.write_text(f"# Fidelity of {Path(out_md).parent.name}\n\n{table}")
    report = {
        "passed": failure is None,
        "thresholds_db": thresholds,
        "coreml": {"min_psnr_db": coreml.min_psnr_db, "enforced": coreml.enforce},
        "outputs": rows,
    }
    write_json(Path(out_json), report)
    if failure:
        raise PipelineError(failure)


def write_report_from_spec(spec_path, out_json: Path, out_md: Path) -> None:
    """`fidelity-report`: the report a spec (pipeline/jobs.fidelity_report_spec) asks for."""
    from sd3coreml.step_spec import read_spec

    spec = read_spec(spec_path, "fidelity-report")
    measurements = {entry: Path(path) for entry, path in spec["measurements"].items()}
    coreml_measurements = {entry: Path(path) for entry, path in spec.get("coreml_measurements", {}).items()}
    policy = CoreMLPolicy(spec["coreml"]["min_psnr_db"], spec["coreml"]["enforce"])
    write_report(measurements, spec["thresholds"], out_json, out_md, policy, coreml_measurements)
