"""SlicePresence (core/slice_presence.py): the labeled slices of a label map, kept current from
the edited slices, against a full scan after every edit (real liver labels of the demo CT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsam_gui.core.orientation import plane
from medsam_gui.core.slice_presence import SlicePresence
from medsam_gui.core.support_set import labeled_slices

SEG = Path(__file__).resolve().parents[1] / "resources" / "demo" / "example_seg.nii.gz"
LIVER = 5


def test_follows_slice_edits_and_rescans_after_other_edits():
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SEG))).astype(np.uint16)
    liver = labels == LIVER
    presence = SlicePresence()
    rng = np.random.default_rng(0)
    asked = [(LIVER, 0), (LIVER, 1), (1, 0)]
    for value, axis in asked:
        assert presence.slices(labels, value, axis) == labeled_slices(labels, value, axis)
    for step in range(12):
        axis = int(rng.integers(0, 3)) if step % 4 == 3 else 0
        index = int(rng.integers(0, labels.shape[axis]))
        view = plane(labels, index, axis)
        if step % 2:
            view[view == LIVER] = 0  # the liver leaves this slice
        else:
            view[plane(liver, (index + 7) % labels.shape[axis], axis)] = LIVER  # and comes to it
        presence.changed((axis, index))
        for value, axis_asked in asked:
            assert presence.slices(labels, value, axis_asked) == labeled_slices(labels, value, axis_asked), step
    labels[:] = 0  # an edit it is not told the place of
    presence.changed(None)
    assert presence.slices(labels, LIVER, 0) == []
    other = labels.copy()
    other[3, 0, 0] = LIVER  # another array: looked at afresh
    assert presence.slices(other, LIVER, 0) == [3]
