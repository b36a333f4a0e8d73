"""MedSAM box and RECIST tools in the real window, on a real CT, with a random-weight ViT-B
checkpoint in the official format; and the weights dialog when no weights exist.

One image-encoder pass in this module: the background embedding of the tumour slice, made once
by the module fixture ``embedded`` (which also measures GUI-thread stalls meanwhile, and draws a
box before the embedding is ready). The engine's ``embed`` is wrapped to record its input and
float32 output, so the expected masks are exactly ``MedSAMEngine.segment`` (= decode(embed(slice)))
of the same slice without a second encoder pass. Each test runs on its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.gui

DATA = Path(__file__).resolve().parent / "data"
LUNG = DATA / "lung_ct" / "lung1_image.nrrd"
SRC_SLICE = 33
SRC_BOX = (206, 347, 229, 368)  # x0, y0, x1, y1 (source voxels)
ENCODER_TIMEOUT_MS = 540_000


def _drag(layer, p0_data, p1_data, mode=None, steps=3):
    """Press at p0, drag to p1, release (data coordinates), through napari's mouse callbacks."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    if mode is not None:
        layer.mode = mode
    scale = np.asarray(layer.scale, float)
    w0 = tuple(np.asarray(p0_data, float) * scale)
    w1 = tuple(np.asarray(p1_data, float) * scale)
    disp = [1, 2]
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=w0, dims_displayed=disp))
    for t in np.linspace(0, 1, steps + 1)[1:]:
        wt = tuple(np.asarray(w0) + t * (np.asarray(w1) - np.asarray(w0)))
        mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=wt,
                                                          dims_displayed=disp))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=w1, dims_displayed=disp))


@pytest.fixture(scope="module")
def env(module_app_window, medsam_engine, lung_scan):
    """A window with the MedSAM panel on a one-slice, foreground EmbeddingService and the lung CT;
    the shared engine's ``embed`` records its calls (restored when the module ends)."""
    import torch

    from medsam_gui.gui.embedding_service import EmbeddingService
    from medsam_gui.gui.medsam_panel import install
    from medsam_gui.io import load_volume
    from medsam_gui.models.embedding_cache import EmbeddingCache

    assert lung_scan == LUNG
    torch.set_num_threads(2)
    engine = medsam_engine
    calls = []
    real_embed = engine.embed

    def spy_embed(slices, *args, **kwargs):  # MedSAMEngine.embed(slices, batch_size=None, stop=None)
        out = real_embed(slices, *args, **kwargs)
        for i, slice_hw in enumerate(slices):
            calls.append((np.array(slice_hw, copy=True), out[i:i + 1].clone()))
        return out

    def install_medsam(controller):
        service = EmbeddingService(EmbeddingCache(disk_bytes=0), neighbours=0, prefetch_all=False, background=True)
        return install(controller, service=service)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSAM_GUI_HOME", str(module_app_window.home))  # module set-up (``embedded``) too
        mp.setitem(vars(engine), "embed", spy_embed)  # undone: the instance attribute goes again
        win = module_app_window(show=False, install_panels=False, panels={"medsam": install_medsam})
        c = win.controller
        vol = load_volume(LUNG)
        c.set_volume(vol)
        yield SimpleNamespace(win=win, c=c, panel=win.panels.medsam, engine=engine, calls=calls, vol=vol,
                              state={})
        win.panels.medsam.shutdown()  # no encoder pass of the spy outlives the module


def _display_box(c):
    o = c.orientation
    x0, y0, x1, y1 = SRC_BOX
    d0 = o.index_to_display([SRC_SLICE, y0, x0])
    d1 = o.index_to_display([SRC_SLICE, y1, x1])
    assert round(d0[0]) == round(d1[0])
    z = int(round(d0[0]))
    return z, (min(d0[2], d1[2]), min(d0[1], d1[1]), max(d0[2], d1[2]), max(d0[1], d1[1]))


