"""core.prompts: the slice box of a drawn prompt, key boxes of a propagation, and the saved
state of prompts in the scan's own voxel indices (through a real scan's display orientation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam_gui.core.prompts import (
    Box,
    Prompt,
    box_corners,
    key_boxes,
    prompt_slice_box,
    prompts_from_state,
    prompts_to_state,
    recist_to_box,
)

HIPPO = Path(__file__).resolve().parent / "data" / "msd_hippocampus" / "hippocampus_003_image.nii.gz"


def test_rectangle_on_a_slice_gives_its_bounding_box_clipped():
    # a rectangle drawn on slice 7 along axis 0 of a (20, 30, 40) array, partly outside
    verts = np.array([[7, 5, -3], [7, 5, 12], [7, 35, 12], [7, 35, -3]], float)
    axis, index, box = prompt_slice_box(verts, "box", (20, 30, 40), view_axis=0, recist_margin=5)
    assert (axis, index) == (0, 7)
    assert box.xyxy() == (0.0, 5.0, 12.0, 29.0)


def test_line_on_a_sagittal_slice_becomes_the_recist_square():
    # a line on slice 9 along axis 2: rows = axis 0 (y), columns = axis 1 (x)
    verts = np.array([[4, 10, 9], [12, 16, 9]], float)
    axis, index, box = prompt_slice_box(verts, "recist", (20, 30, 40), view_axis=2, recist_margin=2)
    assert (axis, index) == (2, 9)
    assert box == recist_to_box((10, 4), (16, 12), margin=2).clip(20, 30)
    assert box.width == pytest.approx(10 + 4)


def test_prompt_outside_the_array_is_refused():
    with pytest.raises(ValueError, match="outside the image"):
        prompt_slice_box(np.array([[3, -9, -9], [3, -5, -5]], float), "box", (10, 10, 10), 0, 5)
    with pytest.raises(ValueError, match="outside the scan"):
        prompt_slice_box(np.array([[12, 1, 1], [12, 5, 5]], float), "box", (10, 10, 10), 0, 5)


def test_key_boxes_union_per_slice_of_one_label_and_axis():
    placed = [(0, 4, Box(1, 2, 5, 6), 1), (0, 4, Box(3, 0, 9, 4), 1), (0, 8, Box(0, 0, 2, 2), 1),
              (0, 5, Box(0, 0, 2, 2), 2), (1, 4, Box(0, 0, 2, 2), 1)]
    assert key_boxes(placed, axis=0, label=1) == {4: (1.0, 0.0, 9.0, 6.0), 8: (0.0, 0.0, 2.0, 2.0)}


def test_box_corners_lie_on_the_slice():
    c = box_corners(1, 6, Box(2, 3, 8, 9))  # rows = axis 0, columns = axis 2
    assert np.all(c[:, 1] == 6)
    assert c[:, 2].tolist() == [2, 8, 8, 2] and c[:, 0].tolist() == [3, 3, 9, 9]


def test_state_round_trip_through_a_flipped_scan_orientation():
    from medsam_gui.core.orientation import DisplayOrientation
    from medsam_gui.io import load_volume

    vol = load_volume(HIPPO)
    o = DisplayOrientation.from_direction(vol.direction, vol.shape)
    assert any(o.flips)
    box = Prompt("box", 1, [[12, 10, 8], [12, 10, 20], [12, 30, 20], [12, 30, 8]])
    line = Prompt("recist", 2, [[20, 15, 10], [20, 25, 22]])
    state = prompts_to_state([box, line], lambda v: o.display_to_index(v, vol.shape))
    src = state["shapes"][0]["vertices_zyx"]
    assert src.dtype == np.float64 and src.shape == (4, 3)
    # source voxels: the same slice, rows/columns mirrored
    assert np.all(src[:, 0] == 12) and src[:, 1].max() == vol.shape[1] - 1 - 10
    back = prompts_from_state(state, lambda v: o.index_to_display(v, vol.shape))
    assert [(p.kind, p.label) for p in back] == [("box", 1), ("recist", 2)]
    np.testing.assert_allclose(back[0].vertices, box.vertices)
    np.testing.assert_allclose(back[1].vertices, line.vertices)
    assert prompts_from_state({}, lambda v: v) == [] and prompts_from_state(None, lambda v: v) == []


def test_malformed_saved_prompt_is_refused():
    with pytest.raises(ValueError, match="saved prompt 0"):
        prompts_from_state({"shapes": [{"kind": "circle", "label": 1, "vertices_zyx": np.zeros((2, 3))}]},
                           lambda v: v)
    with pytest.raises(ValueError, match="saved prompt 0"):
        prompts_from_state({"shapes": [{"kind": "box", "label": 1}]}, lambda v: v)
