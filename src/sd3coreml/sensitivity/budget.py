"""A recipe from a budget: the pieces' sensitivity records -> curves -> widths -> recipe and report.

The analyses are the MMDiT's pieces, or both text encoders (whose weights' names are qualified by
their entry, and whose recipes are written one per encoder). A budget is one of `bits_per_weight`
(average over the analysed weights), `bytes` (the analysed weights' bytes) or `min_snr_db` (a
floor on the predicted signal-to-noise ratio, summed over the pieces: -10 log10 of the summed
effects). The allocation spans every piece at once
(compress/allocation.py). The report sets the recipe beside what the same records predict for
ml-stable-diffusion's per-layer threshold rule at (nearly) the same bytes and for each uniform
width, and shows, per probe width, how the predicted effect compares with the one measured at
the piece's output.
"""

import json
import math
from pathlib import Path

from sd3coreml.compress.allocation import (
    Budget,
    allocate,
    recipe_of,
    round_curves,
    threshold_at_bytes,
    total_bytes,
    total_effect,
    weight_values,
)
from sd3coreml.compress.settings import BUDGETS, FP16, CompressionSetting
from sd3coreml.contract import TEXT_ENCODERS
from sd3coreml.errors import PipelineError
from sd3coreml.sensitivity.analysis import FORMAT


def parse_budget(text: str) -> Budget:
    """`KIND=VALUE` as a budget setting's `budget_arg` writes it, checked by the setting's own rules."""
    kind, _, value = text.partition("=")
    if kind not in BUDGETS or not value:
        raise PipelineError(f"--budget {text!r}: write KIND=VALUE with KIND one of {', '.join(BUDGETS)}")
    try:
        number = int(value) if BUDGETS[kind].integer else float(value)
    except ValueError:
        raise PipelineError(f"--budget {text!r}: {value!r} is not a number") from None
    _, number = CompressionSetting.budget_setting(kind, number, f"--budget {text!r}").budget
    if kind == "bytes":
        return Budget(total_bytes=number)
    if kind == "bits_per_weight":
        return Budget(bits_per_weight=number)
    return Budget(max_effect=10 ** (-number / 10))


def snr_db(effect: float) -> float | None:
    return None if effect <= 0 else round(-10 * math.log10(effect), 3)


def read_records(paths) -> list[dict]:
    records = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise PipelineError(f"{path}: cannot be read ({error}); rerun its analyse-weights job") from None
        if record.get("format") != FORMAT:
            raise PipelineError(f"{path}: format {record.get('format')!r}, not {FORMAT}; rerun its analyse-weights job")
        records.append(record)
    calibrations = {json.dumps(record["calibration"], sort_keys=True) for record in records}
    if len(calibrations) > 1:
        raise PipelineError("the analyses were made on different calibrations; rerun them on one")
    return records


def curve_name(piece: str, name: str) -> str:
    """A weight's name in one allocation: a text encoder's is qualified by its entry, as both
    encoders name their tensors alike (`TextEncoder2/text_model.encoder.layers.0.mlp.fc1.weight`)."""
    return f"{piece}/{name}" if piece in TEXT_ENCODERS else name


def curves_of(records) -> dict:
    """{weight: {width: (bytes, effect)}}, widths as ints or "fp16"."""
    curves = {}
    for record in records:
        for tensor, weight in record["weights"].items():
            name = curve_name(record["piece"], tensor)
            if name in curves:
                raise PipelineError(f"weight {name} is in two analyses; give each piece once")
            curves[name] = {
                (FP16 if width == FP16 else int(width)): (point["bytes"], point["effect"])
                for width, point in weight["curve"].items()
            }
    if not curves:
        raise PipelineError("the analyses hold no weight large enough to palettize; lower sensitivity.min_values")
    return curves


def summary(curves: dict, widths: dict) -> dict:
    size, effect = total_bytes(curves, widths), total_effect(curves, widths)
    histogram = {}
    for width in widths.values():
        histogram[str(width)] = histogram.get(str(width), 0) + 1
    return {"bytes": size, "bits_per_weight": round(8 * size / weight_values(curves), 4),
            "predicted_effect": effect, "predicted_snr_db": snr_db(effect), "widths": histogram}  # fmt: skip


def prediction_check(records) -> dict:
    """Per probe width: how the predicted effect compares with the measured one, over the weights."""
    pairs = {}
    for record in records:
        for weight in record["weights"].values():
            for width, measured in weight["measured"].items():
                pairs.setdefault(width, []).append((weight["curve"][width]["effect"], measured))
    check = {}
    for width, points in sorted(pairs.items()):
        logs = [(math.log10(p), math.log10(m)) for p, m in points if p > 0 and m > 0]
        ratios = sorted(p / m for p, m in points if m > 0)
        check[width] = {
            "weights": len(points),
            "median_predicted_over_measured": round(ratios[len(ratios) // 2], 4) if ratios else None,
            "log_correlation": round(correlation(logs), 4) if len(logs) > 2 else None,
        }
    return check


def correlation(pairs) -> float:
    n = len(pairs)
    mx, my = math.fsum(x for x, _ in pairs) / n, math.fsum(y for _, y in pairs) / n
    sxy = math.fsum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = math.fsum((x - mx) ** 2 for x, _ in pairs), math.fsum((y - my) ** 2 for _, y in pairs)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 1.0


def recipes_by_piece(widths: dict) -> dict[str, dict]:
    """{text encoder entry, or "" for the transformer: its recipe JSON} of the chosen widths."""
    grouped = {}
    for name, width in widths.items():
        piece, _, tensor = name.partition("/") if name.split("/", 1)[0] in TEXT_ENCODERS else ("", "", name)
        grouped.setdefault(piece, {})[tensor] = width
    return {piece: recipe_of(group) for piece, group in sorted(grouped.items())}


# The rules a recipe's widths may come from: the allocation (the recipe a budget names), or
# ml-stable-diffusion's per-layer threshold rule at the allocation's bytes, to measure against it.
ALLOCATION, PER_LAYER_THRESHOLD = "allocation", "per_layer_threshold"


def recipe_from_budget(analyses, budget_text: str, rule: str = ALLOCATION) -> tuple[dict[str, dict], dict]:
    """({piece: recipe JSON}, report) for the budget over the analyses' weights, allocated over all of
    them at once: one recipe for the transformer's pieces (piece ""), one per text encoder. Under
    `rule` PER_LAYER_THRESHOLD the recipes hold the threshold rule's widths at the allocation's bytes
    (the report's `per_layer_threshold_rule`), the report being the same either way."""
    records = read_records(analyses)
    curves = round_curves(curves_of(records))
    widths = allocate(curves, parse_budget(budget_text))
    chosen = summary(curves, widths)
    threshold, by_threshold = threshold_at_bytes(curves, chosen["bytes"])
    uniform = {str(width): summary(curves, {name: width for name in curves})
               for width in sorted({w for curve in curves.values() for w in curve}, key=str)}  # fmt: skip
    report = {
        "budget": budget_text,
        "weights": len(curves),
        "recipe": chosen,
        "per_layer_threshold_rule": {"threshold": threshold, **summary(curves, by_threshold)},
        "uniform": uniform,
        "prediction_check": prediction_check(records),
        "pieces": sorted(record["piece"] for record in records),
    }
    return recipes_by_piece(by_threshold if rule == PER_LAYER_THRESHOLD else widths), report
