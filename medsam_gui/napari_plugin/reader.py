"""npe2 reader: scans as napari layers laid out exactly as the medsam-gui app shows them.

Data are numpy views of the scan's (z, y, x) array in *display order*
(:mod:`medsam_gui.core.orientation`: slices inferior -> superior, rows anterior -> posterior,
columns patient right -> left). ``scale`` is the display spacing (mm) and ``translate`` the
physical position (mm, LPS, display-axis order) of display voxel (0, 0, 0), so for axis-aligned
scans napari's world coordinates are the patient's LPS coordinates (z, y, x). Each layer keeps
its source in ``metadata[METADATA_KEY] = {"volume": Volume, "orientation": DisplayOrientation}``:
the writer restores the source grid from it and the widgets adopt the layer through it.

A 4D / multi-channel file opens its first component; what the reader did or found
(``volume.meta["notices"]``: that, NaN replaced, an oblique direction, ...) is shown as napari
notifications.

A file whose name ends in ``label``/``labels``/``seg``/``segmentation``/``mask`` (before the
extension) and holds whole numbers opens as a labels layer; everything else as an image.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core import intensity
from ..core.volume import Volume
from ..errors import MedsamGuiError
from ..gui.layers import METADATA_KEY
from ..gui.layers import display_orientation, display_scale

SCAN_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh", ".dcm")
_LABELS_NAME = re.compile(r"(^|[_\-. ])(label|labels|seg|segmentation|mask)$", re.IGNORECASE)

LayerData = tuple[Any, dict, str]


def display_translate(volume: Volume) -> tuple[float, float, float]:
    """Layer translate (mm): LPS position of display voxel (0, 0, 0), in display-axis order (z, y, x).

    Oblique scans (identity display transform): the origin, in (z, y, x) order.
    """
    orientation = display_orientation(volume)
    corner_zyx = orientation.display_to_index((0.0, 0.0, 0.0))
    xyz = volume.index_to_physical(corner_zyx)
    return tuple(float(v) for v in xyz[::-1])  # type: ignore[return-value]


def layer_kwargs(volume: Volume) -> dict:
    """scale, translate, units and metadata shared by every layer of ``volume``."""
    orientation = display_orientation(volume)
    return {
        "scale": display_scale(volume, orientation),
        "translate": display_translate(volume),
        "units": "mm",
        "metadata": {METADATA_KEY: {"volume": volume, "orientation": orientation}},
    }


def image_layer_data(volume: Volume) -> LayerData:
    """The scan as an image layer tuple (display order, gray, the app's default window)."""
    orientation = display_orientation(volume)
    lo, hi = intensity.default_bounds(volume.array, volume.modality)
    if hi <= lo:
        hi = lo + 1.0
    kwargs = layer_kwargs(volume)
    kwargs.update(name=volume.name or "scan", colormap="gray", contrast_limits=(float(lo), float(hi)),
                  blending="opaque")
    return (orientation.to_display(volume.array), kwargs, "image")


def labels_layer_data(volume: Volume) -> LayerData:
    """A label map file as a labels layer tuple (display order, its own geometry kept)."""
    orientation = display_orientation(volume)
    kwargs = layer_kwargs(volume)
    kwargs.update(name=volume.name or "labels", opacity=0.6)
    return (orientation.to_display(volume.array), kwargs, "labels")


def _is_label_map(path: Path, volume: Volume) -> bool:
    from ..io.readers import scan_stem

    if not _LABELS_NAME.search(scan_stem(path)):
        return False
    arr = volume.array
    if np.issubdtype(arr.dtype, np.integer):
        return True
    return bool(np.issubdtype(arr.dtype, np.floating) and np.array_equal(arr, np.round(arr)))


def _load(path: Path, series_uid: str | None = None) -> Volume:
    """``io.load_volume``, taking component 0 of a 4D / multi-channel image; notices shown."""
    from napari.utils.notifications import show_info

    from .. import io as mio

    try:
        volume = mio.load_volume(path, series_uid=series_uid)
    except mio.MultiComponentError:
        volume = mio.load_volume(path, series_uid=series_uid, component=0)
    for notice in volume.meta.get("notices") or []:
        show_info(f"{volume.name}: {notice}")
    return volume


def read_scan(path: str | os.PathLike) -> list[LayerData]:
    """Layers of one scan file or DICOM folder (one image layer per series of a folder)."""
    from .. import io as mio

    p = Path(path)
    if p.is_dir():
        series = mio.list_dicom_series(p)
        if not series:
            raise MedsamGuiError(f"The folder {p} holds no DICOM series. Open a scan file or a DICOM folder.")
        return [image_layer_data(_load(p, s.uid)) for s in series]
    volume = _load(p)
    if _is_label_map(p, volume):
        return [labels_layer_data(volume)]
    return [image_layer_data(volume)]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: a reader for scan files / DICOM folders, None for anything else."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for item in paths:
        p = Path(item)
        if p.is_dir():
            if not _has_dicom(p):
                return None
        elif not p.name.lower().endswith(SCAN_SUFFIXES):
            return None
    return read_scans


def read_scans(path: str | list[str]) -> list[LayerData]:
    """Layers of every given scan file / DICOM folder."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for item in paths:
        layers.extend(read_scan(item))
    return layers


def _has_dicom(folder: Path) -> bool:
    from .. import io as mio

    return bool(mio.list_dicom_series(folder))
