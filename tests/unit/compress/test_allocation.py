"""The allocator spends bits where they buy the most quality per byte; the per-layer threshold rule beside it."""

import random

import pytest

from sd3coreml.compress.allocation import (
    Budget,
    allocate,
    hull,
    recipe_of,
    round_curves,
    threshold_at_bytes,
    threshold_widths,
    total_bytes,
    total_effect,
)
from sd3coreml.compress.recipes import Recipe
from sd3coreml.errors import PipelineError

WIDTHS = (1, 2, 4, 6, 8, "fp16")
BITS = {1: 1, 2: 2, 4: 4, 6: 6, 8: 8, "fp16": 16}
VALUES = 1_000_000


def curve(sensitivity: float, values: int = VALUES) -> dict:
    """A palette curve shaped like measured ones: bytes grow with the width (plus a palette), the
    error falls by about 4x per bit, none at fp16."""
    points = {}
    for width in WIDTHS:
        size = values * BITS[width] // 8 + (0 if width == "fp16" else 2 * 2 ** BITS[width])
        points[width] = (size, 0.0 if width == "fp16" else sensitivity * 4.0 ** -BITS[width])
    return points


def peers(count: int, sensitivity: float = 1.0) -> dict:
    return {f"transformer_blocks.{index}.attn.to_q.weight": curve(sensitivity) for index in range(count)}


def step(width) -> int:
    return WIDTHS.index(width)


def test_a_planted_sensitive_weight_gets_more_bits_than_its_peers():
    curves = peers(8)
    planted = "transformer_blocks.3.attn.to_q.weight"
    curves[planted] = curve(1000.0)  # outlier rows: a much steeper curve
    widths = allocate(curves, Budget(bits_per_weight=4))
    others = {width for name, width in widths.items() if name != planted}
    assert all(step(widths[planted]) > step(width) for width in others)
    assert max(map(step, others)) - min(map(step, others)) <= 1


def test_weights_of_equal_curves_get_widths_within_one_step_and_the_budget_holds():
    curves = peers(10)
    for bits in (1.5, 2.7, 4.0, 5.3, 7.9):
        widths = allocate(curves, Budget(bits_per_weight=bits))
        assert max(map(step, widths.values())) - min(map(step, widths.values())) <= 1
        assert total_bytes(curves, widths) <= bits * 10 * VALUES / 8
    limit = 10 * curve(1.0)[4][0] + 3 * (curve(1.0)[6][0] - curve(1.0)[4][0])
    assert total_bytes(curves, allocate(curves, Budget(total_bytes=limit))) == limit


def test_ties_break_by_name_whatever_the_order_given():
    names = ["b.weight", "a.weight", "c.weight"]
    one_upgrade = 3 * curve(1.0)[1][0] + (curve(1.0)[2][0] - curve(1.0)[1][0])
    results = []
    for order in (names, sorted(names), list(reversed(names))):
        curves = {name: curve(1.0) for name in order}
        results.append(allocate(curves, Budget(total_bytes=one_upgrade)))
    assert results[0] == results[1] == results[2] == {"a.weight": 2, "b.weight": 1, "c.weight": 1}


def test_figures_are_rounded_before_allocating():
    curves = {"a.weight": curve(1.0), "b.weight": curve(1.0)}
    # A difference far below the rounding must not decide the tie: the name does.
    curves["b.weight"] = {width: (size, effect * (1 + 1e-12)) for width, (size, effect) in curves["b.weight"].items()}
    budget = Budget(total_bytes=2 * curve(1.0)[1][0] + curve(1.0)[2][0] - curve(1.0)[1][0])
    assert allocate(curves, budget) == {"a.weight": 2, "b.weight": 1}


def test_mixed_sensitivities_give_a_recipe_unlike_every_uniform_mode():
    rng = random.Random(0)
    curves = {f"w{index:02d}.weight": curve(10 ** rng.uniform(-1, 3)) for index in range(12)}
    budget = 12 * curve(1.0)[4][0]  # the bytes of uniform 4-bit palettes
    widths = allocate(curves, Budget(total_bytes=budget))
    assert total_bytes(curves, widths) <= budget
    assert all(set(widths.values()) != {width} for width in WIDTHS)
    uniform = {name: 4 for name in curves}
    assert total_effect(curves, widths) < total_effect(curves, uniform) / 2


