"""MedSAM prompts (a box and a RECIST line) are saved in a session folder and come back on the
same slices when the session is opened again (the scan is read again from its file). The saved
vertices are the scan's own (z, y, x) voxel indices. A box-filling segmenter stands in for
MedSAM: no encoder pass here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from box_filler import box_filler

pytestmark = pytest.mark.gui

SCAN = Path(__file__).resolve().parent / "data" / "msd_hippocampus" / "hippocampus_003_image.nii.gz"


def test_box_and_recist_line_survive_a_session_round_trip(app_window, qtbot, tmp_path, monkeypatch):
    from medsam_gui.gui import session as gsession
    from medsam_gui.gui import session_files
    from medsam_gui.gui.embedding_service import EmbeddingService
    from medsam_gui.gui.medsam_panel import STATE_NAME, install
    from medsam_gui.gui.scripting import drag_on_layer
    from medsam_gui.io import load_volume
    from medsam_gui.models.embedding_cache import EmbeddingCache

    monkeypatch.setenv("MEDSAM_GUI_HOME", str(tmp_path / "home"))
    win = app_window(show=False, install_panels=False, panels={
        "medsam": lambda c: install(c, service=EmbeddingService(EmbeddingCache(disk_bytes=0), background=False)),
        "session": lambda c: gsession.install(c, offer=False)})
    c = win.controller
    panel, mgr = win.panels.medsam, win.panels.session
    assert STATE_NAME in c.state_providers
    vol = load_volume(SCAN)
    c.set_volume(vol)
    o = c.orientation
    assert any(o.flips), "display and source voxels differ on this scan"
    d, h, w = c.display_labels().shape
    panel.set_segmenter(box_filler((h, w)))
    zb, zr = 12, 20
    c.set_active_label(1)
    c.set_current_slice(0, zb)
    panel.activate_box_tool()
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        drag_on_layer(panel.prompts_layer, (zb, 10, 8), (zb, 30, 20))
    c.set_active_label(2)
    c.set_current_slice(0, zr)
    panel.activate_recist_tool()
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        drag_on_layer(panel.prompts_layer, (zr, 15, 10), (zr, 25, 22))
    layer = panel.prompts_layer
    shapes = list(layer.shape_type)
    verts = [np.asarray(v).copy() for v in layer.data]
    labels = np.asarray(layer.features["label"]).tolist()
    assert shapes == ["rectangle", "line"] and labels == [1, 2]
    keys1, keys2 = panel.key_boxes(0, 1), panel.key_boxes(0, 2)
    assert list(keys1) == [zb] and list(keys2) == [zr]
    painted = np.array(c.display_labels())
    pb = panel.propagation_box
    pb.from_spin.setValue(5)
    pb.to_spin.setValue(27)

    # the provider's state: source voxel vertices
    state = panel.get_state()
    assert [s["kind"] for s in state["shapes"]] == ["box", "recist"]
    for s, v in zip(state["shapes"], verts):
        np.testing.assert_allclose(s["vertices_zyx"], o.display_to_index(v, vol.shape))
    assert (state["range_axis"], state["range_first"], state["range_last"]) == (0, 5, 27)  # z not flipped
    src_box = state["shapes"][0]["vertices_zyx"]
    assert not np.allclose(src_box, verts[0])  # flipped rows/columns

    path = tmp_path / "prompts.medsamsession"
    session_files.save_session_as(mgr, path)
    c.wait_idle(30)
    assert path.exists()

    # the scan is shown again from scratch: the prompts go, the range is the whole scan
    c.set_volume(load_volume(SCAN))
    assert not panel.prompts.exists and (pb.from_spin.value(), pb.to_spin.value()) == (0, d - 1)
    session_files.open_session(mgr, path)
    c.wait_idle(60)
    qtbot.waitUntil(lambda: panel.prompts.exists and len(panel.prompts_layer.data) == 2, timeout=30_000)
    layer = panel.prompts_layer
    assert list(layer.shape_type) == shapes
    assert np.asarray(layer.features["label"]).tolist() == labels
    for got, want in zip(layer.data, verts):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-9)
    assert panel.key_boxes(0, 1) == keys1 and panel.key_boxes(0, 2) == keys2
    assert (pb.from_spin.value(), pb.to_spin.value()) == (5, 27)
    pids = np.asarray(layer.features["pid"]).tolist()
    assert min(pids) > 0 and len(set(pids)) == 2
    # the RECIST square box is drawn again; nothing was segmented again (labels as saved)
    assert len(panel.recist_boxes_layer.data) == 1
    np.testing.assert_array_equal(np.array(c.display_labels()), painted)
    assert mgr.snapshot().extra["providers"][STATE_NAME]["state"]
