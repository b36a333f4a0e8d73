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
def env(module_app_window, demo_scan, demo_labels):
    """A window with the MedSAM panel on a foreground EmbeddingService and the session manager;
    the demo CT and its liver reference (source grid). Each test sets the scan itself (_fresh)."""
    from medsam_gui.gui import session as gsession
    from medsam_gui.gui.embedding_service import EmbeddingService
    from medsam_gui.gui.medsam_panel import install
    from medsam_gui.io import load_labels, load_volume
    from medsam_gui.models.embedding_cache import EmbeddingCache

    assert (demo_scan, demo_labels) == (SCAN, SEG)

    def install_medsam(controller):
        return install(controller, service=EmbeddingService(EmbeddingCache(disk_bytes=0), neighbours=0,
                                                            background=False))

    win = module_app_window(show=False, install_panels=False,
                            panels={"medsam": install_medsam,
                                    "session": lambda controller: gsession.install(controller, offer=False)})
    vol = load_volume(SCAN)
    ref_src = load_labels(SEG, like=vol) == LIVER
    with module_app_window.home_env():  # the module home for module set-up, as the window had
        yield SimpleNamespace(win=win, c=win.controller, panel=win.panels.medsam, vol=vol, ref_src=ref_src,
                              session=win.panels.session)


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
    assert panel.propagation_box.propagate_button.isEnabled()
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
    panel.propagation_box.from_button.click()
    c.set_current_slice(0, int(zs[-1]) - 2)
    panel.propagation_box.to_button.click()
    limits = (panel.propagation_box.from_spin.value(), panel.propagation_box.to_spin.value())
    assert limits == (int(zs[0]) + 2, int(zs[-1]) - 2)
    before = np.array(c.display_labels())
    with qtbot.waitSignal(panel.propagation_finished, timeout=30_000) as fin:
        panel.propagate()
    assert fin.args == ["done"]
    kinds = {kind for _i, kind, _b in panel.last_propagation}
    assert kinds == {"key", "interpolated", "propagated"}
    expected = np.zeros(ref.shape, np.uint16)
    propagate_to_volume(expected, keys, SimulatedSegmenter(ref, axis=0), LIVER, axis=0, replace=True,
                        limits=limits, margin=panel.propagation_box.margin_spin.value())
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
    assert panel.propagation_box.to_spin.maximum() == ref.shape[2] - 1
    with qtbot.waitSignal(panel.propagation_finished, timeout=30_000) as fin:
        panel.propagate()
    assert fin.args == ["done"]
    expected = np.zeros(ref.shape, np.uint16)
    propagate_to_volume(expected, keys, SimulatedSegmenter(ref, axis=2), LIVER, axis=2, replace=True,
                        margin=panel.propagation_box.margin_spin.value())
    np.testing.assert_array_equal(np.array(c.display_labels()), expected)
    # through the orientation, the result lies on the liver on the source grid
    src = np.asarray(c.source_labels()) == LIVER
    dice = 2 * (src & env.ref_src).sum() / (src.sum() + env.ref_src.sum())
    assert dice > 0.95
    c.set_view("axial")
    panel.clear_prompts()


