"""The application controller: the one object that holds the open scan, its labels and the
napari layers, and the wiring panels plug into (state providers, shutdown hooks).

Coordinates. The controller shows everything in *display order* (see
:mod:`medsam_gui.core.orientation`): display axis 0 = slices (inferior -> superior),
1 = rows (anterior -> posterior), 2 = columns (patient right -> left). Layer data are numpy
views of the scan's (z, y, x) arrays; ``layer.scale`` is the display spacing (mm). Export
always maps the labels back with ``orientation.from_display`` onto the source grid. Oblique
scans are shown in voxel order (identity transform) with a visible notice.

The methods live in five modules: this one (scan state, UI services, workers, wiring),
:mod:`.scan_files` (open / save), :mod:`.label_edits` (label table, undoable edits),
:mod:`.display` (window/level, views) and :mod:`.shutdown` (hooks, waiting for background work).

Hooks for panels (stable API)
-----------------------------
Signals (Qt):

- ``volume_changed(object)``: a new scan is shown (the :class:`Volume`); read the layers
  from the controller again (they may be the same layer objects, with new data).
- ``labels_changed()``: the label map was replaced or edited through the controller (after
  a load, ``set_labels``, ``write_slice_mask`` outside a group, the end of an ``edit_group``,
  ``delete_label``, and napari paint/erase/fill strokes). While it is emitted,
  ``edited_slice`` is the (display axis, index) of the one slice that changed, or None when
  the change may reach further.
- ``active_label_changed(int)``: the label value new edits use.
- ``label_table_changed()``: names/colours/entries of the table changed.
- ``window_changed(float, float)``: display window (lo, hi) changed.
- ``view_changed(str)``: "axial" | "coronal" | "sagittal".
- ``state_changed()``: a panel's saved state changed (``notify_state_changed``).

Properties: ``viewer`` (napari.Viewer), ``window`` (MainWindow | None: None in the napari
plugin, where panels add no menus), ``volume`` (Volume | None), ``orientation``
(DisplayOrientation | None), ``image_layer`` / ``labels_layer`` (napari layers | None),
``label_table`` (LabelTable), ``active_label`` (int, settable), ``window_bounds``
((lo, hi) floats as displayed), ``view`` (current view name), ``view_axis`` (display axis
the slider moves through in the current view), ``labels_path`` (Path | None),
``state_providers`` ({name: (get_state, set_state)}).

Methods:

- ``current_slice(axis=0) -> int``: the display index currently shown along display ``axis``.
- ``display_volume() -> np.ndarray``: display-order view of the scan array (no copy).
- ``display_labels() -> np.ndarray``: the labels layer data (display order, uint16).
- ``source_labels() -> np.ndarray``: labels mapped back to the scan's (z, y, x) grid (a view).
- ``write_slice_mask(axis, index, mask2d_bool, label, *, overwrite_other=False) -> int``:
  write one display slice (``np.take(display, index, axis)`` shape) of ``label`` as ONE
  undoable step (napari ``data_setitem``); pixels of ``label`` outside the mask on that slice
  are cleared; other labels' voxels are kept unless ``overwrite_other``. Returns the number
  of voxels changed.
- ``edit_group()``: context manager; all writes inside become ONE undo step.
- ``add_dock(widget, name, area="right", *, tabify=False)`` -> the dock widget.
- ``status(message, timeout_ms=5000)``; ``show_error(exc_or_message, title=...)``.
- ``run_worker(fn_or_generator, *, on_yield=None, on_done=None, on_error=None,
  description="", cancellable=True) -> WorkerHandle`` (``.cancel()``): runs off the GUI
  thread with a progress bar + Cancel button in the status bar; ``on_error`` defaults to
  ``show_error``; ``handle.set_progress(done, total)`` shows determinate progress.
- ``register_state_provider(name, get_state, set_state)``: the panel's state is saved in
  autosaves and sessions (see :mod:`medsam_gui.gui.session` for what ``get_state`` may
  return) and given back to ``set_state`` on restore; ``notify_state_changed()`` after it changed.
- ``add_shutdown_hook(fn)``; ``shutdown()``: runs the hooks once (last added first), cancels
  the workers and joins the background threads (bounded wait). The main window calls it
  when it closes and on ``QApplication.aboutToQuit``.

Panels are created by :func:`medsam_gui.app.build_app`, each module's ``install(controller)``.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..core import intensity
from ..core.labels import LabelTable, default_table
from ..core.orientation import DisplayOrientation
from ..core.volume import Volume
from ..errors import MedsamGuiError
from . import dialogs
from .display import DisplayMixin
from .label_edits import LabelEditsMixin, table_for_values
from .layer_adoption import LayerAdoptionMixin
from .layer_protection import LayerProtectionMixin
from .layers import (
    IMAGE_LAYER_NAME,
    VIEW_ORDERS,
    display_orientation,
    display_scale,
    labels_dtype_array,
)
from .scan_files import ScanFilesMixin
from .shutdown import ShutdownMixin
from .workers import WorkerHandle, start_worker

log = logging.getLogger(__name__)

class Controller(ScanFilesMixin, LabelEditsMixin, DisplayMixin, LayerAdoptionMixin, LayerProtectionMixin,
                 ShutdownMixin, QObject):
    volume_changed = Signal(object)
    labels_changed = Signal()
    active_label_changed = Signal(int)
    label_table_changed = Signal()
    window_changed = Signal(float, float)
    view_changed = Signal(str)
    state_changed = Signal()

    def __init__(self, viewer, window=None) -> None:
        super().__init__()
        self._viewer = viewer
        self._window = window  # medsam_gui.gui.main_window.MainWindow (status bar, docks)
        self._volume: Volume | None = None
        self._orientation: DisplayOrientation | None = None
        self._image_layer = None
        self._labels_layer = None
        self._table = LabelTable()
        self._deleted_entries: dict = {}  # value -> LabelInfo of labels deleted with their voxels
        self._active_label = 1
        self._labels_path: Path | None = None
        self._saved_digest: str | None = None
        self._view = "axial"
        self._init_label_edits()
        self._load_handle: WorkerHandle | None = None
        self._workers: list[WorkerHandle] = []
        self._auto_bounds: tuple[float, float] | None = None
        self._data_range = (0.0, 1.0)
        self.last_error: str | None = None
        self.error_boxes: list = []
        self._edge_overlays: dict[str, Any] = {}
        self._syncing = False
        self._state_providers: dict[str, tuple[Callable[[], dict], Callable[[dict], None]]] = {}
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._shut_down = False
        self._deletion_guarded = False  # layer_protection watches the viewer's deletions

    # ------------------------------------------------------------------ properties
    @property
    def viewer(self):
        return self._viewer

    @property
    def window(self):
        return self._window

    def attach_window(self, window) -> None:
        self._window = window

    @property
    def volume(self) -> Volume | None:
        return self._volume

    @property
    def orientation(self) -> DisplayOrientation | None:
        return self._orientation

    @property
    def image_layer(self):
        return self._image_layer

    @property
    def labels_layer(self):
        return self._labels_layer

    @property
    def label_table(self) -> LabelTable:
        return self._table

    @property
    def labels_path(self) -> Path | None:
        return self._labels_path

    @property
    def active_label(self) -> int:
        return self._active_label

    @active_label.setter
    def active_label(self, value: int) -> None:
        self.set_active_label(value)

    @property
    def window_bounds(self) -> tuple[float, float] | None:
        """(lo, hi) of the scan's display window, in scan units (HU for CT); None without a scan."""
        if self._image_layer is None:
            return None
        lo, hi = self._image_layer.contrast_limits
        return (float(lo), float(hi))

    @property
    def view(self) -> str:
        return self._view

    @property
    def view_axis(self) -> int:
        """Display axis the slider moves through in the current view (0 axial, 1 coronal, 2 sagittal)."""
        return VIEW_ORDERS[self._view][0]

    @property
    def busy(self) -> bool:
        return any(not h.finished for h in self._workers)

    # ------------------------------------------------------------------ display helpers
    def display_volume(self) -> np.ndarray:
        """Display-order view (no copy) of the scan array; shape = ``orientation.display_shape()``."""
        self._require_volume()
        return self._orientation.to_display(self._volume.array)

    def display_labels(self) -> np.ndarray:
        """The labels layer data: display order, uint16 (writing to it bypasses undo: use write_slice_mask)."""
        self._require_volume()
        return self._labels_layer.data

    def source_labels(self) -> np.ndarray:
        """The label map on the scan's own (z, y, x) grid (a view of the layer data)."""
        self._require_volume()
        return self._orientation.from_display(np.asarray(self._labels_layer.data))

    def current_slice(self, axis: int = 0) -> int:
        """Display index currently shown along display ``axis`` (0 = the axial slice)."""
        self._require_volume()
        point = self._viewer.dims.point
        data_point = self._image_layer.world_to_data(point)
        n = self._image_layer.data.shape[axis]
        return int(min(max(int(round(float(data_point[axis]))), 0), n - 1))

    def set_current_slice(self, axis: int, index: int) -> None:
        """Move the viewer to display ``index`` along display ``axis``."""
        self._require_volume()
        world = float(index) * float(self._image_layer.scale[axis]) + float(self._image_layer.translate[axis])
        self._viewer.dims.set_point(axis, world)

    def _require_volume(self) -> None:
        if self._volume is None:
            raise MedsamGuiError("No scan is open. Open a scan first (File > Open scan…).")

    # ------------------------------------------------------------------ scan / labels state
    def set_volume(self, volume: Volume, labels: np.ndarray | None = None, *,
                   label_table: LabelTable | None = None, labels_path: str | Path | None = None,
                   bounds: tuple[float, float] | None = None) -> None:
        """Show ``volume`` (replacing the current scan and labels) with optional labels (z, y, x)."""
        orientation = display_orientation(volume)
        if labels is None:
            lab = np.zeros(volume.shape, dtype=np.uint16)
            present: list[int] = []
        else:
            if tuple(labels.shape) != volume.shape:
                raise MedsamGuiError(
                    f"The label map's shape {tuple(labels.shape)} differs from the scan's {volume.shape}."
                )
            lab = labels_dtype_array(labels)
            present = [int(v) for v in np.unique(lab)]
        table = table_for_values(present, label_table)
        if not len(table):
            table = default_table(1)
        if bounds is None:
            bounds = intensity.default_bounds(volume.array, volume.modality)

        viewer = self._viewer
        scale = display_scale(volume, orientation)
        disp = orientation.to_display(volume.array)
        self._volume, self._orientation = volume, orientation
        self._auto_bounds = bounds if volume.modality != "CT" else None
        self._data_range = ((float(np.min(volume.array)), float(np.max(volume.array)))
                            if volume.array.size else (0.0, 1.0))
        self._table = table
        self._deleted_entries = {}
        image, labels_layer = self._image_layer, self._labels_layer
        reuse = (image is not None and labels_layer is not None
                 and image in viewer.layers and labels_layer in viewer.layers)
        if reuse:
            # re-using the layers is much faster than removing and adding them (napari rebuilds
            # its dims sliders and layer controls); their identity is not part of the API
            self._syncing = True
            try:
                image.data = disp
                image.scale = scale
                labels_layer.data = orientation.to_display(lab)
                labels_layer.scale = scale
            finally:
                self._syncing = False
            labels_layer._reset_history()
        else:
            self._remove_followed_layers()
            image = viewer.add_image(
                disp, name=IMAGE_LAYER_NAME, scale=scale, colormap="gray",
                contrast_limits=self._range_for(bounds), blending="opaque", units="mm",
            )
            self._follow_image_layer(image)
            labels_layer = self._add_labels_layer(orientation.to_display(lab), scale)
        self._image_layer, self._labels_layer = image, labels_layer
        self._set_contrast(bounds)
        self._apply_colormap()
        self._labels_path = Path(labels_path) if labels_path else None
        self._saved_digest = self._labels_digest()
        first = table.values()[0] if len(table) else 1
        self._active_label = -1
        self.set_active_label(first)
        viewer.layers.selection.active = labels_layer
        try:
            bar = viewer.canvas.overlays.scale_bar
            bar.visible = True
        except Exception:  # pragma: no cover - cosmetic only
            pass
        self.set_view("axial")
        mid = orientation.display_shape(volume.shape)[0] // 2
        self.set_current_slice(0, mid)
        if self._window is not None:
            self._window.on_volume_shown(volume, orientation)
        self.volume_changed.emit(volume)
        self.label_table_changed.emit()
        self.labels_changed.emit()
        self.window_changed.emit(*self.window_bounds)
        msg = f"Opened {volume.name or 'scan'}: {volume.size_xyz[0]}×{volume.size_xyz[1]}×{volume.size_xyz[2]}, " \
              f"{volume.spacing[0]:.3g}×{volume.spacing[1]:.3g}×{volume.spacing[2]:.3g} mm, {volume.modality}"
        if orientation.oblique:
            msg += " — oblique scan, shown in voxel order"
        for notice in volume.meta.get("notices") or []:
            msg += f" — {notice}"
        self.status(msg, 8000)

    def set_labels(self, labels_zyx: np.ndarray, *, label_table: LabelTable | None = None,
                   labels_path: str | Path | None = None, undoable: bool = False) -> None:
        """Replace the label map (z, y, x on the scan grid). Resets undo history unless ``undoable``."""
        self._require_volume()
        if tuple(labels_zyx.shape) != self._volume.shape:
            raise MedsamGuiError(
                f"The label map's shape {tuple(labels_zyx.shape)} differs from the scan's {self._volume.shape}."
            )
        lab = labels_dtype_array(labels_zyx)
        present = [int(v) for v in np.unique(lab)]
        base = label_table if label_table is not None else self._table
        self._table = table_for_values(present, base)
        disp = self._orientation.to_display(lab)
        if not undoable:
            self._deleted_entries = {}
        if undoable:
            current = self._labels_layer.data
            changed = np.nonzero(current != disp)
            if changed[0].size:
                with self._writing():
                    self._labels_layer.data_setitem(changed, disp[changed])
        else:
            self._labels_layer.data = disp
            self._labels_layer._reset_history()
        self._apply_colormap()
        if labels_path is not None:
            self._labels_path = Path(labels_path)
            self._saved_digest = self._labels_digest()
        if self._active_label not in self._table and len(self._table):
            self.set_active_label(self._table.values()[0])
        self.label_table_changed.emit()
        self.labels_changed.emit()

    # ------------------------------------------------------------------ UI services
    def _parent_widget(self):
        if self._window is not None:
            return self._window.qt_window
        return None

    def add_dock(self, widget, name: str, area: str = "right", *, tabify: bool = False):
        """Dock ``widget`` in the main window (area "right", "left", "bottom" or "top"; ``tabify``
        stacks it as a tab with the docks already there). Returns the dock widget."""
        if self._window is not None:
            return self._window.add_dock(widget, name, area, tabify=tabify)
        return self._viewer.window.add_dock_widget(widget, name=name, area=area, tabify=tabify)

    def status(self, message: str, timeout_ms: int = 5000) -> None:
        """Show a message in the status bar (cleared after ``timeout_ms``; 0 = keep)."""
        log.info("status: %s", message)
        if self._window is not None:
            self._window.show_status(message, timeout_ms)

    def show_error(self, exc_or_message: BaseException | str, title: str = "medsam-gui") -> None:
        """Tell the user something went wrong (dialog + status bar); the app keeps running.

        A MedsamGuiError's message is shown as is; an unexpected exception is shown as
        "Unexpected error" with its traceback under "Show Details".
        """
        details = None
        if isinstance(exc_or_message, MedsamGuiError):
            message = str(exc_or_message)
        elif isinstance(exc_or_message, BaseException):
            exc = exc_or_message
            message = f"Unexpected error: {type(exc).__name__}: {exc}\n\nThe app keeps running; your scan and labels are unchanged."
            details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
        else:
            message = str(exc_or_message)
        self.last_error = message
        first_line = message.splitlines()[0] if message else ""
        self.status(f"Error: {first_line}", 15000)
        self.error_boxes = [b for b in self.error_boxes if _alive(b)]
        box = dialogs.show_error_box(self._parent_widget(), title, message, details)
        self.error_boxes.append(box)

    def run_worker(self, fn_or_generator, *, on_yield: Callable | None = None, on_done: Callable | None = None,
                   on_error: Callable | None = None, description: str = "",
                   cancellable: bool = True) -> WorkerHandle:
        """Run work off the GUI thread with a status-bar progress bar and Cancel button.

        Callbacks run on the GUI thread. ``on_error`` defaults to :meth:`show_error`.
        Returns a :class:`~medsam_gui.gui.workers.WorkerHandle` (``.cancel()``).
        """
        def _on_error(exc):
            if on_error is not None:
                on_error(exc)
            else:
                self.show_error(exc)

        def _on_cancel():
            self.status(f"Cancelled: {description or 'background task'}")

        handle = start_worker(fn_or_generator, on_yield=on_yield, on_done=on_done, on_error=_on_error,
                              on_cancel=_on_cancel, description=description, cancellable=cancellable)
        self._workers = [h for h in self._workers if not h.finished] + [handle]
        if self._window is not None:
            self._window.track_worker(handle)
        return handle

    def cancel_all(self) -> None:
        for h in list(self._workers):
            if h.cancellable:
                h.cancel()

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Process Qt events until no worker runs (tests, scripts)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout_s
        while self.busy:
            QApplication.processEvents()
            if time.monotonic() > end:
                raise TimeoutError("background work did not finish")
            time.sleep(0.005)
        QApplication.processEvents()

    # ------------------------------------------------------------------ panel state (sessions)
    @property
    def state_providers(self) -> dict[str, tuple[Callable[[], dict], Callable[[dict], None]]]:
        """{name: (get_state, set_state)} of the registered panels (read by the SessionManager)."""
        return self._state_providers

    def register_state_provider(self, name: str, get_state: Callable[[], dict],
                                set_state: Callable[[dict], None]) -> None:
        """Have ``name``'s state saved in autosaves and sessions and restored with them.
        Re-registering a name replaces it."""
        if not isinstance(name, str) or not name:
            raise ValueError("a state provider needs a non-empty name")
        if not callable(get_state) or not callable(set_state):
            raise TypeError("get_state and set_state must be callables")
        self._state_providers[name] = (get_state, set_state)

    def unregister_state_provider(self, name: str) -> None:
        self._state_providers.pop(name, None)

    def notify_state_changed(self) -> None:
        """A panel's saved state changed (autosave follows)."""
        self.state_changed.emit()


def _alive(box) -> bool:
    try:
        return box.isVisible()
    except RuntimeError:
        return False
