"""Choosing a palette width per weight from measured curves: where bits buy the most quality per byte.

A curve is one weight's measured cost and effect at each candidate width: `{width: (bytes,
effect)}`, width an nbits of palettes (1, 2, 4, 6, 8) or "fp16", bytes what the weight takes in
the package at that width (indices and palette), effect what compressing it alone costs the
output (a PSNR drop, an error energy: lower is better, additive across weights). Given a
budget (average bits per weight, total bytes, or a ceiling on the summed effect), `allocate`
chooses widths across every weight at once by the Lagrangian rule: on each curve's lower convex
hull, take the upgrades with the largest effect saved per byte first, as long as the budget
holds; then, under a bytes budget, exchanges between weights where a large step passed over is
worth more than the small ones taken (the choice is a knapsack: the rule alone is optimal only
where the budget falls on a hull vertex). `threshold_widths` is ml-stable-diffusion's rule for
comparison: each weight alone gets the fewest bits whose effect stays under a threshold.

Deterministic on any machine: figures are rounded (bytes to integers, effects to 6 significant
digits) before anything is compared, every sum and ratio is IEEE double arithmetic in one fixed
order, and ties go to the weight whose name sorts first. `recipe_of` writes the chosen widths
as a recipe (compress/recipes.py). Pure Python: nothing here measures. 340 weights take a few
seconds.
"""

import heapq
import math
from dataclasses import dataclass

from sd3coreml.compress.recipes import RECIPE_FORMAT
from sd3coreml.compress.settings import FP16, NBITS, PALETTIZE
from sd3coreml.errors import PipelineError

WIDTHS = (*sorted(NBITS[PALETTIZE]), FP16)
EFFECT_DIGITS = 6
# The least gain, relative to the summed effect, for which an exchange is made.
EXCHANGE_GAIN = 1e-9
FP16_BYTES_PER_VALUE = 2


@dataclass(frozen=True)
class Budget:
    """One of: average bits per weight (over the curves' weights), total bytes, or the largest summed effect."""

    bits_per_weight: float | None = None
    total_bytes: int | None = None
    max_effect: float | None = None

    def __post_init__(self):
        given = [value for value in (self.bits_per_weight, self.total_bytes, self.max_effect) if value is not None]
        if len(given) != 1:
            raise PipelineError("budget: give exactly one of bits_per_weight, total_bytes or max_effect")


def rounded(effect: float) -> float:
    return float(f"{effect:.{EFFECT_DIGITS}g}")


def round_curves(curves: dict) -> dict[str, dict]:
    """The curves with bytes as integers and effects to EFFECT_DIGITS significant digits, checked."""
    result = {}
    for name, curve in curves.items():
        if not curve:
            raise PipelineError(f"curve of {name}: no widths measured")
        points = {}
        for width, (size, effect) in curve.items():
            if width not in WIDTHS:
                raise PipelineError(f"curve of {name}: width {width!r} is none of {', '.join(map(str, WIDTHS))}")
            if not (math.isfinite(size) and size > 0 and math.isfinite(effect)):
                raise PipelineError(
                    f"curve of {name}: width {width} has bytes {size} and effect {effect}; measure again"
                )
            points[width] = (round(size), rounded(effect))
        result[name] = points
    return result


def width_order(width) -> int:
    return WIDTHS.index(width)


def hull(curve: dict) -> list:
    """The widths on the curve's lower convex hull in (bytes, effect), fewest bytes first.

    Off the hull a width is never worth its bytes: some mix of its neighbours saves more effect
    per byte (or it costs more bytes for no less effect).
    """
    points = sorted(curve, key=lambda width: (curve[width][0], curve[width][1], width_order(width)))
    frontier = []
    for width in points:
        if frontier and curve[width][1] >= curve[frontier[-1]][1]:
            continue  # no cheaper point has more effect: this one buys nothing
        frontier.append(width)
    convex = []
    for width in frontier:
        while len(convex) >= 2 and slope(curve, convex[-2], convex[-1]) < slope(curve, convex[-1], width):
            convex.pop()
        convex.append(width)
    return convex


