"""npe2 widgets: the app's panels working on a plain napari viewer's layers.

One :class:`~medsam_gui.gui.controller.Controller` per viewer (``window=None``: no menus, no
status bar) is made by the first widget opened and shared by the others. It adopts the scan
the medsam-gui reader opened (the active image layer, else the last one; with a labels layer on
the same grid if there is one, else it adds one) and every scan or label map opened later.
"""

from __future__ import annotations

import weakref

import napari
import napari.layers
from qtpy.QtWidgets import QApplication, QWidget

from ..gui.controller import Controller
from .reader import source_of

_controllers: "weakref.WeakValueDictionary[int, Controller]" = weakref.WeakValueDictionary()


def _scan_layer(viewer) -> napari.layers.Image | None:
    """The image layer to work on: the active one if the reader made it, else the last such."""
    active = viewer.layers.selection.active
    if isinstance(active, napari.layers.Image) and source_of(active.metadata) is not None:
        return active
    for layer in reversed(viewer.layers):
        if isinstance(layer, napari.layers.Image) and source_of(layer.metadata) is not None:
            return layer
    return None


def _on_grid(layer, volume) -> bool:
    """True when ``layer`` is a reader-made labels layer on ``volume``'s grid."""
    source = source_of(layer.metadata) if isinstance(layer, napari.layers.Labels) else None
    return source is not None and volume.same_grid(source["volume"])


def _labels_for(viewer, image) -> napari.layers.Labels | None:
    """The last reader-made labels layer on the grid of ``image``'s scan, if any."""
    volume = source_of(image.metadata)["volume"]
    for layer in reversed(viewer.layers):
        if _on_grid(layer, volume):
            return layer
    return None


def _on_inserted(controller: Controller, layer) -> None:
    """Adopt a scan (or a label map on the current scan's grid) the reader just added."""
    try:
        if isinstance(layer, napari.layers.Image) and source_of(layer.metadata) is not None:
            controller.adopt_layers(layer, _labels_for(controller.viewer, layer))
        elif controller.volume is not None and _on_grid(layer, controller.volume):
            controller.adopt_layers(controller.image_layer, layer)
    except Exception as exc:  # shown to the user; the viewer keeps working
        controller.show_error(exc, title="medsam-gui")


def controller_for(viewer) -> Controller:
    """The viewer's controller, made (and set on the viewer's scan, if any) on first use."""
    controller = _controllers.get(id(viewer))
    if controller is not None and controller.viewer is viewer:
        return controller
    controller = Controller(viewer, window=None)
    _controllers[id(viewer)] = controller
    viewer.layers.events.inserted.connect(lambda event: _on_inserted(controller, event.value))
    image = _scan_layer(viewer)
    if image is not None:
        controller.adopt_layers(image, _labels_for(viewer, image))
    return controller


def _stop_at_quit(panel) -> None:
    """Stop the panel's background threads when the application quits."""
    QApplication.instance().aboutToQuit.connect(panel.shutdown)


def medsam_widget(viewer: napari.viewer.Viewer) -> QWidget:
    """MedSAM: boxes / RECIST lines segment a slice; propagation in 3D."""
    from ..gui.medsam_panel import MedSAMPanel

    panel = MedSAMPanel(controller_for(viewer))
    _stop_at_quit(panel)
    return panel


def universeg_widget(viewer: napari.viewer.Viewer) -> QWidget:
    """UniverSeg: segment the remaining slices from a few labelled ones."""
    from ..gui.universeg_panel import UniversegPanel

    panel = UniversegPanel(controller_for(viewer))
    _stop_at_quit(panel)
    return panel


def labels_widget(viewer: napari.viewer.Viewer) -> QWidget:
    """Labels: the label table (names, colours, active label)."""
    from ..gui.labels_panel import LabelsPanel

    return LabelsPanel(controller_for(viewer))


def measurements_widget(viewer: napari.viewer.Viewer) -> QWidget:
    """Measurements: volume and diameters of each label."""
    from ..gui.measurements_panel import MeasurementsPanel

    return MeasurementsPanel(controller_for(viewer))
