"""3D propagation in the real window on a real CT (the demo abdomen, liver = label 5), with the
simulated box segmenter (tests/simulated_segmenter.py) injected instead of MedSAM: live
painting, Cancel keeps exactly the finished slices, the whole run is one undo step, failures
close the undo group too, several key slices (sparse markers), limits, other view axes.
No MedSAM encoder pass here.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from simulated_segmenter import SimulatedSegmenter, largest_slice, reference_box

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parent.parent
SCAN = ROOT / "resources" / "demo" / "example_ct_sm.nii.gz"
SEG = ROOT / "resources" / "demo" / "example_seg.nii.gz"
LIVER = 5


def _drag(layer, p0_data, p1_data, displayed=(1, 2), steps=3):
    """Press at p0, drag to p1, release (data coordinates), through napari's mouse callbacks."""
    from medsam_gui.gui.scripting import drag_on_layer

    drag_on_layer(layer, p0_data, p1_data, displayed=displayed, steps=steps)


@pytest.fixture(scope="module")
def env(qapp, tmp_path_factory):
    from medsam_gui.app import build_app
    from medsam_gui.gui.embedding_service import EmbeddingService
    from medsam_gui.gui.medsam_panel import install
    from medsam_gui.io import load_labels, load_volume
    from medsam_gui.models.embedding_cache import EmbeddingCache

    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSAM_GUI_HOME", str(tmp_path_factory.mktemp("medsam_gui_prop_home")))
    win = build_app(show=False, install_panels=False)
    service = EmbeddingService(EmbeddingCache(disk_bytes=0), neighbours=0, background=False)
    panel = install(win.controller, service=service)
    vol = load_volume(SCAN)
    ref_src = load_labels(SEG, like=vol) == LIVER
    try:
        yield SimpleNamespace(win=win, c=win.controller, panel=panel, vol=vol, ref_src=ref_src)
    finally:
        panel.shutdown()
        win.close(force=True)
        mp.undo()


def _fresh(env, view="axial"):
    c, panel = env.c, env.panel
    c.set_volume(env.vol)
    c.set_view(view)
    c.set_active_label(LIVER)
    ref = np.ascontiguousarray(c.orientation.to_display(env.ref_src))
    return c, panel, ref


def test_recist_propagate_cancel_half_way_then_one_undo(env, qtbot):
    from medsam_gui.core.measurements import recist_axes
    from medsam_gui.core.propagation import propagate

    c, panel, ref = _fresh(env)
    seg = SimulatedSegmenter(ref, axis=0, noise_px=1.0, seed=0)
    panel.set_segmenter(seg)
    k = largest_slice(ref, 0)
    c.set_current_slice(0, k)
    # RECIST long axis of the liver on slice k, as a radiologist would draw it
    _, (pa, pb), _, _ = recist_axes(ref[k], (3.0, 3.0))
    panel.activate_recist_tool()
    layer = panel.prompts_layer
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        _drag(layer, (k, pa[1], pa[0]), (k, pb[1], pb[0]))
    keys = panel.key_boxes()
    assert list(keys) == [k]
    before = np.array(c.display_labels())
    assert np.array_equal(before[k] == LIVER, seg(k, keys[k]))

    # the full run would paint many slices; cancel after N
    full = [r.index for r in propagate(ref.shape, keys, SimulatedSegmenter(ref, 0, noise_px=1.0, seed=0), axis=0)]
    assert len(full) >= 20
    n_stop = 6
    painted = []

    def on_painted(axis, index):
        painted.append(index)
        if len(painted) == n_stop:
            panel.cancel_propagation()

    panel.slice_painted.connect(on_painted)
    try:
        with qtbot.waitSignal(panel.propagation_finished, timeout=30_000) as fin:
            handle = panel.propagate()
            assert handle is not None
            assert env.win.progress_bar.isVisibleTo(env.win.qt_window)  # progress bar + Cancel in the status bar
        c.wait_idle(10)
    finally:
        panel.slice_painted.disconnect(on_painted)
    assert fin.args == ["cancelled"]
    assert len(painted) == n_stop and len(panel.last_propagation) == n_stop
    assert [i for i, _k, _b in panel.last_propagation] == painted == full[:n_stop]
    after = np.array(c.display_labels())
    want = before.copy()
    check = SimulatedSegmenter(ref, axis=0, noise_px=1.0, seed=0)
    for index, _kind, box in panel.last_propagation:
        want[index] = np.where(check(index, box), LIVER, 0)
    np.testing.assert_array_equal(after, want)  # exactly the finished slices
    assert set(np.flatnonzero((after == LIVER).any(axis=(1, 2)))) == set(painted)

    # the group is closed: a later edit is its own undo step
    extra = np.zeros(after.shape[1:], bool)
    extra[:3, :3] = True
    c.write_slice_mask(0, 0, extra, 7)
    c.undo()
    np.testing.assert_array_equal(np.array(c.display_labels()), after)
    c.undo()  # ONE undo removes the whole propagation
    np.testing.assert_array_equal(np.array(c.display_labels()), before)
    c.redo()
    np.testing.assert_array_equal(np.array(c.display_labels()), after)
    assert panel.propagate_button.isEnabled()
    panel.clear_prompts()


