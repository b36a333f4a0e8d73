"""The GUI's label writes make no whole-map copies (issue 13: 512x512x300 CT sessions in 2.5 GB).

A NIfTI-like scan (direction diag(-1, -1, 1)) is shown flipped, so the labels layer holds a
negatively-strided view: ``np.take`` of one of its slices copied the whole label map on every
box; a slice is now a view.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

pytestmark = pytest.mark.gui

MIB = 1 << 20


@pytest.fixture(scope="module")
def win(module_app_window):
    return module_app_window(show=False, install_panels=False)


def test_a_box_written_into_a_flipped_label_map_copies_one_slice_only(win, monkeypatch):
    from medsam_gui.core.volume import Volume
    from medsam_gui.gui import dialogs

    monkeypatch.setattr(dialogs, "ask_unsaved", lambda parent, what: "discard")
    c = win.controller
    arr = np.zeros((60, 256, 256), np.int16)  # labels: 7.5 MiB of uint16
    c.set_volume(Volume(arr, direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), modality="CT"))
    disp = c.display_labels()
    assert not disp.flags.c_contiguous  # flipped for display
    mask = np.zeros(disp.shape[1:], bool)
    mask[100:140, 60:90] = True
    for axis, index in ((0, 30), (0, 31)):
        tracemalloc.start()
        try:
            n = c.write_slice_mask(axis, index, mask, 1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert n == int(mask.sum())
        assert peak < 2 * MIB, f"{peak / MIB:.1f} MiB allocated to write one slice"
        assert np.array_equal(disp[index] == 1, mask)
    src = c.source_labels()
    assert int((src == 1).sum()) == 2 * int(mask.sum())