def test_a_quality_ceiling_takes_the_fewest_bytes_this_rule_reaches():
    curves = {**peers(3), "x.weight": curve(100.0)}
    ceiling = 0.01
    widths = allocate(curves, Budget(max_effect=ceiling))
    assert total_effect(curves, widths) <= ceiling
    assert step(widths["x.weight"]) > max(step(widths[name]) for name in curves if name != "x.weight")
    with pytest.raises(PipelineError, match="out of reach"):
        allocate({"a.weight": {1: (10, 1.0), 2: (20, 0.5)}}, Budget(max_effect=0.1))


def test_widths_off_the_convex_hull_are_never_chosen():
    # 2 bits buys almost nothing over 1 bit and costs bytes; 4 bits buys a lot: 2 is off the hull.
    bumpy = {1: (100, 10.0), 2: (200, 9.9), 4: (400, 1.0), "fp16": (1600, 0.0)}
    assert hull(round_curves({"w": bumpy})["w"]) == [1, 4, "fp16"]
    # A dearer width with no less effect is off it too.
    assert hull(round_curves({"w": {1: (100, 1.0), 2: (200, 1.0)}})["w"]) == [1]


def test_the_per_layer_threshold_rule_gives_each_weight_its_fewest_bits_under_the_threshold():
    curves = {"calm.weight": curve(1.0), "touchy.weight": curve(1000.0)}
    threshold = 0.01
    widths = threshold_widths(curves, threshold)
    # calm: 4**-4 = 0.0039 first under 0.01 at 4 bits; touchy: 1000 * 4**-8 = 0.015 is over, so fp16.
    assert widths == {"calm.weight": 4, "touchy.weight": "fp16"}
    for name, width in widths.items():
        cheaper = [w for w in WIDTHS[: step(width)]]
        assert all(curves[name][w][1] > threshold for w in cheaper)


def test_at_equal_bytes_the_allocator_does_no_worse_than_the_threshold_rule_on_mixed_weights():
    # A knapsack: neither rule is optimal everywhere; on measured-like mixes of sizes and
    # sensitivities the allocator's exchanges keep it at or under the rule's summed effect.
    for seed in range(4):
        rng = random.Random(seed)
        curves = {f"w{index:02d}": curve(10 ** rng.uniform(-2, 4), VALUES * rng.choice((1, 4))) for index in range(16)}
        for width in (2, 6):
            _, by_threshold = threshold_at_bytes(curves, total_bytes(curves, {name: width for name in curves}))
            allocated = allocate(curves, Budget(total_bytes=total_bytes(curves, by_threshold)))
            assert total_bytes(curves, allocated) <= total_bytes(curves, by_threshold)
            assert total_effect(curves, allocated) <= total_effect(curves, by_threshold) * (1 + 1e-9)


def test_the_allocation_is_written_as_a_recipe():
    curves = {**peers(2), "x.weight": curve(1e6)}
    widths = allocate(curves, Budget(bits_per_weight=3))
    recipe = Recipe.from_json(recipe_of(widths), "allocated.json")
    assert {name: setting.nbits or "fp16" for name, setting in recipe.weights} == widths
    assert {setting.granularity for _, setting in recipe.weights if setting.nbits} == {"per_tensor"}
    assert recipe.default.mode == "none"
    assert Recipe.from_json(recipe_of(dict(reversed(widths.items()))), "again.json").slug == recipe.slug


def test_bad_curves_and_budgets_are_refused():
    with pytest.raises(PipelineError, match="width 3 is none of"):
        allocate({"a.weight": {3: (10, 1.0)}}, Budget(total_bytes=100))
    with pytest.raises(PipelineError, match="under the 125,004 of every weight"):
        allocate({"a.weight": curve(1.0)}, Budget(total_bytes=1000))
    with pytest.raises(PipelineError, match="no fp16 point"):
        allocate({"a.weight": {1: (10, 1.0)}}, Budget(bits_per_weight=2))
    with pytest.raises(PipelineError, match="exactly one of"):
        Budget(bits_per_weight=2, total_bytes=10)
