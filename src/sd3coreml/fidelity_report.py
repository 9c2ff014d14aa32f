"""The fidelity report of one build: every measured package and output against its bar.

Input: the measurement JSONs of `fidelity.measure_packages`, keyed by the folder entry each
package becomes. Output: `fidelity.json` and a Markdown table. Any figure under its
precision's bar fails the report with one line naming the package, the output and the figure.
"""

import json
import math
from pathlib import Path

from sd3coreml.atomic import written_atomically
from sd3coreml.errors import PipelineError


def figure(value) -> float:
    return float(value)  # "inf" and "-inf" are how JSON holds exact and hopeless matches


def report_rows(measurements: dict[str, Path], thresholds: dict[str, float]) -> list[dict]:
    rows = []
    for entry, path in sorted(measurements.items()):
        measurement = json.loads(Path(path).read_text())
        for package in measurement["packages"]:
            bar = thresholds.get(package["precision"])
            if bar is None:
                raise PipelineError(
                    f"config key 'fidelity.min_psnr_db' has no bar for {package['precision']!r} "
                    f"({package['package']}); add one"
                )
            for output, figures in sorted(package["executor"].items()):
                coreml = core_ml_figure(package["coreml"], output)
                passed = figure(figures["psnr_db"]) >= bar and (coreml is None or figure(coreml) >= bar)
                rows.append(
                    {
                        "entry": entry,
                        "package": package["package"],
                        "precision": package["precision"],
                        "output": output,
                        "psnr_db": figures["psnr_db"],
                        "coreml_psnr_db": coreml,
                        "min_psnr_db": bar,
                        "passed": passed,
                        "coreml": package["coreml"] if isinstance(package["coreml"], str) else "measured",
                    }
                )
    return rows


def core_ml_figure(coreml, output: str):
    """Core ML's own PSNR for an output (macOS), or None where Core ML cannot predict."""
    return None if isinstance(coreml, str) else coreml[output]["psnr_db"]


def shown(value) -> str:
    if value is None:
        return "-"
    number = figure(value)
    return f"{number:.1f}" if math.isfinite(number) else str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| entry | precision | output | PSNR (dB) | Core ML PSNR (dB) | bar (dB) | | package |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        verdict = "ok" if row["passed"] else "**FAIL**"
        lines.append(
            f"| {row['entry']} | {row['precision']} | {row['output']} | {shown(row['psnr_db'])} "
            f"| {shown(row['coreml_psnr_db'])} | {row['min_psnr_db']:g} | {verdict} | `{Path(row['package']).name}` |"
        )
    coreml = {row["coreml"] for row in rows}
    lines += ["", f"Core ML prediction (CPU_AND_NE): {', '.join(sorted(coreml))}; PSNR is from the MIL executor."]
    return "\n".join(lines) + "\n"


def first_failure(rows: list[dict], report: Path) -> str | None:
    failures = [row for row in rows if not row["passed"]]
    if not failures:
        return None
    worst = min(failures, key=lowest_figure)
    runner = "in Core ML" if lowest_figure(worst) < figure(worst["psnr_db"]) else "in the MIL executor"
    return (
        f"fidelity: {worst['package']} ({worst['entry']}) output '{worst['output']}' has PSNR "
        f"{lowest_figure(worst):.1f} dB {runner}, under the {worst['precision']} bar of {worst['min_psnr_db']:g} dB "
        f"({len(failures)} output(s) under their bar; table in {report})"
    )


def lowest_figure(row: dict) -> float:
    coreml = row["coreml_psnr_db"]
    return min(figure(row["psnr_db"]), math.inf if coreml is None else figure(coreml))


def write_report(measurements: dict[str, Path], thresholds: dict[str, float], out_json: Path, out_md: Path) -> None:
    rows = report_rows(measurements, thresholds)
    table = markdown_table(rows)
    print(table)
    failure = first_failure(rows, out_md)
    with written_atomically(Path(out_md)) as temporary:
        temporary.write_text(f"# Fidelity of {Path(out_md).parent.name}\n\n{table}")
    report = {"passed": failure is None, "thresholds_db": thresholds, "outputs": rows}
    with written_atomically(Path(out_json)) as temporary:
        temporary.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if failure:
        raise PipelineError(failure)


def parse_measurements(pairs: list[str]) -> dict[str, Path]:
    entries = dict(pair.split("=", 1) for pair in pairs)
    return {entry: Path(path) for entry, path in entries.items()}


def register_cli(subparsers) -> None:
    step = subparsers.add_parser("fidelity-report", help="judge a build's fidelity measurements")
    step.add_argument("--measurement", action="append", required=True, metavar="ENTRY=JSON")
    step.add_argument("--thresholds", type=json.loads, required=True, help='JSON, e.g. {"fp16": 60, "int8": 35}')
    step.add_argument("--out-json", type=Path, required=True)
    step.add_argument("--out-md", type=Path, required=True)
    step.set_defaults(
        func=lambda args: write_report(
            parse_measurements(args.measurement), args.thresholds, args.out_json, args.out_md
        )
    )