def _stroke(c, qtbot, at, label, wait_ms=0):
    """A brush stroke of ``label`` on the labels layer from ``at`` ((slice, row, col)) 4 px to the
    right, through napari's mouse callbacks; the press is held ``wait_ms`` (the event loop runs
    meanwhile, as between a user's mouse events)."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    layer = c.labels_layer
    layer.mode = "paint"
    layer.brush_size = 3
    layer.selected_label = label
    scale = np.asarray(layer.scale, float)
    w0 = np.asarray(at, float) * scale
    w1 = (np.asarray(at, float) + (0, 0, 4)) * scale
    ev = dict(dims_displayed=[1, 2], view_direction=(1.0, 0.0, 0.0))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=tuple(w0), **ev))
    if wait_ms:
        qtbot.wait(wait_ms)
    mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=tuple(w1), **ev))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=tuple(w1), **ev))
    layer.mode = "pan_zoom"


def test_propagation_commits_as_it_goes_one_undo_and_strokes_stay_apart(env, qtbot):
    """Each slice reaches the labels (``labels_changed``) while the run goes on; a brush stroke
    made during the run (slices arriving while the mouse is held) is its own undo step; ONE undo
    removes the whole run and leaves the stroke, one redo restores the run."""
    import time

    c, panel, ref = _fresh(env)
    seg = SimulatedSegmenter(ref, axis=0)

    def slow(index, box):
        time.sleep(0.05)
        return seg(index, box)

    panel.set_segmenter(slow)
    k = largest_slice(ref, 0)
    c.set_current_slice(0, k)
    x0, y0, x1, y1 = reference_box(ref, k, 0)
    panel.activate_box_tool()
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        _drag(panel.prompts_layer, (k, y0 - 2, x0 - 2), (k, y1 + 2, x1 + 2))
    before = np.array(c.display_labels())
    seen = []  # liver slices in the labels at each labels_changed during the run

    def count():
        seen.append(int((np.asarray(c.display_labels()) == LIVER).any(axis=(1, 2)).sum()))

    c.labels_changed.connect(count)
    stroke_at = (k, 3, 3)  # a corner of the key slice: no liver there
    try:
        with qtbot.waitSignal(panel.propagation_finished, timeout=60_000) as fin:
            assert panel.propagate() is not None
            qtbot.waitUntil(lambda: len(panel.last_propagation) >= 3, timeout=20_000)
            n_at_press = len(panel.last_propagation)
            # what an autosave writes now (a kill -9 later keeps it): the slices done so far
            snap = env.session.snapshot()
            assert (snap.labels == LIVER).any(axis=(1, 2)).sum() >= n_at_press
            _stroke(c, qtbot, stroke_at, 9, wait_ms=300)  # slices arrive while the mouse is held
            assert panel.propagating
    finally:
        c.labels_changed.disconnect(count)
    assert fin.args == ["done"]
    c.wait_idle(10)
    after = np.array(c.display_labels())
    n = len(panel.last_propagation)
    assert n > n_at_press + 2
    # the labels followed the run: labels_changed with 1, 2, 3, ... liver slices written
    assert len(seen) >= n - 1 and seen[-1] >= n - 1 and len(set(seen)) >= n // 2
    stroke = (after == 9)
    assert stroke[k, :8, :10].sum() > 0 and stroke.sum() == stroke[k, :8, :10].sum()
    # the propagation, without the stroke
    run_only = np.where(after == 9, before, after)
    assert not np.array_equal(run_only, before)

    c.undo()  # the whole run, not the stroke made during it
    np.testing.assert_array_equal(np.array(c.display_labels()), np.where(stroke, 9, before))
    c.redo()
    np.testing.assert_array_equal(np.array(c.display_labels()), after)
    c.undo()
    c.undo()  # then the stroke alone
    np.testing.assert_array_equal(np.array(c.display_labels()), before)
    c.redo()
    np.testing.assert_array_equal(np.array(c.display_labels()), np.where(stroke, 9, before))
    c.redo()
    np.testing.assert_array_equal(np.array(c.display_labels()), after)
    c.set_active_label(LIVER)
    panel.clear_prompts()


def test_run_history_user_edit_over_run_voxels_belongs_to_the_user(env, qtbot):
    """Voxels a stroke paints over a run's slice stay when the run is undone; the run's later
    slices and its earlier ones go with one undo."""
    from medsam_gui.gui.run_history import RunHistory

    c, _panel, ref = _fresh(env)
    k = largest_slice(ref, 0)
    before = np.array(c.display_labels())
    run = RunHistory(c)
    assert run.write(0, k, ref[k], LIVER) > 0
    ys, xs = np.nonzero(ref[k])
    at = (k, int(ys.mean()), int(xs.mean()))  # inside the liver written by the run
    _stroke(c, qtbot, at, 9)
    stroke = np.array(c.display_labels()) == 9
    assert stroke[k].sum() > 0
    assert run.write(0, k + 1, ref[k + 1], LIVER) > 0
    after = np.array(c.display_labels())
    c.undo()
    np.testing.assert_array_equal(np.array(c.display_labels()), np.where(stroke, 9, before))
    c.redo()
    np.testing.assert_array_equal(np.array(c.display_labels()), after)
    c.set_active_label(LIVER)
