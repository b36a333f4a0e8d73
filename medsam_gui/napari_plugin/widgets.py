"""npe2 widgets: the app's panels working on a plain napari viewer's layers.

Each command makes its panel for the current viewer (``napari.current_viewer()``: napari gives
factory functions no viewer, and widget classes only a proxy without the layers' private undo
history the controller needs). One :class:`~medsam_gui.gui.controller.Controller` per viewer
(``window=None``: no menus, no status bar) is made by the first widget opened and shared by the
others. It adopts the scan the medsam-gui reader opened (the active image layer, else the last
one; with a label map file on the same grid if one is open, else it adds a labels layer) and
every scan or label map file opened later.
"""

from __future__ import annotations

import weakref

import napari
import napari.layers
from qtpy.QtWidgets import QApplication, QWidget

from ..errors import MedsamGuiError
from ..gui.controller import Controller
from ..gui.layers import source_of

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
    """The last label map file the reader opened on the grid of ``image``'s scan, if any."""
    volume = source_of(image.metadata)["volume"]
    for layer in reversed(viewer.layers):
        if _on_grid(layer, volume) and _is_label_file(layer, viewer):
            return layer
    return None


def _is_label_file(layer, viewer) -> bool:
    """A labels layer the reader read from a file (not one made for an image layer's scan)."""
    volume = source_of(layer.metadata)["volume"]
    return not any(isinstance(other, napari.layers.Image) and source_of(other.metadata) is not None
                   and source_of(other.metadata)["volume"] is volume for other in viewer.layers)


def _on_inserted(controller: Controller, layer) -> None:
    """Adopt a scan (or a label map file on the current scan's grid) the reader just added."""
    try:
        if isinstance(layer, napari.layers.Image) and source_of(layer.metadata) is not None:
            controller.adopt_layers(layer, _labels_for(controller.viewer, layer))
        elif (controller.volume is not None and _on_grid(layer, controller.volume)
              and _is_label_file(layer, controller.viewer)):
            controller.adopt_layers(controller.image_layer, layer)
    except Exception as exc:  # shown to the user; the viewer keeps working
        controller.show_error(exc, title="medsam-gui")


def existing_controller(viewer) -> Controller | None:
    """The viewer's controller if a widget made one, else None."""
    controller = _controllers.get(id(viewer))
    return controller if controller is not None and controller.viewer is viewer else None


def controller_for(viewer) -> Controller:
    """The viewer's controller (made on first use; it follows scans the reader adds)."""
    controller = existing_controller(viewer)
    if controller is not None:
        return controller
    controller = Controller(viewer, window=None)
    _controllers[id(viewer)] = controller
    QApplication.instance().aboutToQuit.connect(controller.shutdown)  # joins the panels' threads
    viewer.layers.events.inserted.connect(lambda event: _on_inserted(controller, event.value))
    return controller


def _show_scan(controller: Controller) -> None:
    """Adopt the viewer's scan if the controller has none yet."""
    if controller.volume is None:
        image = _scan_layer(controller.viewer)
        if image is not None:
            controller.adopt_layers(image, _labels_for(controller.viewer, image))


def _current_viewer():
    viewer = napari.current_viewer()
    if viewer is None:
        raise MedsamGuiError("Open a napari viewer before adding a medsam-gui widget.")
    return viewer


def _widget(make, *, background: bool = False) -> QWidget:
    """A panel built by ``make(controller)`` on the current viewer's controller, after adopting
    its scan; ``background``: the panel runs threads that must stop when napari quits."""
    controller = controller_for(_current_viewer())
    _show_scan(controller)
    panel = make(controller)
    if background:
        controller.add_shutdown_hook(panel.shutdown)
    return panel


def medsam_widget() -> QWidget:
    """MedSAM: boxes / RECIST lines segment a slice; propagation in 3D."""
    from ..gui.medsam_panel import MedSAMPanel

    return _widget(MedSAMPanel, background=True)


def universeg_widget() -> QWidget:
    """UniverSeg: segment the remaining slices from a few labelled ones."""
    from ..gui.universeg_panel import UniversegPanel

    return _widget(UniversegPanel, background=True)


def labels_widget() -> QWidget:
    """Labels: the label table (names, colours, active label)."""
    from ..gui.labels_panel import LabelsPanel

    return _widget(LabelsPanel)


def measurements_widget() -> QWidget:
    """Measurements: volume and diameters of each label."""
    from ..gui.measurements_panel import MeasurementsPanel

    panel = _widget(MeasurementsPanel, background=True)
    panel.refresh()
    return panel


def auto_widget() -> QWidget:
    """Auto-segment: Hermes-R or the Universal Model segments structures picked by name."""
    from ..gui.auto_panel import AutoPanel

    return _widget(AutoPanel, background=True)
