"""Measurements dock on real labels: values equal ``measure_labels`` on the source grid (as the
CLI's ``measure`` reports them), slice numbers shown in display order, auto refresh after an
edit, CSV export."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parent.parent
SCAN = ROOT / "tests" / "data" / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"
SEG = ROOT / "tests" / "data" / "totalsegmentator_example_ct" / "example_seg.nii.gz"


@pytest.fixture(scope="module")
def env(module_app_window):
    """A window with the MedSAM panel (foreground EmbeddingService) and its Measurements dock."""
    from medsam_gui.gui.embedding_service import EmbeddingService
    from medsam_gui.gui.medsam_panel import install
    from medsam_gui.models.embedding_cache import EmbeddingCache

    def install_medsam(controller):
        return install(controller, service=EmbeddingService(EmbeddingCache(disk_bytes=0), background=False))

    win = module_app_window(show=False, install_panels=False, panels={"medsam": install_medsam})
    with module_app_window.home_env():
        yield SimpleNamespace(win=win, c=win.controller, panel=win.panels.medsam, mp=win.panels.measurements)


def _same(got, exp):
    assert got.value == exp.value and got.voxels == exp.voxels
    assert got.volume_ml == exp.volume_ml
    assert got.slice_range == exp.slice_range and got.axial_slice == exp.axial_slice
    assert got.long_axis_mm == exp.long_axis_mm and got.short_axis_mm == exp.short_axis_mm
    assert got.long_axis_endpoints == exp.long_axis_endpoints


def test_values_equal_measure_labels_refresh_export(env, qtbot, tmp_path, monkeypatch):
    from medsam_gui.core.measurements import measure_labels, to_csv
    from medsam_gui.gui import measurements_panel as mpmod
    from medsam_gui.io import load_labels, load_volume

    c, mp = env.c, env.mp
    vol = load_volume(SCAN)
    labels = load_labels(SEG, like=vol)
    with qtbot.waitSignal(mp.refreshed, timeout=30_000):
        c.set_volume(vol, labels)  # auto refresh after the scan + labels appear
    assert not c.orientation.is_identity  # NIfTI: rows and columns flipped for display
    expected = measure_labels(labels, vol.spacing)
    assert len(expected) > 10
    assert [m.value for m in mp.measurements] == [m.value for m in expected]
    for got, exp in zip(mp.measurements, expected):
        _same(got, exp)

    # the table shows those numbers; slice numbers as on the display slider
    rows = mp.row_values()
    disp = np.asarray(c.display_labels())
    axis = c.orientation.inverse_perm[0]
    for row, exp in zip(rows, expected):
        assert row["Label"] == str(exp.value)
        assert row["Volume (mL)"] == f"{exp.volume_ml:.3f}"
        assert row["Long axis (mm)"] == f"{exp.long_axis_mm:.1f}"
        assert row["Short axis (mm)"] == f"{exp.short_axis_mm:.1f}"
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero((disp == exp.value).any(axis=other))
        shown = row["Slices"].split("–")
        assert (int(shown[0]), int(shown[-1])) == (int(present[0]), int(present[-1]))

    # consistency: measuring the display-order labels with the display spacing gives the
    # same volumes (and here, a mirror image, the same diameters)
    on_display = measure_labels(disp, tuple(reversed(c.orientation.display_spacing(vol.spacing))))
    for d, exp in zip(on_display, expected):
        assert d.voxels == exp.voxels and d.volume_ml == pytest.approx(exp.volume_ml, rel=1e-12)
        assert d.long_axis_mm == pytest.approx(exp.long_axis_mm, abs=1e-9)

    # a model edit (one undoable write) refreshes the panel
    z, new_value = 12, int(labels.max()) + 1
    mask = np.zeros(disp.shape[1:], bool)
    mask[10:20, 30:45] = True
    free = mask & (disp[z] == 0)
    with qtbot.waitSignal(mp.refreshed, timeout=30_000):
        c.write_slice_mask(0, z, mask, new_value)
    new = [m for m in mp.measurements if m.value == new_value]
    assert len(new) == 1 and new[0].voxels == int(free.sum())
    assert new[0].volume_ml == pytest.approx(free.sum() * 27.0 / 1000.0)
    src_now = np.array(c.source_labels())
    for got, exp in zip(mp.measurements, measure_labels(src_now, vol.spacing)):
        _same(got, exp)

    # CSV export = core to_csv of the same measurements (names from the label table)
    out = tmp_path / "measurements.csv"
    monkeypatch.setattr(mpmod, "ask_csv_path", lambda parent, suggested: str(out))
    mp.export_button.click()
    assert out.read_text(encoding="utf-8") == to_csv(measure_labels(src_now, vol.spacing, c.label_table))

    with qtbot.waitSignal(mp.refreshed, timeout=30_000):
        c.undo()
    assert new_value not in [m.value for m in mp.measurements]


def test_permuted_scan_slices_follow_display(env, qtbot):
    """A coronal acquisition: the scan's z axis is shown along display axis 1."""
    from medsam_gui.core.measurements import measure_labels
    from medsam_gui.core.volume import Volume

    c, mp = env.c, env.mp
    rng = np.random.default_rng(3)
    arr = rng.integers(-100, 100, size=(12, 20, 16)).astype(np.int16)
    lab = np.zeros(arr.shape, np.uint16)
    lab[3:8, 5:12, 4:10] = 4
    lab[9:11, 2:4, 2:5] = 6
    vol = Volume(arr, spacing=(0.8, 2.0, 1.5), direction=(1, 0, 0, 0, 0, 1, 0, -1, 0), modality="CT", name="cor")
    with qtbot.waitSignal(mp.refreshed, timeout=30_000):
        c.set_volume(vol, lab)
    assert c.orientation.inverse_perm[0] != 0
    expected = measure_labels(lab, vol.spacing)
    for got, exp in zip(mp.measurements, expected):
        _same(got, exp)
    disp = np.asarray(c.display_labels())
    axis = c.orientation.inverse_perm[0]
    for row, exp in zip(mp.row_values(), expected):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero((disp == exp.value).any(axis=other))
        shown = row["Slices"].split("–")
        assert (int(shown[0]), int(shown[-1])) == (int(present[0]), int(present[-1]))
    # double-click goes to the measured slice
    mp._go_to_row(0)
    p = c.orientation.index_to_display(np.array([expected[0].axial_slice, 0, 0], float))
    assert c.current_slice(axis) == int(round(p[axis]))


