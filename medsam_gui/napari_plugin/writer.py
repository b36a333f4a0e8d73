"""npe2 writer: a labels layer saved on the exact source grid of its scan.

The layer's data are in display order (see :mod:`.reader`); the source scan (a Volume: size,
spacing, origin, direction) comes from ``metadata[METADATA_KEY]`` of the labels layer, or else
of the image layer in the current viewer it lies on (same display shape, scale and translate:
e.g. a labels layer made with napari's "New labels layer" button). The array is mapped back to
the scan's (z, y, x) voxel order and written by :func:`medsam_gui.io.save_labels`; when the
layer is the one the medsam-gui widgets edit, the label names and colours go to ``<stem>.label``
beside it (ITK-SNAP label description).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..gui.layers import source_of


def _current_viewer():
    import napari

    return napari.current_viewer()


def _label_table_of(data):
    """The widgets' label table when ``data`` is the labels layer their controller edits, else None."""
    viewer = _current_viewer()
    if viewer is None:
        return None
    from .widgets import existing_controller

    controller = existing_controller(viewer)
    if controller is None or controller.labels_layer is None or controller.labels_layer.data is not data:
        return None
    return controller.label_table


def _source_in_viewer(shape, scale, translate) -> dict | None:
    """The kept source of an image layer of the current viewer on the same display grid."""
    viewer = _current_viewer()
    if viewer is None:
        return None
    for layer in viewer.layers:
        source = source_of(layer.metadata)
        if (source is not None and tuple(layer.data.shape) == tuple(shape)
                and np.allclose(layer.scale, scale) and np.allclose(layer.translate, translate)):
            return source
    return None


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: ``data`` (display order, integer) -> label map at ``path``.

    Formats by extension: .nii.gz, .nii, .nrrd, .mha. Overwrites ``path`` (napari's save
    dialog asks first). Raises ExportError when the layer has no source geometry.
    """
    from .. import io as mio

    arr = np.asarray(data)
    source = source_of(attributes.get("metadata"))
    if source is None:
        source = _source_in_viewer(arr.shape, attributes.get("scale", (1.0,) * arr.ndim),
                                   attributes.get("translate", (0.0,) * arr.ndim))
    name = attributes.get("name", "labels")
    if source is None:
        raise ExportError(
            f"The labels layer {name!r} does not come from a scan opened with medsam-gui, so its source "
            "grid (size, spacing, origin, direction) is unknown. Open the scan with the medsam-gui reader "
            "and draw on a labels layer made for it (e.g. by the medsam-gui Labels widget).")
    volume, orientation = source["volume"], source["orientation"]
    expected = orientation.display_shape(volume.shape)
    if tuple(arr.shape) != tuple(expected):
        raise ExportError(
            f"The labels layer {name!r} has shape {tuple(arr.shape)} but its scan {volume.name!r} is shown as "
            f"{tuple(expected)}; a label map must lie on its scan's grid.")
    array_zyx = np.ascontiguousarray(orientation.from_display(arr))
    written = mio.save_labels(array_zyx, volume, Path(path), label_table=_label_table_of(data), overwrite=True)
    return [str(written)]