def test_two_key_boxes_limits_match_core_and_failure_closes_group(env, qtbot):
    from medsam_gui.core.propagation import propagate_to_volume

    c, panel, ref = _fresh(env)
    seg = SimulatedSegmenter(ref, axis=0)
    panel.set_segmenter(seg)
    k = largest_slice(ref, 0)
    zs = np.flatnonzero(ref.any(axis=(1, 2)))
    ka, kb = k - 4, k + 3
    panel.activate_box_tool()
    layer = panel.prompts_layer
    for kk in (ka, kb):
        x0, y0, x1, y1 = reference_box(ref, kk, 0)
        c.set_current_slice(0, kk)
        with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
            _drag(layer, (kk, y0 - 2, x0 - 2), (kk, y1 + 2, x1 + 2))
    keys = panel.key_boxes()
    assert sorted(keys) == [ka, kb]
    # limits from the current slice
    c.set_current_slice(0, int(zs[0]) + 2)
    panel.from_button.click()
    c.set_current_slice(0, int(zs[-1]) - 2)
    panel.to_button.click()
    limits = (panel.from_spin.value(), panel.to_spin.value())
    assert limits == (int(zs[0]) + 2, int(zs[-1]) - 2)
    before = np.array(c.display_labels())
    with qtbot.waitSignal(panel.propagation_finished, timeout=30_000) as fin:
        panel.propagate()
    assert fin.args == ["done"]
    kinds = {kind for _i, kind, _b in panel.last_propagation}
    assert kinds == {"key", "interpolated", "propagated"}
    expected = np.zeros(ref.shape, np.uint16)
    propagate_to_volume(expected, keys, SimulatedSegmenter(ref, axis=0), LIVER, axis=0, replace=True,
                        limits=limits, margin=panel.prop_margin_spin.value())
    np.testing.assert_array_equal(np.array(c.display_labels()), expected)
    painted = np.flatnonzero((expected == LIVER).any(axis=(1, 2)))
    assert painted.min() >= limits[0] and painted.max() <= limits[1]
    c.undo()
    np.testing.assert_array_equal(np.array(c.display_labels()), before)

    # a segmenter failing half-way: the error is shown, what was done stays, one undo step
    calls = {"n": 0}

    def flaky(index, box):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("simulated model failure")
        return seg(index, box)

    panel.set_segmenter(flaky)
    with qtbot.waitSignal(panel.propagation_finished, timeout=30_000) as fin:
        panel.propagate()
    assert fin.args == ["failed"]
    assert "simulated model failure" in (c.last_error or "")
    assert 2 <= len(panel.last_propagation) <= 5  # the slices finished before the failure
    mid = np.array(c.display_labels())
    assert not np.array_equal(mid, before)
    c.undo()
    np.testing.assert_array_equal(np.array(c.display_labels()), before)
    panel.clear_prompts()


def test_propagation_along_sagittal_axis(env, qtbot):
    from medsam_gui.core.propagation import propagate_to_volume

    c, panel, ref = _fresh(env, view="sagittal")
    assert c.view_axis == 2
    seg = SimulatedSegmenter(ref, axis=2)
    panel.set_segmenter(seg)
    k = largest_slice(ref, 2)
    c.set_current_slice(2, k)
    x0, y0, x1, y1 = reference_box(ref, k, 2)  # x = display axis 1, y = display axis 0
    panel.activate_box_tool()
    layer = panel.prompts_layer
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000) as sig:
        _drag(layer, (y0 - 1, x0 - 1, k), (y1 + 1, x1 + 1, k), displayed=(0, 1))
    assert sig.args == [2, k]
    keys = panel.key_boxes()
    assert list(keys) == [k]
    h, w = ref.shape[0], ref.shape[1]  # the sagittal slice: rows = display axis 0, columns = axis 1
    want_box = (max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, w - 1), min(y1 + 1, h - 1))  # clipped
    np.testing.assert_allclose(keys[k], want_box, atol=1e-4)
    assert panel.to_spin.maximum() == ref.shape[2] - 1
    with qtbot.waitSignal(panel.propagation_finished, timeout=30_000) as fin:
        panel.propagate()
    assert fin.args == ["done"]
    expected = np.zeros(ref.shape, np.uint16)
    propagate_to_volume(expected, keys, SimulatedSegmenter(ref, axis=2), LIVER, axis=2, replace=True,
                        margin=panel.prop_margin_spin.value())
    np.testing.assert_array_equal(np.array(c.display_labels()), expected)
    # through the orientation, the result lies on the liver on the source grid
    src = np.asarray(c.source_labels()) == LIVER
    dice = 2 * (src & env.ref_src).sum() / (src.sum() + env.ref_src.sum())
    assert dice > 0.95
    c.set_view("axial")
    panel.clear_prompts()
