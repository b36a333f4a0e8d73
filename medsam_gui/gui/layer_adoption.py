"""Controller mixin: work on layers already in a viewer (the napari plugin's reader made them)."""

from __future__ import annotations

import numpy as np

from ..errors import MedsamGuiError
from .layers import METADATA_KEY, display_orientation, source_of


class LayerAdoptionMixin:
    """``adopt_layers`` for :class:`~medsam_gui.gui.controller.Controller`."""

    def adopt_layers(self, image_layer, labels_layer=None) -> None:
        """Work on layers already in the viewer (made by the napari plugin's reader).

        ``image_layer.metadata["medsam_gui"]["volume"]`` is its scan (a Volume) and its data the
        scan in display order. ``labels_layer`` (display order, the same grid) holds the label
        map; without one a labels layer on the image's grid is added. Afterwards the layers
        behave as those ``set_volume`` makes (undo, paint events, window, protected from deletion);
        the layers this controller had before are left in the viewer but no longer followed.
        Raises MedsamGuiError for an image layer the reader did not make.
        """
        source = source_of(image_layer.metadata)
        if source is None:
            raise MedsamGuiError(
                f"The layer {image_layer.name!r} was not opened with medsam-gui: open the scan with "
                "File > Open and the medsam-gui reader.")
        volume = source["volume"]
        orientation = display_orientation(volume)
        labels = None
        if labels_layer is None:
            labels_layer = self._viewer.add_labels(
                np.zeros(orientation.display_shape(volume.shape), dtype=np.uint16),
                name=f"{image_layer.name} labels", scale=tuple(image_layer.scale),
                translate=tuple(image_layer.translate), opacity=0.6, units="mm",
                metadata={METADATA_KEY: dict(source)})
        else:
            labels = orientation.from_display(np.asarray(labels_layer.data))
        # follow (and protect) these layers instead of the current ones, which stay in the viewer
        old_image, old_labels = self._image_layer, self._labels_layer
        if old_labels is not None and old_labels is not labels_layer:
            self._unfollow_labels_layer(old_labels)
        if old_image is not None and old_image is not image_layer:
            self._unfollow_image_layer(old_image)
        if labels_layer is not old_labels:
            self._follow_labels_layer(labels_layer)
        if image_layer is not old_image:
            self._follow_image_layer(image_layer)
        self._image_layer, self._labels_layer = image_layer, labels_layer
        self.set_volume(volume, labels, labels_path=None)
