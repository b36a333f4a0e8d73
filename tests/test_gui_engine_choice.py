"""The MedSAM dock's engine choice with LiteMedSAM installed (golden-rule weights in the official
``lite_medsam.pth`` layout) on a real 3-slice CT: LiteMedSAM is the default without CUDA, the
whole scan is embedded in the background with an "Embedded N / M slices" status, a box gives
exactly the engine's mask (a box drawn with the mouse is decoded while it is drawn and its mask is
ready on release), switching the view does not start embedding another axis, and
choosing MedSAM ViT-B without its weights opens their dialog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam_gui.models.box_engines import BOX_ENGINES, default_box_engine

import litemedsam_helpers

pytestmark = pytest.mark.gui

DATA = Path(__file__).resolve().parent / "data" / "dcmqi_ct3slice_liver"


def test_default_engine_rule():
    installed = {"litemedsam"}
    calls = []

    def cuda(answer):
        def ask():
            calls.append(answer)
            return answer
        return ask

    assert default_box_engine(cuda=cuda(False), installed=installed.__contains__) == "litemedsam"
    assert default_box_engine(cuda=cuda(True), installed=installed.__contains__) == "medsam"
    assert default_box_engine(cuda=cuda(False), installed=set().__contains__) == "medsam"
    assert calls == [False, True]  # CUDA is not asked about when LiteMedSAM is not installed
    assert [i.choice_text for i in BOX_ENGINES.values()] == ["MedSAM ViT-B: most accurate", "LiteMedSAM: fastest"]


def test_litemedsam_default_whole_scan_box_and_engine_switch(app_window, qtbot, monkeypatch):
    import torch

    from medsam_gui.gui import slice_segmentation

    from medsam_gui.io import load_volume
    from medsam_gui.models import weights as manager

    assert not torch.cuda.is_available()
    manager.import_weights("litemedsam", litemedsam_helpers.golden_checkpoint())
    win = app_window(str(DATA / "ct_3slice.nrrd"), show=False)
    c, panel = win.controller, win.panels.medsam
    assert panel.engine_name == "litemedsam"
    assert panel.model_box.engine_combo.currentText() == "LiteMedSAM: fastest"
    assert panel.model_box.weights_button.text() == "Load LiteMedSAM weights…"
    assert panel.prefetch_all_check.isChecked()  # LiteMedSAM embeds the whole scan
    qtbot.waitUntil(lambda: panel.engine is not None, timeout=120_000)
    assert panel.engine.name == "litemedsam"
    assert panel.model_label.text().startswith("LiteMedSAM ready on cpu")

    # the whole scan is embedded in the background, and the dock says so
    qtbot.waitUntil(lambda: panel.service.embedding_progress().done == 3, timeout=120_000)
    qtbot.waitUntil(lambda: "Embedded 3 / 3 slices" in panel.embed_label.text(), timeout=10_000)
    assert "Axial slice" in panel.embed_label.text()

    # a box on the liver gives exactly LiteMedSAM's mask of that slice
    label = c.orientation.to_display(np.asarray(load_volume(DATA / "liver1_spine2_label.nrrd").array))
    z = 1
    ys, xs = np.nonzero(label[z] == 1)
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    c.set_current_slice(0, z)
    c.set_active_label(1)
    with qtbot.waitSignal(panel.slice_painted, timeout=60_000) as sig:
        panel.segment_box(0, z, box, 1)
    assert sig.args == [0, z]
    written = np.asarray(c.display_labels())[z] == 1
    expected = panel.engine.decode(panel.service.cached(z), box, written.shape)
    np.testing.assert_array_equal(written, expected)
    assert written.sum() > 0

    # a box drawn with the mouse is decoded while it is drawn: on release its mask is ready (the
    # GUI thread's wait for it given ample time here, so that a busy machine cannot defer it)
    monkeypatch.setattr(slice_segmentation, "WAIT_FOR_MASK_S", 30.0)
    panel.activate_box_tool()
    layer = panel.prompts_layer
    drawn = _press_and_move(layer, (z, box[1] + 3, box[0] + 3), (z, box[3] - 2, box[2] - 4), qtbot)
    _axis, _z, final_box, _kind, _label = panel.prompts.geometry(drawn)
    qtbot.waitUntil(lambda: panel.service.decoded_ahead[-1:] == [(z, final_box)], timeout=30_000)
    painted = []
    panel.slice_painted.connect(lambda *a: painted.append(a))
    _release(layer, (z, box[3] - 2, box[2] - 4))
    assert painted == [(0, z)]  # painted while the release was handled
    assert panel.timings[-1]["box"] == final_box and panel.timings[-1]["decode_ms"] == 0.0  # not decoded again
    now = np.asarray(c.display_labels())[z] == 1
    np.testing.assert_array_equal(now, written | panel.engine.decode(panel.service.cached(z), final_box, written.shape))
    assert (now & ~written).any()  # the new box added pixels

    # given time, the GUI thread waits for a box's mask: painted before segment_box returns, once
    n, painted[:] = len(panel.timings), []
    shifted = (box[0] + 5, box[1] + 5, box[2] + 5, box[3] + 5)
    panel.segment_box(0, z, shifted, 1)
    assert painted == [(0, z)] and panel.timings[-1]["box"] == shifted and panel.timings[-1]["decode_ms"] > 0
    qtbot.wait(300)  # the decoder's queued report of the same mask paints nothing more
    assert painted == [(0, z)] and len(panel.timings) == n + 1
    # a mask slower than the wait is painted when the decoder's report arrives
    monkeypatch.setattr(slice_segmentation, "WAIT_FOR_MASK_S", 0.0)
    painted[:] = []
    with qtbot.waitSignal(panel.slice_painted, timeout=60_000):
        panel.segment_box(0, z, (box[0] + 6, box[1] + 6, box[2] + 6, box[3] + 6), 1)
        assert painted == []

    # another view: the embeddings stay on the axial axis until a prompt is drawn there
    c.set_view("coronal")
    assert panel.service.axis == 0

    # MedSAM ViT-B is not installed: choosing it unloads LiteMedSAM and asks for its weights
    combo = panel.model_box.engine_combo
    combo.setCurrentIndex(combo.findData("medsam"))
    assert panel.engine_name == "medsam" and panel.engine is None
    qtbot.waitUntil(lambda: panel.weights_dialog is not None and panel.weights_dialog.isVisible(), timeout=10_000)
    assert panel.weights_dialog.model.name == "medsam_vit_b"
    assert panel.model_box.weights_button.text() == "Load MedSAM ViT-B weights…"
    assert panel.settings["engine"] == "medsam"
    panel.weights_dialog.reject()


def _press_and_move(layer, p0, p1, qtbot, steps=4) -> int:
    """Press at data point p0 and move to p1 through napari's mouse callbacks, letting the event
    loop run after each move (as between a user's mouse events); returns the index of the shape
    being drawn."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks

    w0, w1 = np.asarray(layer.data_to_world(p0)), np.asarray(layer.data_to_world(p1))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=tuple(w0), dims_displayed=[1, 2]))
    for t in np.linspace(0, 1, steps + 1)[1:]:
        mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True,
                                                          position=tuple(w0 + t * (w1 - w0)), dims_displayed=[1, 2]))
        qtbot.wait(20)
    return len(layer.data) - 1


def _release(layer, p1) -> None:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_release_callbacks

    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=tuple(layer.data_to_world(p1)),
                                                         dims_displayed=[1, 2]))


def test_propagation_method_defaults_to_medsam2_when_installed(app_window):
    from medsam_gui import config

    win = app_window(show=False)
    assert win.panels.medsam.propagation_box.method == "slices"  # no MedSAM2 weights
    weights = config.weights_dir()
    weights.mkdir(parents=True, exist_ok=True)
    (weights / "MedSAM2_latest.pt").write_bytes(b"not loaded until a propagation runs")
    win2 = app_window(show=False)
    pb = win2.panels.medsam.propagation_box
    assert pb.method == "medsam2" and pb.method_combo.currentText() == "MedSAM2 (memory)"
