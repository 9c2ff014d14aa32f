"""The size-quality front of a sweep: the rows no other row beats on both bytes and quality.

A row is on the front when no other row has no more MMDiT weight bytes and no less quality,
with one of the two strictly better. Quality is the end-to-end figure where the sweep measured
one for the row's mode (the final latent against the same chain with fp16 MMDiT stages), else
the lowest stage PSNR.
"""

import math

SIZE = "mmdit_weights_mib"
END_TO_END = "end_to_end_db"
STAGE_QUALITY = "min_psnr_db"


def quality(row: dict) -> float | None:
    """The figure the front ranks a row by: its end-to-end PSNR, else its lowest stage PSNR."""
    for column in (END_TO_END, STAGE_QUALITY):
        value = row.get(column)
        if isinstance(value, int | float) and not math.isnan(value):
            return float(value)
    return None


def dominates(a: dict, b: dict) -> bool:
    qa, qb = quality(a), quality(b)
    no_worse = a[SIZE] <= b[SIZE] and qa >= qb
    return no_worse and (a[SIZE] < b[SIZE] or qa > qb)


def on_front(rows: list[dict]) -> list[bool]:
    """For each row, whether it is on the front (rows without a quality figure are not)."""
    ranked = [row for row in rows if quality(row) is not None]
    return [quality(row) is not None and not any(dominates(other, row) for other in ranked if other is not row)
            for row in rows]  # fmt: skip
