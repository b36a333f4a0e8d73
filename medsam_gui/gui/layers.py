"""Bridge between a :class:`~medsam_gui.core.volume.Volume` and napari layers.

Everything napari shows is in *display order* (see :mod:`medsam_gui.core.orientation`):
display axis 0 = slices (inferior -> superior), 1 = rows (anterior -> posterior),
2 = columns (patient right -> left). Layer data are numpy *views* of the scan's (z, y, x)
arrays (``DisplayOrientation.to_display``), and a layer's ``scale`` is the display spacing in
mm, so anisotropic voxels keep their physical proportions.

The controller keeps the layer objects. Layers made by the napari plugin's reader keep their
source in ``metadata[METADATA_KEY]`` (:func:`source_of`).
Functions are small and pure where possible so they can be tested without a window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.labels import LabelTable
from ..core.orientation import DisplayOrientation
from ..core.volume import Volume
from ..errors import MedsamGuiError

IMAGE_LAYER_NAME = "scan"
LABELS_LAYER_NAME = "labels"
METADATA_KEY = "medsam_gui"

# napari dims order for each named view: the last two entries are the displayed dims
# (vertical, horizontal); the first is the slider.
VIEW_ORDERS: dict[str, tuple[int, int, int]] = {
    "axial": (0, 1, 2),     # slider: S/I; screen rows: A/P; screen columns: R/L
    "coronal": (1, 0, 2),   # slider: A/P; screen rows: S/I; screen columns: R/L
    "sagittal": (2, 0, 1),  # slider: R/L; screen rows: S/I; screen columns: A/P
}

# camera orientation2d (vertical, horizontal) for each view of a non-oblique scan, given the
# display axes' directions (rows grow toward P, slices toward S, columns toward L):
# axial: anterior up, patient right on screen left; coronal: superior up, patient right on
# screen left; sagittal: superior up, anterior on screen left.
VIEW_CAMERA: dict[str, tuple[str, str]] = {
    "axial": ("down", "right"),
    "coronal": ("up", "right"),
    "sagittal": ("up", "right"),
}
VOXEL_CAMERA = ("down", "right")  # oblique scans: plain voxel order, napari's default


def display_orientation(volume: Volume) -> DisplayOrientation:
    """The display transform of ``volume`` (knows the array shape, so flips work on points)."""
    return DisplayOrientation.from_direction(volume.direction, volume.shape)


def display_scale(volume: Volume, orientation: DisplayOrientation) -> tuple[float, float, float]:
    """Layer scale (mm) along display axes 0, 1, 2."""
    return tuple(float(s) for s in orientation.display_spacing(volume.spacing))  # type: ignore[return-value]


def labels_dtype_array(array_zyx: np.ndarray) -> np.ndarray:
    """A label map (z, y, x, any integer dtype) as a writable uint16 array (copied when needed).

    Raises MedsamGuiError for negative or > 65535 values or non-integer data.
    """
    arr = np.asarray(array_zyx)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint16)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise MedsamGuiError("The label map has non-integer values; a label map holds whole numbers 0..65535.")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise MedsamGuiError(
                f"The label map has values from {lo} to {hi}; labels must be 0..65535. "
                "Open a label map (segmentation), not an image."
            )
    if arr.dtype == np.uint16 and arr.flags.writeable and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=np.uint16)


def label_colormap(table: LabelTable, present_values=()):
    """napari DirectLabelColormap following ``table``.

    Background 0 is transparent; labels not visible are transparent; values present in the
    map but not in the table get their default colour (``LabelTable.color_of``).
    """
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for v in present_values:
        v = int(v)
        if v != 0 and v not in table:
            colors[v] = table.color_of(v)
    for info in table:
        colors[info.value] = info.color if info.visible else (0.0, 0.0, 0.0, 0.0)
    return DirectLabelColormap(color_dict=colors)


@dataclass(frozen=True)
class ViewSpec:
    """How napari shows one named view.

    ``order``: napari ``dims.order``; ``camera``: ``camera.orientation2d`` (vertical,
    horizontal); ``edges``: patient-direction letters at the (top, bottom, left, right) screen
    edges; ``approximate``: True for oblique scans (letters are the nearest direction).
    """

    name: str
    order: tuple[int, int, int]
    camera: tuple[str, str]
    edges: tuple[str, str, str, str]
    approximate: bool


def view_spec(view: str, orientation: DisplayOrientation) -> ViewSpec:
    """Dims order, camera orientation and edge letters of ``view`` ("axial", "coronal", "sagittal").

    For oblique scans the view names mean the array's own axes (z, y, x) and the camera stays
    at napari's default, so the scan is shown in voxel order.
    """
    if view not in VIEW_ORDERS:
        raise ValueError(f"unknown view {view!r}; use one of {sorted(VIEW_ORDERS)}")
    order = VIEW_ORDERS[view]
    camera = VOXEL_CAMERA if orientation.oblique else VIEW_CAMERA[view]
    pairs = orientation.display_axis_label_pairs()
    vdim, hdim = order[1], order[2]
    vlow, vhigh = pairs[vdim]
    hlow, hhigh = pairs[hdim]
    top, bottom = (vlow, vhigh) if camera[0] == "down" else (vhigh, vlow)
    left, right = (hlow, hhigh) if camera[1] == "right" else (hhigh, hlow)
    return ViewSpec(view, order, camera, (top, bottom, left, right), bool(orientation.oblique))


def source_of(metadata: dict | None) -> dict | None:
    """``{"volume": Volume, "orientation": DisplayOrientation}`` kept by the reader, or None."""
    if not metadata:
        return None
    source = metadata.get(METADATA_KEY)
    return source if isinstance(source, dict) and isinstance(source.get("volume"), Volume) else None