@pytest.fixture(scope="module")
def embedded(env, request):
    """Load the engine (background embedding of the tumour slice starts) and, before the
    embedding is ready, segment the tumour box for label 1: the mask follows when the encoder is
    done. Records the GUI-thread stalls meanwhile, the embedding and the written mask, then
    undoes the write (the labels are empty again)."""
    from qtpy.QtCore import QTimer
    from pytestqt.qtbot import QtBot

    qtbot = QtBot(request)
    c, panel = env.c, env.panel
    z, box = _display_box(c)
    c.set_view("axial")
    c.set_current_slice(0, z)
    gaps, last = [], [time.perf_counter()]

    def beat():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(beat)
    timer.start()
    started = time.perf_counter()
    panel.set_engine(env.engine)  # starts the background embedding of slice z (neighbours = 0)
    c.set_active_label(1)
    with qtbot.waitSignal(panel.slice_painted, timeout=ENCODER_TIMEOUT_MS) as sig:
        panel.segment_box(0, z, box, 1)
    timer.stop()
    elapsed = time.perf_counter() - started
    assert sig.args == [0, z]
    assert len(env.calls) == 1, "exactly one encoder pass"
    written = np.array(c.display_labels()[z])
    c.undo()
    assert not np.array(c.display_labels()).any()
    h, w = written.shape
    return SimpleNamespace(z=z, box=box, hw=(h, w), emb=env.calls[0][1], slice_u8=env.calls[0][0],
                           written=written, gaps=gaps, elapsed=elapsed)


def test_box_segments_slice_exactly_like_engine_undo_redo(env, embedded, qtbot):
    from medsam_gui.core.intensity import volume_to_uint8

    c, panel, engine = env.c, env.panel, env.engine
    z, (bx0, by0, bx1, by1) = embedded.z, embedded.box
    emb, (h, w) = embedded.emb, embedded.hw
    c.set_view("axial")
    c.set_current_slice(0, z)
    assert c.current_slice(0) == z
    assert c.window_bounds == (-160.0, 240.0)  # CT default 40/400, as displayed
    c.set_labels(np.zeros(env.vol.shape, np.uint16))

    # the box drawn while the encoder ran in the background: the GUI thread kept beating
    max_gap_ms = max(embedded.gaps) * 1000.0
    print(f"\nencoder run {embedded.elapsed:.1f} s; longest GUI-thread gap {max_gap_ms:.0f} ms")
    # a blocking encoder would stall the GUI for the whole pass (tens of seconds); allow CPU contention
    assert len(embedded.gaps) > 10 and max_gap_ms < 3000.0
    # MedSAM saw the display slice with the reference whole-volume windowing
    expected_u8 = c.orientation.to_display(volume_to_uint8(env.vol.array, "CT", (-160.0, 240.0)))[z]
    np.testing.assert_array_equal(embedded.slice_u8, expected_u8)
    np.testing.assert_array_equal(embedded.written == 1, engine.decode(emb, embedded.box, (h, w)))

    # another label's voxels inside the box region (slice z) and on the next slice
    other = np.zeros((h, w), bool)
    other[int(by0):int(by0) + 6, int(bx0):int(bx1) + 1] = True
    c.write_slice_mask(0, z, other, 2)
    c.write_slice_mask(0, z + 1, other, 2)
    c.set_active_label(1)
    before = np.array(c.display_labels())

    panel.activate_box_tool()
    layer = panel.prompts_layer
    assert layer.mode == "add_rectangle"
    with qtbot.waitSignal(panel.slice_painted, timeout=60_000) as sig:
        _drag(layer, (z, by0, bx0), (z, by1, bx1))
    assert sig.args == [0, z]
    assert len(env.calls) == 1, "the cached embedding is reused"
    box = panel.timings[-1]["box"]
    np.testing.assert_allclose(box, (bx0, by0, bx1, by1), atol=1e-3)
    expected = engine.decode(emb, box, (h, w))  # == engine.segment(expected_u8, box)
    assert expected.sum() > 0
    after = np.array(c.display_labels())
    want = before.copy()
    want[z][(before[z] == 0) & expected] = 1
    np.testing.assert_array_equal(after, want)  # exact mask, right slice, others untouched
    assert np.array_equal(after[z] == 2, other), "label 2 voxels preserved"
    # the same in source voxels (through the orientation), at the tumour's place
    src = np.asarray(c.source_labels())
    assert np.unique(np.nonzero(src == 1)[0]).tolist() == [SRC_SLICE]

    c.undo()
    np.testing.assert_array_equal(np.array(c.display_labels()), before)
    c.redo()
    np.testing.assert_array_equal(np.array(c.display_labels()), want)

    # moving the box segments again (cached embedding: no new encoder pass)
    panel.activate_select_tool()
    layer.selected_data = {len(layer.data) - 1}
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    with qtbot.waitSignal(panel.slice_painted, timeout=60_000):
        _drag(layer, (z, cy, cx), (z, cy + 2, cx + 3))
    assert len(env.calls) == 1
    box2 = panel.timings[-1]["box"]
    np.testing.assert_allclose(box2, (bx0 + 3, by0 + 2, bx1 + 3, by1 + 2), atol=1e-3)
    expected2 = engine.decode(emb, box2, (h, w))
    want2 = before.copy()
    want2[z][(before[z] == 0) & expected2] = 1
    np.testing.assert_array_equal(np.array(c.display_labels()), want2)
    t = panel.timings[-1]
    print(f"move: decoder {t['decode_ms']:.0f} ms, paint {t['paint_ms']:.0f} ms, total {t['total_ms']:.0f} ms")
    panel.clear_prompts()


