"""The viewer shows every scan the same way round, whatever its direction matrix.

A synthetic volume holds a bright marker in the voxel corner nearest the patient's
right-anterior-superior corner. Stored with identity, flipped and axis-permuted direction
matrices, the axial view at the most superior slice must show the marker at the screen's
top-left (patient right on screen left, anterior up); the coronal view at the most anterior
slice and the sagittal view at the most right slice must also show it top-left (superior up;
patient right resp. anterior on the left). Checked on real canvas screenshots.
Oblique scans: shown in voxel order with a visible notice.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medsam_gui.core.volume import Volume

pytestmark = pytest.mark.gui

SHAPE_ZYX = (9, 14, 18)
SPACING_XYZ = (1.0, 1.5, 2.5)


def _marker_volume(direction9) -> Volume:
    """Background 0, marker 1000 at the corner nearest patient right-anterior-superior."""
    d = np.asarray(direction9, float).reshape(3, 3)
    nz, ny, nx = SHAPE_ZYX
    best, best_score = None, -np.inf
    for k, j, i in itertools.product((0, nz - 1), (0, ny - 1), (0, nx - 1)):
        phys = d @ (np.array([i, j, k], float) * np.array(SPACING_XYZ))  # LPS
        score = -phys[0] - phys[1] + phys[2]  # right (-x), anterior (-y), superior (+z)
        if score > best_score:
            best, best_score = (k, j, i), score
    arr = np.zeros(SHAPE_ZYX, np.int16)
    k, j, i = best
    arr[max(k - 1, 0):k + 2, max(j - 1, 0):j + 2, max(i - 1, 0):i + 2] = 1000  # 2x2x2 at the corner
    return Volume(arr, spacing=SPACING_XYZ, origin=(10.0, -20.0, 30.0), direction=tuple(direction9),
                  modality="CT", name="marker")


IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
FLIPPED_RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
FLIPPED_Z = (1, 0, 0, 0, 1, 0, 0, 0, -1)
# index x -> L, index y -> I, index z -> P (a coronal acquisition)
PERMUTED_CORONAL = (1, 0, 0, 0, 0, 1, 0, -1, 0)
# index x -> P, index y -> I, index z -> R (a sagittal acquisition, columns of the matrix)
PERMUTED_SAGITTAL = (0, 0, -1, 1, 0, 0, 0, -1, 0)


@pytest.fixture(scope="module")
def win(module_app_window):
    w = module_app_window(show=True, install_panels=False, size=(1100, 800))
    w.viewer.canvas.overlays.scale_bar.visible = False
    return w


def _marker_quadrant(win) -> tuple[str, str]:
    from qtpy.QtWidgets import QApplication

    win.viewer.canvas.overlays.scale_bar.visible = False
    for _ in range(3):
        QApplication.processEvents()
    shot = win.viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(int)
    white = (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] > 200)
    ys, xs = np.nonzero(white)
    assert ys.size > 20, "marker not visible on the canvas"
    h, w = white.shape
    vert = "top" if ys.mean() < h / 2 else "bottom"
    horiz = "left" if xs.mean() < w / 2 else "right"
    return vert, horiz


@pytest.mark.parametrize("direction", [IDENTITY, FLIPPED_RAS, FLIPPED_Z, PERMUTED_CORONAL, PERMUTED_SAGITTAL],
                         ids=["identity", "ras", "flip-z", "permuted-coronal", "permuted-sagittal"])
def test_marker_lands_top_left_in_all_views(win, direction):
    c = win.controller
    vol = _marker_volume(direction)
    c.set_volume(vol, bounds=(0.0, 1000.0))
    assert not c.orientation.oblique
    assert not win.oblique_notice.isVisibleTo(win.qt_window)
    disp_shape = c.image_layer.data.shape
    # physical proportions: layer scale is the display spacing
    assert np.allclose(np.array(disp_shape) * c.image_layer.scale,
                       np.array(c.orientation.display_shape(vol.shape)) * np.array(
                           c.orientation.display_spacing(vol.spacing)))

    c.set_view("axial")
    c.set_current_slice(0, disp_shape[0] - 1)  # most superior slice
    assert c.current_slice(0) == disp_shape[0] - 1
    assert _marker_quadrant(win) == ("top", "left")
    assert c.edge_letters() == {"top": "A", "bottom": "P", "left": "R", "right": "L"}

    c.set_view("coronal")
    c.set_current_slice(1, 0)  # most anterior coronal slice
    assert _marker_quadrant(win) == ("top", "left")
    assert c.edge_letters() == {"top": "S", "bottom": "I", "left": "R", "right": "L"}

    c.set_view("sagittal")
    c.set_current_slice(2, 0)  # most right sagittal slice
    assert _marker_quadrant(win) == ("top", "left")
    assert c.edge_letters() == {"top": "S", "bottom": "I", "left": "A", "right": "P"}

    # the inferior slice does not hold the marker (the flip along slices is real)
    c.set_view("axial")
    c.set_current_slice(0, 0)
    shot = win.viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert not ((shot > 200).all(axis=-1)).sum() > 20
    c.set_view("axial")


def test_oblique_scan_shown_in_voxel_order_with_notice(win):
    c = win.controller
    a = np.deg2rad(35.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    vol = _marker_volume(tuple(rot.ravel()))
    c.set_volume(vol, bounds=(0.0, 1000.0))
    assert c.orientation.oblique
    # voxel order: the layer shows the array itself, unpermuted and unflipped
    assert c.image_layer.data.shape == vol.shape
    assert np.shares_memory(c.image_layer.data, vol.array)
    assert np.array_equal(c.image_layer.data, vol.array)
    assert tuple(c.image_layer.scale) == vol.spacing_zyx
    assert win.oblique_notice.isVisibleTo(win.qt_window)
    assert "voxel order" in win.oblique_notice.text()
    assert "oblique" in win.status_text().lower()
    assert all(v.startswith("≈") for v in c.edge_letters().values())
    # back to a straight scan: the notice goes away
    c.set_volume(_marker_volume(IDENTITY), bounds=(0.0, 1000.0))
    assert not win.oblique_notice.isVisibleTo(win.qt_window)
