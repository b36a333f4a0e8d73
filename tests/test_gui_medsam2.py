"""MedSAM2 in the MedSAM dock (issue 14), in the real window on the real lung CT
(tests/data/lung_ct: lesion on slices 32-34, box (206, 347, 229, 368) on slice 33).

The first test runs the real MedSAM2 network with the golden-rule random weights
(tests/medsam2_helpers.py) on the golden 7-slice range (30..36) and checks the labels
against the official golden; the others use a stand-in engine (the model is not the point
there): display order along another view axis, no-object slices, the range, Cancel, the
weights dialog.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import medsam2_helpers as m2

pytestmark = pytest.mark.gui

LABEL = 3
KEY, BOX = 33, (206, 347, 229, 368)  # source slice, (x0, y0, x1, y1)


def _drag(layer, p0, p1):
    from medsam_gui.gui.scripting import drag_on_layer

    drag_on_layer(layer, p0, p1, displayed=(1, 2), steps=3)


@pytest.fixture(scope="module")
def env(qapp, tmp_path_factory, lung_scan):
    from medsam_gui.app import build_app
    from medsam_gui.gui.embedding_service import EmbeddingService
    from medsam_gui.gui.medsam_panel import install
    from medsam_gui.io import load_volume
    from medsam_gui.models.embedding_cache import EmbeddingCache

    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSAM_GUI_HOME", str(tmp_path_factory.mktemp("medsam2_gui_home")))
    win = build_app(show=False, install_panels=False)
    service = EmbeddingService(EmbeddingCache(disk_bytes=0), neighbours=0, background=False)
    panel = install(win.controller, service=service)
    vol = load_volume(lung_scan)
    try:
        yield SimpleNamespace(win=win, c=win.controller, panel=panel, vol=vol)
    finally:
        panel.shutdown()
        win.close(force=True)
        mp.undo()


def _fresh(env, view="axial"):
    c, panel = env.c, env.panel
    panel.clear_prompts()
    panel.set_medsam2_engine(None)
    c.set_volume(env.vol)
    c.set_view(view)
    c.set_active_label(LABEL)

    def box_tool(index, box):  # the 2D box tool's stand-in: the box's pixels
        axis = int(c.view_axis)
        shape = np.take(c.display_labels(), 0, axis).shape
        m = np.zeros(shape, bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        m[y0:y1 + 1, x0:x1 + 1] = True
        return m

    panel.set_segmenter(box_tool)
    return c, panel


def _choose_medsam2(panel):
    from medsam_gui import config
    from medsam_gui.gui.medsam_panel import SETTINGS_KEY

    pb = panel.propagation_box
    pb.method_combo.setCurrentIndex(pb.method_combo.findData("slices"))
    assert pb.margin_spin.isEnabled() and not pb.medsam2_weights_button.isVisibleTo(pb)
    pb.method_combo.setCurrentIndex(pb.method_combo.findData("medsam2"))
    assert pb.method == "medsam2" and pb.method_combo.currentText() == "MedSAM2 (memory)"
    assert not pb.margin_spin.isEnabled() and pb.medsam2_weights_button.isVisibleTo(pb)
    assert config.get_setting(SETTINGS_KEY)["prop_method"] == "medsam2"  # remembered


def _key_in_display(c):
    """(display key index, display box) of the source key slice and box (axial view)."""
    o, shape = c.orientation, c.volume.shape
    corners = o.index_to_display(np.array([[KEY, BOX[1], BOX[0]], [KEY, BOX[3], BOX[2]]]), shape)
    z = int(corners[0][0])
    ys, xs = sorted(corners[:, 1]), sorted(corners[:, 2])
    return z, (xs[0], ys[0], xs[1], ys[1])


def _draw_key_box(env, qtbot, z, box):
    c, panel = env.c, env.panel
    c.set_current_slice(0, z)
    panel.activate_box_tool()
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        _drag(panel.prompts_layer, (z, box[1], box[0]), (z, box[3], box[2]))
    assert list(panel.key_boxes()) == [z]


def _set_range(panel, lo, hi):
    pb = panel.propagation_box
    pb.from_spin.setValue(lo)
    pb.to_spin.setValue(hi)


def test_medsam2_box_becomes_3d_lesion_real_model_one_undo(env, qtbot):
    from qtpy.QtCore import Qt

    c, panel = _fresh(env)
    g = m2.gold()
    c.set_window(*[float(v) for v in g["window"].tolist()])  # the golden's window on screen
    _choose_medsam2(panel)
    z, box = _key_in_display(c)
    _draw_key_box(env, qtbot, z, box)
    before = np.array(c.display_labels())
    panel.set_medsam2_engine(m2.engine())
    lo, hi = 30, 36
    _set_range(panel, lo, hi)
    painted = []

    def on_painted(_axis, i):
        painted.append((i, np.array(c.display_labels()[i]) == LABEL))

    panel.slice_painted.connect(on_painted)
    try:
        with qtbot.waitSignal(panel.propagation_finished, timeout=300_000) as fin:
            qtbot.mouseClick(panel.propagation_box.propagate_button, Qt.MouseButton.LeftButton)
            assert panel.propagating and env.win.progress_bar.isVisibleTo(env.win.qt_window)
        c.wait_idle(30)
    finally:
        panel.slice_painted.disconnect(on_painted)
    assert fin.args == ["done"]
    # slice by slice as they arrive: the key slice first, forwards, then backwards
    order = [i for i, _m in painted]
    assert order[:hi - z + 1] == list(range(z, hi + 1)) and order[hi - z + 1:hi - lo + 2] == list(range(z, lo - 1, -1))
    assert painted[1][1].any()  # slice z+1 was in the labels right when it arrived
    src = np.asarray(c.source_labels()) == LABEL
    final = m2.unpack("mask_final")
    diff = src[lo:hi + 1] != final
    assert diff.sum() <= 10, f"{int(diff.sum())} voxels differ from the official MedSAM2 result"
    assert final.any(axis=(1, 2)).sum() >= 3
    assert not src[:lo].any() and not src[hi + 1:].any()  # nothing outside the range
    kinds = {k for _i, k, _b in panel.last_propagation}
    assert {"key", "forward", "backward"} <= kinds
    # measurements updated when it ended
    with qtbot.waitSignal(panel.measurements.refreshed, timeout=30_000, raising=False):
        pass
    c.wait_idle(30)
    rows = {m.value: m for m in panel.measurements.measurements}
    assert LABEL in rows and rows[LABEL].volume_ml > 0
    # ONE undo removes the run (the box tool's own slice result stays)
    c.undo()
    np.testing.assert_array_equal(np.array(c.display_labels()), before)
    c.redo()
    assert ((np.asarray(c.source_labels()) == LABEL) == src).all()


class StandIn:
    """A MedSAM2Engine stand-in: ``segmentation`` records its input and yields per slice a disk
    (present) or nothing (no object) like the real job, forwards then backwards."""

    def __init__(self, absent=(), drop_from_final=(), cancel_after=None):
        self.absent, self.drop, self.cancel_after = set(absent), set(drop_from_final), cancel_after
        self.calls = []

    def segmentation(self, volume, key_index, box_xyxy=None, *, recist=None, z_range=None, cancel=None):
        from medsam_gui.models.medsam2.engine import Segmentation, SliceUpdate

        self.calls.append(dict(volume=np.array(volume), key=key_index, box=box_xyxy, recist=recist,
                               z_range=z_range))
        nz, h, w = volume.shape
        z0, z1 = z_range
        yy, xx = np.mgrid[:h, :w]
        disk = (yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (min(h, w) // 6) ** 2

        def run(job):
            out = np.zeros((nz, h, w), bool)
            job.result = out
            steps = [(key_index, "key")] + [(i, "forward") for i in range(key_index + 1, z1 + 1)] + \
                    [(key_index, "key")] + [(i, "backward") for i in range(key_index - 1, z0 - 1, -1)]
            for n, (i, direction) in enumerate(steps):
                if cancel is not None and cancel():
                    job.cancelled = True
                    return
                present = i not in self.absent
                m = disk.copy() if present else np.zeros((h, w), bool)
                out[i] |= m
                yield SliceUpdate(i, m, present, direction, 1.0 if present else -1.0)
            job.union = out.copy()
            for i in self.drop:
                out[i] = False

        return Segmentation(run)


def test_display_order_other_axis_no_object_range_and_final(env, qtbot):
    """Coronal view: MedSAM2 gets the display-order uint8 volume with the view axis first (the
    window on screen, MedSAM's whole-volume rule) and the key slice/box in those pixels; the
    model's no-object slices are written empty (an older label there is cleared); nothing
    outside the range changes; a slice the final result drops is written again."""
    from medsam_gui.gui.medsam2_run import display_input

    c, panel = _fresh(env, view="coronal")
    _choose_medsam2(panel)
    axis = int(c.view_axis)
    assert axis == 1
    n = c.display_labels().shape[axis]
    k = n // 2
    c.set_current_slice(axis, k)
    # an older mask of the label inside the range (will be a no-object slice) and outside it
    h, w = np.take(c.display_labels(), 0, axis).shape
    old = np.zeros((h, w), bool)
    old[5:9, 5:9] = True
    c.write_slice_mask(axis, k - 2, old, LABEL)
    c.write_slice_mask(axis, k + 5, old, LABEL)
    panel.activate_box_tool()
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        from medsam_gui.gui.scripting import drag_on_layer

        drag_on_layer(panel.prompts_layer, (h // 3, k, w // 4), (2 * h // 3, k, w // 2), displayed=(0, 2))
    assert list(panel.key_boxes()) == [k]
    before = np.array(c.display_labels())
    fake = StandIn(absent={k - 2}, drop_from_final={k + 2})
    panel.set_medsam2_engine(fake)
    _set_range(panel, k - 3, k + 3)
    with qtbot.waitSignal(panel.propagation_finished, timeout=30_000) as fin:
        assert panel.propagate() is not None
    c.wait_idle(10)
    assert fin.args == ["done"]
    call = fake.calls[-1]
    expect = display_input(c.volume, c.orientation, c.window_bounds, axis)
    assert call["volume"].dtype == np.uint8 and np.array_equal(call["volume"], expect)
    assert call["volume"].shape == (n, h, w) and call["key"] == k and call["z_range"] == (k - 3, k + 3)
    bx = call["box"]
    assert abs(bx[0] - w // 4) <= 1 and abs(bx[1] - h // 3) <= 1 and abs(bx[2] - w // 2) <= 1
    after = np.array(c.display_labels())
    inside = list(range(k - 3, k + 4))
    outside = [i for i in range(n) if i not in inside]
    np.testing.assert_array_equal(np.take(after, outside, axis), np.take(before, outside, axis))
    assert (np.take(after, k + 5, axis) == LABEL).sum() == old.sum()  # outside the range: kept
    assert not (np.take(after, k - 2, axis) == LABEL).any()  # no object: empty
    assert not (np.take(after, k + 2, axis) == LABEL).any()  # dropped by the final result
    for i in (k - 3, k - 1, k, k + 1, k + 3):
        assert (np.take(after, i, axis) == LABEL).sum() > 100
    kinds = [kd for i, kd, _b in panel.last_propagation]
    assert kinds.count("no object") == 1 and kinds[-1] == "final"
    c.undo()
    np.testing.assert_array_equal(np.array(c.display_labels()), before)


def test_recist_line_cancel_keeps_finished_slices(env, qtbot):
    """A RECIST line alone on the key slice is handed to MedSAM2 as its end points (the
    official RECIST flow); Cancel keeps exactly the slices written, one undo step."""
    c, panel = _fresh(env)
    _choose_medsam2(panel)
    z, box = _key_in_display(c)
    c.set_current_slice(0, z)
    panel.activate_recist_tool()
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        _drag(panel.prompts_layer, (z, box[1], box[0]), (z, box[3], box[2]))
    before = np.array(c.display_labels())
    fake = StandIn()
    panel.set_medsam2_engine(fake)
    _set_range(panel, z - 3, z + 3)
    painted = []

    def on_painted(_axis, index):
        painted.append(index)
        if len(painted) == 2:
            panel.cancel_propagation()

    panel.slice_painted.connect(on_painted)
    try:
        with qtbot.waitSignal(panel.propagation_finished, timeout=30_000) as fin:
            panel.propagate()
        c.wait_idle(10)
    finally:
        panel.slice_painted.disconnect(on_painted)
    assert fin.args == ["cancelled"]
    (p0, p1) = fake.calls[-1]["recist"]
    assert fake.calls[-1]["box"] is None
    assert np.allclose(sorted([p0, p1]), sorted([(box[0], box[1]), (box[2], box[3])]), atol=1)
    after = np.array(c.display_labels())
    changed = set(np.flatnonzero((after != before).any(axis=(1, 2))))
    assert changed == set(painted) == {z, z + 1}
    c.undo()
    np.testing.assert_array_equal(np.array(c.display_labels()), before)


def test_missing_weights_dialog_wrong_file_then_good_file_starts_the_run(env, qtbot, monkeypatch, tmp_path):
    """No MedSAM2 weights: Propagate opens MedSAM2's weights dialog; a MedSAM (ViT) file is
    refused with a message naming it; an official-layout MedSAM2 file is accepted, loaded off
    the GUI thread and the waiting run starts by itself (all-zero weights: no object anywhere,
    so the range stays empty)."""
    import torch

    from medsam_gui.models.medsam2.engine import expected_shapes

    c, panel = _fresh(env)
    _choose_medsam2(panel)
    z, box = _key_in_display(c)
    _draw_key_box(env, qtbot, z, box)
    before = np.array(c.display_labels())
    _set_range(panel, z, z)
    assert panel.propagate() is None
    dlg = panel.medsam2_loader.dialog
    assert dlg is not None and dlg.isVisible() and dlg.model.name == "medsam2_latest"
    assert "MedSAM2_latest.pt" in dlg.info_label.text() and "huggingface.co/wanglab/MedSAM2" in dlg.info_label.text()
    wrong = tmp_path / "medsam_vit_b.pth"
    torch.save({"image_encoder.blocks.0.norm1.weight": torch.zeros(768),
                "mask_decoder.iou_token.weight": torch.zeros(1, 256)}, wrong)
    with qtbot.waitSignal(dlg.failed, timeout=30_000) as bad:
        dlg.choose_file(wrong)
    assert "MedSAM2" in bad.args[0] and "segment-anything" in bad.args[0]
    assert dlg.error_label.isVisibleTo(dlg)
    good = tmp_path / "MedSAM2_latest.pt"
    torch.save({"model": {k: torch.zeros(s, dtype=torch.float16) for k, s in expected_shapes().items()}}, good)
    with qtbot.waitSignal(panel.propagation_finished, timeout=120_000) as fin:
        dlg.choose_file(good)
    c.wait_idle(30)
    assert fin.args == ["done"]
    assert panel.medsam2_engine is not None and panel.medsam2_engine.name == "medsam2"
    assert [k for _i, k, _b in panel.last_propagation] == ["no object"]
    after = np.array(c.display_labels())
    assert not (after[z] == LABEL).any()  # the box tool's slice result replaced by "no object"
    np.testing.assert_array_equal(np.delete(after, z, 0), np.delete(before, z, 0))