def test_recist_line_becomes_square_box_and_mask(env, embedded, qtbot):
    from medsam_gui.core.prompts import recist_to_box

    c, panel, engine = env.c, env.panel, env.engine
    z, hw, emb = embedded.z, embedded.hw, embedded.emb
    c.set_view("axial")
    c.set_current_slice(0, z)
    c.set_labels(np.zeros(env.vol.shape, np.uint16))
    (bx0, by0, bx1, _by1) = embedded.box
    other = np.zeros(hw, bool)
    other[int(by0):int(by0) + 6, int(bx0):int(bx1) + 1] = True
    c.write_slice_mask(0, z, other, 2)
    c.set_active_label(3)
    panel.recist_margin_spin.setValue(4.0)
    before = np.array(c.display_labels())
    panel.activate_recist_tool()
    layer = panel.prompts_layer
    assert layer.mode == "add_line"
    p0, p1 = (z, 350.0, 208.0), (z, 366.0, 227.0)  # (slice, row, column)
    with qtbot.waitSignal(panel.slice_painted, timeout=60_000):
        _drag(layer, p0, p1)
    assert layer.shape_type[-1] == "line"
    assert len(env.calls) == 1, "the cached embedding is reused"
    box = panel.timings[-1]["box"]
    want_box = recist_to_box((p0[2], p0[1]), (p1[2], p1[1]), margin=4.0).clip(*hw).xyxy()
    np.testing.assert_allclose(box, want_box, atol=1e-3)
    assert abs((box[2] - box[0]) - (box[3] - box[1])) < 1e-6, "square box"
    assert box[2] - box[0] == pytest.approx(np.hypot(19.0, 16.0) + 8.0, abs=1e-3)
    # the square box is drawn around the line, on its slice, below the prompts layer
    boxes = panel.recist_boxes_layer
    assert boxes is not None and len(boxes.data) == 1 and boxes.shape_type[0] == "rectangle"
    corners = np.asarray(boxes.data[0])
    assert np.allclose(corners[:, 0], z)
    np.testing.assert_allclose(corners[:, 2].min(), box[0], atol=1e-3)
    np.testing.assert_allclose(corners[:, 1].min(), box[1], atol=1e-3)
    np.testing.assert_allclose(corners[:, 2].max(), box[2], atol=1e-3)
    np.testing.assert_allclose(corners[:, 1].max(), box[3], atol=1e-3)
    layers = list(c.viewer.layers)
    assert layers.index(boxes) < layers.index(layer) and c.viewer.layers.selection.active is layer
    panel.recist_margin_spin.setValue(6.0)  # a wider margin redraws the box
    corners6 = np.asarray(panel.recist_boxes_layer.data[0])
    assert np.ptp(corners6[:, 2]) == pytest.approx(np.ptp(corners[:, 2]) + 4.0, abs=1e-3)
    panel.recist_margin_spin.setValue(4.0)
    mask = engine.decode(emb, box, hw)
    assert mask.any()
    want = before.copy()
    want[z][(before[z] == 0) & mask] = 3
    np.testing.assert_array_equal(np.array(c.display_labels()), want)
    assert np.array_equal(want[z] == 2, other), "other labels are never overwritten"
    # the overwrite option writes over other labels (one more undoable step)
    panel.overwrite_check.setChecked(True)
    try:
        with qtbot.waitSignal(panel.slice_painted, timeout=60_000):
            panel.segment_box(0, z, box, 3)
        lab = np.array(c.display_labels())
        assert np.array_equal(lab[z] == 3, mask)
        c.undo()
        np.testing.assert_array_equal(np.array(c.display_labels()), want)
    finally:
        panel.overwrite_check.setChecked(False)
        panel.clear_prompts()


