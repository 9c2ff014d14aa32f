"""The size-quality front: rows no other row beats on MMDiT bytes and quality at once."""

from sd3coreml.sweep.front import on_front, quality


def row(size, end_to_end="", stage=30.0):
    return {"mmdit_weights_mib": size, "end_to_end_db": end_to_end, "min_psnr_db": stage}


def test_a_row_beaten_on_both_bytes_and_quality_is_off_the_front():
    rows = [row(10, 40.0), row(5, 35.0), row(12, 39.0), row(5, 34.0), row(20, 50.0)]
    assert on_front(rows) == [True, True, False, False, True]


def test_equal_rows_both_stay_and_a_row_equal_on_one_axis_and_worse_on_the_other_goes():
    assert on_front([row(10, 40.0), row(10, 40.0), row(10, 39.0)]) == [True, True, False]


def test_quality_is_end_to_end_where_measured_else_the_lowest_stage_psnr():
    assert quality(row(1, 41.5, stage=30.0)) == 41.5
    assert quality(row(1, "", stage=30.0)) == 30.0
    assert on_front([row(1, "", stage=float("nan")), row(2, 30.0)]) == [False, True]
