"""The application controller: the one object that holds the open scan, its labels and the
napari layers, and the hooks later panels (MedSAM box tool, 3D propagation, UniverSeg,
sessions) build on.

Coordinates. The controller shows everything in *display order* (see
:mod:`medsam_gui.core.orientation`): display axis 0 = slices (inferior -> superior),
1 = rows (anterior -> posterior), 2 = columns (patient right -> left). Layer data are numpy
views of the scan's (z, y, x) arrays; ``layer.scale`` is the display spacing (mm). Export
always maps the labels back with ``orientation.from_display`` onto the source grid. Oblique
scans are shown in voxel order (identity transform) with a visible notice.

Hooks for panels (stable API)
-----------------------------
Signals (Qt):

- ``volume_changed(object)``: a new scan is shown (the :class:`Volume`); read the layers
  from the controller again (they may be the same layer objects, with new data).
- ``labels_changed()``: the label map was replaced or edited through the controller (after
  a load, ``set_labels``, ``write_slice_mask`` outside a group, the end of an ``edit_group``,
  ``delete_label``, and napari paint/erase/fill strokes).
- ``active_label_changed(int)``: the label value new edits use.
- ``label_table_changed()``: names/colours/entries of the table changed.
- ``window_changed(float, float)``: display window (lo, hi) changed.
- ``view_changed(str)``: "axial" | "coronal" | "sagittal".

Properties: ``viewer`` (napari.Viewer), ``volume`` (Volume | None), ``orientation``
(DisplayOrientation | None), ``image_layer`` / ``labels_layer`` (napari layers | None),
``label_table`` (LabelTable), ``active_label`` (int, settable), ``window_bounds``
((lo, hi) floats as displayed), ``view`` (current view name), ``view_axis`` (display axis
the slider moves through in the current view), ``labels_path`` (Path | None).

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

Panel modules ``medsam_gui.gui.medsam_panel``, ``medsam_gui.gui.universeg_panel`` and
``medsam_gui.gui.session`` are installed by :func:`medsam_gui.app.build_app` when they exist
and define ``install(controller)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..core import intensity
from ..core.labels import LabelInfo, LabelTable, default_table
from ..core.orientation import DisplayOrientation
from ..core.volume import Volume
from ..errors import MedsamGuiError
from . import dialogs
from .layers import (
    IMAGE_LAYER_NAME,
    LABELS_LAYER_NAME,
    VIEW_ORDERS,
    display_orientation,
    display_scale,
    label_colormap,
    labels_dtype_array,
    view_spec,
)
from .workers import WorkerHandle, start_worker

log = logging.getLogger(__name__)

LABEL_FILE_SUFFIXES = (".label", ".txt")
_EDGE_POSITIONS = ("top_center", "bottom_center", "middle_left", "middle_right")


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[:-7]
    return path.stem


def description_beside(labels_path: str | Path) -> Path | None:
    """``<stem>.label`` (or ``.txt``) next to a label map, if it exists."""
    p = Path(labels_path)
    for suffix in (".label", ".txt"):
        cand = p.with_name(_stem(p) + suffix)
        if cand.is_file():
            return cand
    return None


def table_for_values(values, base: LabelTable | None = None) -> LabelTable:
    """``base`` (copied) plus a default entry for every value in ``values`` (0 ignored)."""
    table = base.copy() if base is not None else LabelTable()
    for v in values:
        v = int(v)
        if v != 0 and v not in table:
            table.add(v)
    return table


class Controller(QObject):
    volume_changed = Signal(object)
    labels_changed = Signal()
    active_label_changed = Signal(int)
    label_table_changed = Signal()
    window_changed = Signal(float, float)
    view_changed = Signal(str)

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
        self._group_depth = 0
        self._group_dirty = False
        self._load_handle: WorkerHandle | None = None
        self._workers: list[WorkerHandle] = []
        self._auto_bounds: tuple[float, float] | None = None
        self._data_range = (0.0, 1.0)
        self.last_error: str | None = None
        self.error_boxes: list = []
        self._edge_overlays: dict[str, Any] = {}
        self._syncing = False

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
            for layer in (labels_layer, image):
                if layer is not None and layer in viewer.layers:
                    viewer.layers.remove(layer)
            image = viewer.add_image(
                disp, name=IMAGE_LAYER_NAME, scale=scale, colormap="gray",
                contrast_limits=self._range_for(bounds), blending="opaque", units="mm",
            )
            labels_layer = viewer.add_labels(
                orientation.to_display(lab), name=LABELS_LAYER_NAME, scale=scale, opacity=0.6, units="mm",
            )
            labels_layer.events.paint.connect(self._on_layer_paint)
            labels_layer.events.selected_label.connect(self._on_layer_selected_label)
            # napari's own Ctrl+Z / Ctrl+Shift+Z on the layer go through the controller, so
            # every undo/redo announces labels_changed (autosave, measurements follow).
            labels_layer.bind_key("Control-z", lambda _layer: self.undo(), overwrite=True)
            labels_layer.bind_key("Control-Shift-z", lambda _layer: self.redo(), overwrite=True)
            image.events.contrast_limits.connect(self._on_contrast_limits)
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

    def _labels_digest(self) -> str | None:
        if self._labels_layer is None:
            return None
        h = hashlib.blake2b(digest_size=16)
        data = np.ascontiguousarray(self._labels_layer.data)
        h.update(memoryview(data).cast("B"))
        h.update(repr(self._table.to_dict()).encode())
        return h.hexdigest()

    def mark_labels_unsaved(self) -> None:
        """Treat the current labels as not saved in any file (e.g. after a crash recovery):
        quitting or opening another scan asks first."""
        self._saved_digest = None

    def has_unsaved_labels(self) -> bool:
        """True when the labels (or their names/colours) changed since they were opened or saved."""
        if self._labels_layer is None:
            return False
        return self._labels_digest() != self._saved_digest

    def confirm_discard(self, what: str = "continue") -> bool:
        """Ask about unsaved labels; True when it is fine to drop them (saved or discarded)."""
        if not self.has_unsaved_labels():
            return True
        answer = dialogs.ask_unsaved(self._parent_widget(), what)
        if answer == "save":
            return self.save_labels() is not None
        return answer == "discard"

    # ------------------------------------------------------------------ opening
    def open_scan(self, path: str | Path, *, labels: str | Path | None = None, series_uid: str | None = None,
                  component: int | None = None, confirm: bool = True) -> WorkerHandle | None:
        """Load a scan file or DICOM folder off the GUI thread and show it.

        Several DICOM series -> a chooser dialog; a 4D / multi-channel scan -> a component
        chooser. Errors are shown and the current scan and labels stay as they are.
        Returns the worker handle, or None when the user cancelled.
        """
        if confirm and not self.confirm_discard("open another scan"):
            return None
        path = Path(path)
        if self._load_handle is not None and not self._load_handle.finished:
            self._load_handle.cancel()

        def work():
            from .. import io as mio

            try:
                volume = mio.load_volume(path, series_uid=series_uid, component=component)
            except MedsamGuiError as exc:
                if getattr(exc, "series", None):
                    return {"kind": "series", "series": exc.series}
                if getattr(exc, "n_components", None):
                    return {"kind": "component", "n": exc.n_components, "what": getattr(exc, "kind", "components")}
                raise
            bounds = intensity.default_bounds(volume.array, volume.modality)
            result = {"kind": "ok", "volume": volume, "bounds": bounds}
            if labels is not None:
                try:
                    result.update(self._read_labels_files(mio, labels, volume))
                except Exception as exc:  # the scan opens; the labels error is shown after
                    result["labels_error"] = exc
            return result

        def done(result):
            if result["kind"] == "series":
                uid = dialogs.choose_series(self._parent_widget(), str(path), result["series"])
                if uid:
                    self.open_scan(path, labels=labels, series_uid=uid, component=component, confirm=False)
                else:
                    self.status("Opening cancelled.")
                return
            if result["kind"] == "component":
                comp = dialogs.choose_component(self._parent_widget(), str(path), result["n"], result["what"])
                if comp is not None:
                    self.open_scan(path, labels=labels, series_uid=series_uid, component=comp, confirm=False)
                else:
                    self.status("Opening cancelled.")
                return
            self.set_volume(result["volume"], result.get("labels"), label_table=result.get("table"),
                            labels_path=labels if result.get("labels") is not None else None,
                            bounds=result["bounds"])
            if "labels_error" in result:
                self.show_error(result["labels_error"], title="Could not open the labels")

        self._load_handle = self.run_worker(work, on_done=done, description=f"Opening {path.name}…")
        return self._load_handle

    @staticmethod
    def _read_labels_files(mio, labels_path, volume: Volume) -> dict:
        """Worker side of opening labels: the map (z, y, x) and its table (description beside it)."""
        arr = mio.load_labels(labels_path, like=volume)
        arr = labels_dtype_array(arr)
        desc = description_beside(labels_path)
        table = mio.read_label_description(desc) if desc is not None else None
        return {"labels": arr, "table": table}

    def open_labels(self, path: str | Path, *, confirm: bool = True) -> WorkerHandle | None:
        """Load a label map onto the current scan (same grid) off the GUI thread.

        A label map on another grid shows GeometryMismatchError's message and leaves the
        current labels untouched. A ``<stem>.label`` file beside it supplies names/colours.
        """
        if self._volume is None:
            self.show_error("Open a scan before opening labels: a label map is shown on its scan.")
            return None
        if confirm and not self.confirm_discard("open other labels"):
            return None
        path = Path(path)
        volume = self._volume

        def work():
            from .. import io as mio

            return self._read_labels_files(mio, path, volume)

        def done(result):
            if self._volume is not volume:  # the scan changed meanwhile
                return
            self.set_labels(result["labels"], label_table=result["table"] or LabelTable(), labels_path=path)
            self.status(f"Opened labels {path.name} ({len(self._table)} labels).")

        return self.run_worker(work, on_done=done, description=f"Opening labels {path.name}…")

    # ------------------------------------------------------------------ saving
    def suggested_labels_path(self) -> Path:
        if self._labels_path is not None:
            return self._labels_path
        if self._volume is not None and self._volume.path:
            p = Path(self._volume.path)
            folder = p if p.is_dir() else p.parent
            return folder / f"{_stem(p) if not p.is_dir() else p.name}_labels.nii.gz"
        return Path.home() / "labels.nii.gz"

    def save_labels(self, path: str | Path | None = None, *, ask: bool = False) -> Path | None:
        """Write the labels on the scan's source grid (``io.save_labels(..., like=volume)``).

        ``path=None``: the current labels file, or ask for one the first time (or when ``ask``).
        Also writes ``<stem>.label`` with the names. Returns the path written, None if cancelled
        or failed (the error is shown).
        """
        if self._volume is None:
            self.show_error("There is no scan open, so there are no labels to save.")
            return None
        if path is None:
            if self._labels_path is None or ask:
                chosen = dialogs.ask_save_file(self._parent_widget(), "Save labels as",
                                               self.suggested_labels_path(), dialogs.LABELS_SAVE_FILTER)
                if not chosen:
                    return None
                path = chosen
            else:
                path = self._labels_path
        path = Path(path)
        try:
            from .. import io as mio

            arr = np.ascontiguousarray(self.source_labels())
            written = mio.save_labels(arr, self._volume, path, label_table=self._table, overwrite=True)
        except Exception as exc:
            self.show_error(exc, title="Could not save the labels")
            return None
        written = Path(written) if written else path
        self._labels_path = written
        self._saved_digest = self._labels_digest()
        self.status(f"Saved labels to {written}", 8000)
        return written

    # ------------------------------------------------------------------ label table
    def _apply_colormap(self) -> None:
        if self._labels_layer is None:
            return
        was, self._syncing = self._syncing, True  # napari re-emits selected_label on a new colormap
        try:
            self._labels_layer.colormap = label_colormap(self._table)
        finally:
            self._syncing = was

    def add_label(self, name: str | None = None, color=None, value: int | None = None) -> LabelInfo:
        """Add a label (next free value unless given) and make it the active label."""
        info = self._table.add(value, name, color)
        self._apply_colormap()
        self.label_table_changed.emit()
        self.set_active_label(info.value)
        return info

    def rename_label(self, value: int, name: str) -> None:
        self._table.rename(value, name)
        self.label_table_changed.emit()

    def recolor_label(self, value: int, color) -> None:
        """Set a label's colour: (r, g, b[, a]) floats 0..1; the layer follows."""
        self._table.recolour(value, color)
        self._apply_colormap()
        self.label_table_changed.emit()

    def set_label_visible(self, value: int, visible: bool) -> None:
        self._table.set_visible(value, visible)
        self._apply_colormap()
        self.label_table_changed.emit()

    def delete_label(self, value: int, *, confirm: bool = True) -> bool:
        """Remove a label from the table and erase its voxels (one undoable edit). Asks first."""
        info = self._table.get(value)
        if info is None:
            return False
        count = 0
        if self._labels_layer is not None:
            count = int(np.count_nonzero(self._labels_layer.data == value))
        if confirm:
            text = f"Delete label {value} “{info.name}”"
            text += f" and erase its {count:,} voxels?" if count else "?"
            if count:
                text += " (Edit > Undo brings the voxels back.)"
            if not dialogs.ask_yes_no(self._parent_widget(), "Delete label", text):
                return False
        if count:
            idx = np.nonzero(self._labels_layer.data == value)
            self._labels_layer.data_setitem(idx, 0)
        removed = self._table.remove(value)
        if count:  # Undo brings the voxels back: it brings the entry (name, colour) back too
            self._deleted_entries[value] = removed
        if self._active_label == value:
            values = self._table.values()
            self.set_active_label(values[0] if values else self._table.next_free_value())
        self._apply_colormap()
        self.label_table_changed.emit()
        if count:
            self.labels_changed.emit()
        self.status(f"Deleted label {value} ({info.name}).")
        return True

    def set_active_label(self, value: int) -> None:
        """The label value new edits (napari brush/fill, MedSAM, UniverSeg) use."""
        value = int(value)
        if self._labels_layer is not None and self._labels_layer.selected_label != value:
            self._syncing = True
            try:
                self._labels_layer.selected_label = value
            finally:
                self._syncing = False
        if value != self._active_label:
            self._active_label = value
            self.active_label_changed.emit(value)

    def import_label_descriptions(self, path: str | Path) -> None:
        """Read an ITK-SNAP label description file; its names/colours replace the table's entries."""
        from .. import io as mio

        try:
            table = mio.read_label_description(path)
        except Exception as exc:
            self.show_error(exc, title="Could not import label descriptions")
            return
        present = [int(v) for v in np.unique(self._labels_layer.data)] if self._labels_layer is not None else []
        self._table = table_for_values(present, table)
        self._apply_colormap()
        self.label_table_changed.emit()
        if self._active_label not in self._table and len(self._table):
            self.set_active_label(self._table.values()[0])
        self.status(f"Imported {len(table)} label descriptions from {Path(path).name}.")

    def export_label_descriptions(self, path: str | Path) -> Path | None:
        from .. import io as mio

        try:
            written = mio.write_label_description(path, self._table)
        except Exception as exc:
            self.show_error(exc, title="Could not export label descriptions")
            return None
        self.status(f"Wrote label descriptions to {path}.")
        return Path(written) if written else Path(path)

    # ------------------------------------------------------------------ layer events
    def _on_layer_paint(self, event=None) -> None:
        if self._group_depth:
            self._group_dirty = True
            return
        self.labels_changed.emit()

    def _on_layer_selected_label(self, event=None) -> None:
        if self._syncing or self._labels_layer is None:
            return
        value = int(self._labels_layer.selected_label)
        if value != 0 and value not in self._table:
            self._table.add(value)
            self._apply_colormap()
            self.label_table_changed.emit()
        if value != self._active_label:
            self._active_label = value
            self.active_label_changed.emit(value)

    def _on_contrast_limits(self, event=None) -> None:
        if self._syncing or self._image_layer is None:
            return
        self.window_changed.emit(*self.window_bounds)

    # ------------------------------------------------------------------ writing masks
    def write_slice_mask(self, axis: int, index: int, mask2d: np.ndarray, label: int, *,
                         overwrite_other: bool = False) -> int:
        """Write ``label`` where ``mask2d`` is True on display slice ``index`` along display ``axis``.

        ``mask2d``: bool, shape of ``np.take(display_labels, index, axis)``. Pixels of ``label``
        on that slice outside the mask become 0 (a re-segmentation replaces the previous
        result); voxels of other labels are kept unless ``overwrite_other``. One undo step (or
        part of the enclosing ``edit_group``). Returns the number of voxels changed.
        """
        self._require_volume()
        layer = self._labels_layer
        data = layer.data
        axis = int(axis)
        index = int(index)
        label = int(label)
        if not 0 <= axis < 3 or not 0 <= index < data.shape[axis]:
            raise IndexError(f"slice {index} along display axis {axis} is outside {data.shape}")
        if label <= 0:
            raise ValueError(f"label must be >= 1, got {label}")
        mask = np.asarray(mask2d, dtype=bool)
        current = np.take(data, index, axis=axis)
        if mask.shape != current.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the slice shape {current.shape}")
        new = current.copy()
        new[(current == label) & ~mask] = 0
        writable = mask if overwrite_other else mask & ((current == 0) | (current == label))
        new[writable] = label
        changed = np.nonzero(new != current)
        n = int(changed[0].size)
        if n == 0:
            return 0
        values = new[changed]
        full = list(changed)
        full.insert(axis, np.full(n, index, dtype=changed[0].dtype))
        if label not in self._table:
            self._table.add(label)
            self._apply_colormap()
            self.label_table_changed.emit()
        layer.data_setitem(tuple(full), values)
        if self._group_depth:
            self._group_dirty = True
        else:
            self.labels_changed.emit()
        return n

    @contextlib.contextmanager
    def edit_group(self) -> Iterator[None]:
        """Group all label edits inside into ONE undo step (napari ``Labels.block_history``)."""
        self._require_volume()
        if self._group_depth:
            self._group_depth += 1
            try:
                yield
            finally:
                self._group_depth -= 1
            return
        self._group_depth = 1
        self._group_dirty = False
        try:
            with self._labels_layer.block_history():
                yield
        finally:
            self._group_depth = 0
            if self._group_dirty:
                self._group_dirty = False
                self.labels_changed.emit()

    def undo(self) -> None:
        if self._labels_layer is not None:
            self._labels_layer.undo()
            self._sync_deleted_entries()
            self.labels_changed.emit()

    def redo(self) -> None:
        if self._labels_layer is not None:
            self._labels_layer.redo()
            self._sync_deleted_entries()
            self.labels_changed.emit()

    def _sync_deleted_entries(self) -> None:
        """After undo/redo: a deleted label whose voxels came back is in the table again (its
        name and colour as they were); one whose voxels are gone again (redo) leaves it again."""
        deleted = self._deleted_entries
        if not deleted or self._labels_layer is None:
            return
        data = self._labels_layer.data
        changed = False
        for value, info in list(deleted.items()):
            present = bool(np.any(data == value))
            if present and value not in self._table:
                self._table.add(info)
                changed = True
            elif not present and value in self._table and self._table[value] == info:
                self._table.remove(value)
                if self._active_label == value:
                    values = self._table.values()
                    self.set_active_label(values[0] if values else self._table.next_free_value())
                changed = True
        if changed:
            self._apply_colormap()
            self.label_table_changed.emit()

    # ------------------------------------------------------------------ window / level
    def _range_for(self, bounds, disp=None) -> tuple[float, float]:
        lo, hi = float(bounds[0]), float(bounds[1])
        if hi <= lo:
            hi = lo + 1.0
        return (lo, hi)

    def _set_contrast(self, bounds) -> None:
        layer = self._image_layer
        lo, hi = self._range_for(bounds)
        dmin, dmax = self._data_range
        rlo, rhi = min(lo, dmin), max(hi, dmax)
        if rhi <= rlo:
            rhi = rlo + 1.0
        self._syncing = True
        try:
            layer.contrast_limits_range = (rlo, rhi)
            layer.contrast_limits = (lo, hi)
        finally:
            self._syncing = False

    def set_window(self, lo: float, hi: float) -> None:
        """Show the scan with display window [lo, hi] (scan units). The data never change."""
        self._require_volume()
        if not hi > lo:
            raise MedsamGuiError(f"The window's upper bound ({hi}) must be above its lower bound ({lo}).")
        self._set_contrast((lo, hi))
        self.window_changed.emit(*self.window_bounds)

    def set_level_width(self, level: float, width: float) -> None:
        if width <= 0:
            raise MedsamGuiError(f"The window width must be positive, got {width}.")
        self.set_window(*intensity.window_bounds(level, width))

    def apply_preset(self, name: str) -> None:
        """A CT preset from ``intensity.WINDOW_PRESETS`` ("soft tissue", "lung", "bone", "brain", "liver")."""
        if name not in intensity.WINDOW_PRESETS:
            raise MedsamGuiError(f"Unknown window preset {name!r}; choose one of {', '.join(intensity.WINDOW_PRESETS)}.")
        self.set_level_width(*intensity.WINDOW_PRESETS[name])

    def auto_window(self) -> None:
        """MR auto window (0.5/99.5 percentiles of voxels > 0; ``intensity.mr_auto_bounds``)."""
        self._require_volume()
        if self._auto_bounds is None:
            self._auto_bounds = intensity.mr_auto_bounds(self._volume.array)
        self.set_window(*self._auto_bounds)

    def default_window(self) -> None:
        self._require_volume()
        self.set_window(*intensity.default_bounds(self._volume.array, self._volume.modality)
                        if self._volume.modality == "CT" or self._auto_bounds is None else self._auto_bounds)

    # ------------------------------------------------------------------ views
    def set_view(self, view: str) -> None:
        """Show the "axial", "coronal" or "sagittal" view (superior up, patient right on screen left)."""
        if self._orientation is None:
            self._view = view
            return
        spec = view_spec(view, self._orientation)
        viewer = self._viewer
        viewer.dims.ndisplay = 2
        viewer.dims.axis_labels = ("z", "y", "x") if self._orientation.oblique else ("axial", "coronal", "sagittal")
        viewer.dims.order = spec.order
        viewer.camera.orientation2d = spec.camera
        self._view = view
        self._update_edge_letters(spec)
        viewer.reset_view()
        self.view_changed.emit(view)

    def _update_edge_letters(self, spec) -> None:
        try:
            from napari.components.overlays import TextOverlay
        except ImportError:  # pragma: no cover - older napari: no letters
            return
        overlays = self._viewer.canvas.overlays
        prefix = "≈" if spec.approximate else ""
        for pos, letter in zip(_EDGE_POSITIONS, spec.edges):
            key = f"medsam_edge_{pos}"
            text = f"{prefix}{letter}" if letter and letter != "?" else ""
            if key not in self._edge_overlays:
                overlay = TextOverlay(text=text, position=pos, visible=True, font_size=13, color=(1.0, 0.85, 0.2, 1.0))
                overlays[key] = overlay
                self._edge_overlays[key] = overlay
            else:
                self._edge_overlays[key].text = text

    def edge_letters(self) -> dict[str, str]:
        """Letters now shown at the screen edges: {"top", "bottom", "left", "right"}."""
        names = ("top", "bottom", "left", "right")
        return {n: self._edge_overlays[f"medsam_edge_{p}"].text if f"medsam_edge_{p}" in self._edge_overlays else ""
                for n, p in zip(names, _EDGE_POSITIONS)}

    # ------------------------------------------------------------------ napari plugin: adopting layers
    def adopt_layers(self, image_layer, labels_layer=None) -> None:
        """Work on layers already in the viewer (made by the napari plugin's reader).

        ``image_layer.metadata["medsam_gui"]["volume"]`` is its scan (a Volume) and its data the
        scan in display order. ``labels_layer`` (display order, the same grid) holds the label
        map; without one a labels layer on the image's grid is added. Afterwards the layers
        behave as those ``set_volume`` makes (undo, paint events, window); the layers this
        controller had before are left in the viewer but no longer followed.
        Raises MedsamGuiError for an image layer the reader did not make.
        """
        from ..napari_plugin.reader import METADATA_KEY, source_of

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
        # follow these layers instead of the current ones (which stay in the viewer)
        old_image, old_labels = self._image_layer, self._labels_layer
        if old_labels is not None and old_labels is not labels_layer:
            old_labels.events.paint.disconnect(self._on_layer_paint)
            old_labels.events.selected_label.disconnect(self._on_layer_selected_label)
            old_labels.bind_key("Control-z", None)
            old_labels.bind_key("Control-Shift-z", None)
        if old_image is not None and old_image is not image_layer:
            old_image.events.contrast_limits.disconnect(self._on_contrast_limits)
        if labels_layer is not old_labels:
            labels_layer.events.paint.connect(self._on_layer_paint)
            labels_layer.events.selected_label.connect(self._on_layer_selected_label)
            labels_layer.bind_key("Control-z", lambda _layer: self.undo(), overwrite=True)
            labels_layer.bind_key("Control-Shift-z", lambda _layer: self.redo(), overwrite=True)
        if image_layer is not old_image:
            image_layer.events.contrast_limits.connect(self._on_contrast_limits)
        self._image_layer, self._labels_layer = image_layer, labels_layer
        self.set_volume(volume, labels, labels_path=None)

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
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout_s
        while self.busy:
            QApplication.processEvents()
            if time.monotonic() > end:
                raise TimeoutError("background work did not finish")
            time.sleep(0.005)
        QApplication.processEvents()


def _alive(box) -> bool:
    try:
        return box.isVisible()
    except RuntimeError:
        return False