def test_diameters_drawn_on_the_measured_slice(env, qtbot):
    """The RECIST long/short axes appear as lines on the canvas: in display coordinates that map
    back to the measured endpoints, with lengths (display coordinates x layer scale) equal to
    the measured mm, in the label's colour; the labels layer stays the active layer."""
    from medsam_gui.gui.measurements_panel import OVERLAY_LAYER
    from medsam_gui.io import load_labels, load_volume

    c, mp = env.c, env.mp
    vol = load_volume(SCAN)
    labels = load_labels(SEG, like=vol)
    with qtbot.waitSignal(mp.refreshed, timeout=30_000):
        c.set_volume(vol, labels)
    viewer = c.viewer
    viewer.layers.selection.active = c.labels_layer
    mp.update_overlay()
    layer = mp.overlay_layer()
    assert layer is not None and layer.name == OVERLAY_LAYER
    assert viewer.layers.selection.active is c.labels_layer
    ms = [m for m in mp.measurements if m.long_axis_mm > 0]
    n_short = sum(1 for m in ms if m.short_axis_endpoints and m.short_axis_mm > 0)
    assert len(layer.data) == len(ms) + n_short
    assert np.allclose(layer.scale, c.labels_layer.scale)
    i = 0
    for m in ms:
        long_line = np.asarray(layer.data[i])
        back = c.orientation.display_to_index(long_line, vol.shape)
        assert np.allclose(back[:, 0], m.axial_slice)
        assert np.allclose(back[:, [2, 1]], np.asarray(m.long_axis_endpoints), atol=1e-9)
        length = float(np.linalg.norm((long_line[1] - long_line[0]) * np.asarray(layer.scale)))
        assert abs(length - m.long_axis_mm) < 1e-6 * max(1.0, m.long_axis_mm)
        assert np.allclose(layer.edge_color[i][:3], c.label_table[m.value].color[:3], atol=1e-6)
        assert layer.features["text"][i] == f"L {m.long_axis_mm:.1f} mm"
        i += 1 + (1 if m.short_axis_endpoints and m.short_axis_mm > 0 else 0)
    # the toggle removes and restores the layer
    mp.overlay_check.setChecked(False)
    assert mp.overlay_layer() is None
    mp.overlay_check.setChecked(True)
    assert mp.overlay_layer() is not None and len(mp.overlay_layer().data) == len(ms) + n_short
    # a hidden label's lines go away
    c.set_label_visible(ms[0].value, False)
    assert len(mp.overlay_layer().data) < len(ms) + n_short
    c.set_label_visible(ms[0].value, True)