@pytest.fixture
def full_window(app_window):
    """The app's own window (every panel, as build_app installs them), no scan; its weights
    dialog is closed at the end (the shared factory closes the window)."""
    win = app_window(show=False)
    yield win
    panel = win.panels.medsam
    if panel is not None:
        panel.shutdown()
        if panel.weights_dialog is not None:
            panel.weights_dialog.close()


def test_missing_weights_dialog_bad_then_good_file(full_window, medsam_checkpoint, qtbot, monkeypatch, tmp_path):
    from qtpy.QtCore import Qt

    from medsam_gui.gui import weights_dialog as wd
    from medsam_gui.io import load_volume
    from medsam_gui.models import weights

    c = full_window.controller
    panel = full_window.panels.medsam  # installed by build_app
    assert "load_medsam_weights" in full_window.actions
    panel.background_check.setChecked(False)  # no encoder pass in this test
    assert weights.resolve("medsam_vit_b") is None
    c.set_volume(load_volume(DATA / "msd_hippocampus" / "hippocampus_003_image.nii.gz"))

    qtbot.mouseClick(panel.box_button, Qt.MouseButton.LeftButton)
    dlg = panel.weights_dialog
    assert dlg is not None and dlg.isVisible()
    text = dlg.info_label.text()
    assert "medsam_vit_b.pth" in text and "zenodo.org" in text and "No MedSAM weights" in text

    bad = tmp_path / "medsam_vit_b.pth"
    bad.write_bytes(b"<html><body>404 Not Found</body></html>")
    monkeypatch.setattr(wd, "ask_weights_file", lambda parent, *a, **k: str(bad))
    with qtbot.waitSignal(dlg.failed, timeout=30_000) as failed:
        qtbot.mouseClick(dlg.choose_button, Qt.MouseButton.LeftButton)
    assert "not a PyTorch weights file" in failed.args[0]
    assert dlg.error_label.isVisible() and "not a PyTorch weights file" in dlg.error_label.text()
    assert dlg.isVisible() and dlg.choose_button.isEnabled()  # the user can try again
    assert weights.resolve("medsam_vit_b") is None

    good = medsam_checkpoint
    monkeypatch.setattr(wd, "ask_weights_file", lambda parent, *a, **k: str(good))
    with qtbot.waitSignal(dlg.weights_ready, timeout=120_000):
        qtbot.mouseClick(dlg.choose_button, Qt.MouseButton.LeftButton)
    assert not dlg.isVisible()
    assert weights.resolve("medsam_vit_b") == Path(good).resolve()  # remembered by the model manager
    qtbot.waitUntil(lambda: panel.engine is not None, timeout=180_000)
    assert panel.service.scheduler is not None and panel.service.scheduler.computed == []

    # the menu action opens the dialog again, showing the file in use
    full_window.actions["load_medsam_weights"].trigger()
    dlg2 = panel.weights_dialog
    assert dlg2 is not dlg and dlg2.isVisible()
    assert str(Path(good).resolve()) in dlg2.info_label.text()
    dlg2.close()


def test_download_failure_keeps_dialog_usable(full_window, qtbot, monkeypatch, tmp_path):
    """A download whose file fails its checksum shows the error; nothing is kept."""
    from qtpy.QtCore import Qt

    from medsam_gui import config
    from medsam_gui.gui.weights_dialog import WeightsDialog
    from medsam_gui.models import weights

    src = tmp_path / "fake.pth"
    src.write_bytes(b"PK\x03\x04 not really weights" * 1000)
    monkeypatch.setenv("MEDSAM_GUI_URL_MEDSAM_VIT_B", src.as_uri())
    dlg = WeightsDialog(full_window.qt_window, "medsam_vit_b", "test")
    dlg.open()
    try:
        with qtbot.waitSignal(dlg.failed, timeout=30_000) as failed:
            qtbot.mouseClick(dlg.download_button, Qt.MouseButton.LeftButton)
        assert "MD5" in failed.args[0]
        assert dlg.isVisible() and dlg.download_button.isEnabled()
        assert weights.resolve("medsam_vit_b") is None
        assert not any(config.weights_dir().iterdir())
    finally:
        dlg.close()