def slope(curve: dict, cheaper, dearer) -> float:
    """Effect saved per byte added, going from `cheaper` to `dearer` (more bytes)."""
    (small, worse), (large, better) = curve[cheaper], curve[dearer]
    return (worse - better) / (large - small)


def total_bytes(curves: dict, widths: dict) -> int:
    return sum(curves[name][width][0] for name, width in widths.items())


def total_effect(curves: dict, widths: dict) -> float:
    return math.fsum(curves[name][width][1] for name, width in widths.items())


def weight_values(curves: dict) -> int:
    """How many values the curves' weights hold, from their fp16 bytes."""
    missing = sorted(name for name, curve in curves.items() if FP16 not in curve)
    if missing:
        raise PipelineError(f"curve of {missing[0]}: no fp16 point, so bits per weight are unknown; measure fp16 too")
    return sum(curve[FP16][0] // FP16_BYTES_PER_VALUE for curve in curves.values())


def allocate(curves: dict, budget: Budget) -> dict:
    """{weight: width} spending the budget where it buys the most effect per byte.

    Every weight starts at its hull's cheapest width; upgrades are taken in order of effect saved
    per byte (ties: the name that sorts first). Under a bytes budget an upgrade that does not fit
    is passed over, and that weight stays where it is; under an effect ceiling upgrades stop as
    soon as the summed effect is within it, so the bytes are the fewest this rule reaches.
    """
    curves = round_curves(curves)
    hulls = {name: hull(curve) for name, curve in curves.items()}
    widths = {name: steps[0] for name, steps in hulls.items()}
    limit = budget.total_bytes
    if budget.bits_per_weight is not None:
        limit = math.floor(budget.bits_per_weight * weight_values(curves) / 8)
    if limit is not None and total_bytes(curves, widths) > limit:
        raise PipelineError(
            f"budget of {limit:,} bytes is under the {total_bytes(curves, widths):,} of every weight at its fewest "
            "bytes; raise it"
        )
    spent = total_bytes(curves, widths)
    effect = total_effect(curves, widths)
    ceiling = None if budget.max_effect is None else rounded(budget.max_effect)

    def upgrade(name: str, step: int):
        curve, here, there = curves[name], hulls[name][step - 1], hulls[name][step]
        return (-slope(curve, here, there), name, step)

    queue = [upgrade(name, 1) for name, steps in sorted(hulls.items()) if len(steps) > 1]
    heapq.heapify(queue)
    while queue and (ceiling is None or effect > ceiling):
        _, name, step = heapq.heappop(queue)
        (here, was), (there, now) = curves[name][widths[name]], curves[name][hulls[name][step]]
        if limit is not None and spent + there - here > limit:
            continue
        widths[name], spent, effect = hulls[name][step], spent + there - here, effect - was + now
        if step + 1 < len(hulls[name]):
            heapq.heappush(queue, upgrade(name, step + 1))
    if ceiling is not None and effect > ceiling:
        raise PipelineError(
            f"budget: a summed effect of at most {budget.max_effect} is out of reach (every weight at its best gives "
            f"{total_effect(curves, widths)}); raise it"
        )
    return widths if limit is None else exchange(curves, hulls, widths, limit)


def exchange(curves: dict, hulls: dict, widths: dict, limit: int) -> dict:
    """The greedy choice improved by exchanges, while one lowers the summed effect within `limit`:
    one weight up a hull step, paid for by others down theirs (least effect lost per byte first),
    or one weight down a step, its bytes spent on others' steps up (most effect saved per byte).

    Upgrades in order of slope are optimal only where the budget falls on a hull vertex; between
    them a large upgrade passed over for want of bytes can be worth more than the small ones
    taken instead, or the reverse. Each exchange lowers the summed effect, so this ends; ties go
    to names.
    """
    widths = dict(widths)
    position = {name: hulls[name].index(width) for name, width in widths.items()}

    def step(name: str, index: int, up: bool):
        """(-(effect per byte) up, or effect per byte down; name; bytes; effect; new index) of one step."""
        there = index + 1 if up else index - 1
        if not 0 <= there < len(hulls[name]):
            return None
        (size, effect), (new_size, new_effect) = curves[name][hulls[name][index]], curves[name][hulls[name][there]]
        change = effect - new_effect  # effect saved (up) or, negative, lost (down)
        ratio = change / (new_size - size)
        return (-ratio if up else ratio, name, new_size - size, change, there)

    def completed(name: str, first, spent: int):
        """(gain, {weight: new index}) of the exchanges starting with `first`, a step of `name`:
        opposite steps of the others follow in order of their ratio, each prefix that fits the
        budget a candidate, as is ending with the one opposite step that best completes it."""
        up = first[2] > 0
        gain, spent, moved = first[3], spent + first[2], {name: first[4]}
        queue = [s for other in sorted(widths) if other != name and (s := step(other, position[other], not up))]
        heapq.heapify(queue)
        while queue:
            if spent <= limit:
                yield gain, dict(moved)
            closing = [s for s in queue if spent + s[2] <= limit] if up else []
            if closing:
                _, other, size, change, there = min(closing, key=lambda s: (-s[3], s[1]))
                yield gain + change, {**moved, other: there}
            _, other, size, change, there = heapq.heappop(queue)
            if (spent + size > limit) if not up else (gain + change <= 0):
                continue  # a step up that does not fit, or down that costs all the gain: the next may do
            gain, spent, moved[other] = gain + change, spent + size, there
            successor = step(other, there, not up)
            if successor:
                heapq.heappush(queue, successor)
        if spent <= limit:
            yield gain, dict(moved)

    while True:
        spent = total_bytes(curves, widths)
        # A gain within float rounding of the summed effect is none: exchanging equals cannot cycle.
        best, least = None, EXCHANGE_GAIN * total_effect(curves, widths)
        for name in sorted(widths):
            for up in (True, False):
                first = step(name, position[name], up)
                for gain, moved in completed(name, first, spent) if first else ():
                    if gain > least and (best is None or gain > best[0]):
                        best = (gain, moved)
        if best is None:
            return widths
        for name, index in best[1].items():
            position[name] = index
            widths[name] = hulls[name][index]


def threshold_widths(curves: dict, threshold: float) -> dict:
    """ml-stable-diffusion's per-layer rule: each weight the fewest bytes whose effect is at most `threshold`
    (its dearest width where none is)."""
    curves = round_curves(curves)
    limit, widths = rounded(threshold), {}
    for name, curve in sorted(curves.items()):
        by_bytes = sorted(curve, key=lambda width: (curve[width][0], width_order(width)))
        widths[name] = next((width for width in by_bytes if curve[width][1] <= limit), by_bytes[-1])
    return widths


def threshold_at_bytes(curves: dict, limit: int) -> tuple[float, dict]:
    """The per-layer rule's threshold and widths with the most bytes within `limit`: the rule at
    (nearly) equal bytes, to compare with `allocate`'s."""
    curves = round_curves(curves)
    candidates = sorted({effect for curve in curves.values() for _, effect in curve.values()})
    best = None
    for threshold in candidates:
        widths = threshold_widths(curves, threshold)
        size = total_bytes(curves, widths)
        if size <= limit and (best is None or size > best[0]):
            best = (size, threshold, widths)
    if best is None:
        raise PipelineError(f"the per-layer rule fits no threshold within {limit:,} bytes; raise the limit")
    return best[1], best[2]


def recipe_of(widths: dict, default=FP16) -> dict:
    """The recipe JSON giving each weight its width as palettes per tensor ("fp16" stays fp16)."""
    entries = {
        name: FP16 if width == FP16 else {"nbits": width, "granularity": "per_tensor"}
        for name, width in sorted(widths.items())
    }
    return {"format": RECIPE_FORMAT, "weights": entries, "default": default}
