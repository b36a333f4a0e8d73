import math

import pytest

from medsam_gui.core.prompts import Box, recist_to_box


def test_box_normalises_corner_order():
    b = Box(30, 40, 10, 5)
    assert b.xyxy() == (10.0, 5.0, 30.0, 40.0)
    assert b.width == 20 and b.height == 35
    assert b.center == (20.0, 22.5)


def test_box_clip_to_slice():
    # slice of h=52 rows, w=34 columns: x in 0..33, y in 0..51
    b = Box(-5, 10, 40, 60).clip(52, 34)
    assert b.xyxy() == (0.0, 10.0, 33.0, 51.0)
    inside = Box(3, 4, 5, 6)
    assert inside.clip(52, 34) == inside


def test_box_rejects_nan_and_bad_length():
    with pytest.raises(ValueError):
        Box(float("nan"), 0, 1, 1)
    with pytest.raises(ValueError):
        Box.from_xyxy([1, 2, 3])
    assert Box.from_xyxy([1, 2, 3, 4]).xyxy() == (1, 2, 3, 4)


def test_degenerate_and_expand():
    assert Box(3, 3, 3, 9).is_empty()
    assert not Box(3, 3, 4, 9).is_empty()
    assert Box(3, 3, 4, 9).expand(2).xyxy() == (1, 1, 6, 11)


def test_recist_horizontal_line():
    b = recist_to_box((10, 20), (30, 20), margin=5)
    # length 20 -> side 30, centred on (20, 20)
    assert b.xyxy() == (5.0, 5.0, 35.0, 35.0)


def test_recist_diagonal_is_square_and_contains_line():
    p0, p1 = (100.0, 50.0), (130.0, 90.0)  # length 50
    b = recist_to_box(p0, p1, margin=3)
    assert math.isclose(b.width, 56.0) and math.isclose(b.height, 56.0)
    assert b.center == (115.0, 70.0)
    for x, y in (p0, p1):
        assert b.x0 <= x <= b.x1 and b.y0 <= y <= b.y1


def test_recist_order_independent_and_margin_checked():
    assert recist_to_box((1, 2), (7, 10)) == recist_to_box((7, 10), (1, 2))
    assert recist_to_box((1, 2), (7, 10), margin=0).width == pytest.approx(10.0)
    with pytest.raises(ValueError):
        recist_to_box((0, 0), (1, 1), margin=-1)
