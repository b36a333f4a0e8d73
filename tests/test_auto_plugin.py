"""The Auto-segment widget of the napari plugin on a plain napari viewer (the reader's layers),
with the stand-in segmenter: run, accept, the result in the viewer's labels layer on the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest

from auto_stand_in import RULES, StandInSegmenter, spec
from medsam_gui.gui.auto_panel import AutoPanel
from medsam_gui.models import auto_models

pytestmark = pytest.mark.gui


def test_napari_plugin_widget(make_napari_viewer, demo_scan, qtbot):
    with auto_models.registered(spec("hermes")):
        _run_and_accept(make_napari_viewer(), demo_scan, qtbot)


def _run_and_accept(viewer, demo_scan, qtbot):
    viewer.open(str(demo_scan), plugin="medsam-gui")
    _, widget = viewer.window.add_plugin_dock_widget("medsam-gui", "Auto-segment")
    assert isinstance(widget, AutoPanel) and widget.controller.volume is not None
    widget.set_segmenter(StandInSegmenter("hermes"))
    widget.set_checked(["dense_bone"])
    with qtbot.waitSignal(widget.run_finished, timeout=20000):
        widget.run()
    c = widget.controller
    _, _, _, lo, hi = RULES["dense_bone"]
    arr = c.volume.array
    dense = c.orientation.to_display((arr >= lo) & (arr < hi))
    k = int(np.argmax(dense.sum(axis=(1, 2))))
    old = c.add_label("drawn before")
    c.write_slice_mask(0, k, dense[k], old.value)
    widget.overwrite_check.setChecked(True)  # the user allows overwriting
    (value,) = widget.accept().values()
    np.testing.assert_array_equal(c.source_labels() == value, (arr >= lo) & (arr < hi))
    assert not (c.source_labels() == old.value).any()
    assert c.labels_layer in viewer.layers and c.label_table[value].name == "Dense bone"
