"""The label half of :class:`~medsam_gui.gui.controller.Controller`: the label table
(names, colours, the active label), napari paint events, undoable slice writes and undo/redo.

Every method here is a ``Controller`` method (this mixin only keeps controller.py short); it
uses the controller's layers, table and signals.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.labels import LabelInfo, LabelTable
from ..core.orientation import plane
from . import dialogs
from .layers import label_colormap


def table_for_values(values, base: LabelTable | None = None) -> LabelTable:
    """``base`` (copied) plus a default entry for every value in ``values`` (0 ignored)."""
    table = base.copy() if base is not None else LabelTable()
    for v in values:
        v = int(v)
        if v != 0 and v not in table:
            table.add(v)
    return table


def _slice_of_atoms(atoms) -> tuple[int, int] | None:
    """(axis, index) of the one slice that napari history atoms (``data_setitem``'s (indices,
    old, new) tuples) all wrote in, else None (brush strokes, 3D writes, anything else)."""
    common: dict[int, int] | None = None
    for atom in atoms if isinstance(atoms, (list, tuple)) else ():
        if not (isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple)):
            return None
        here = {}
        for axis, ix in enumerate(atom[0]):
            ix = np.asarray(ix)
            if ix.size and ix.min() == ix.max():
                here[axis] = int(ix.flat[0])
        common = here if common is None else {a: i for a, i in common.items() if here.get(a) == i}
        if not common:
            return None
    return next(iter(common.items())) if common else None


class LabelEditsMixin:
    """Label table and label-map edits of the controller (see controller.py for the API)."""

    def _init_label_edits(self) -> None:
        self._group_depth = 0
        self._group_dirty = False
        self._group_slices: set = set()  # slices the open group wrote ((axis, index); None: unknown)
        self._edited_slice: tuple[int, int] | None = None
        self._own_write = False  # a controller method is writing through data_setitem

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
            with self._writing():
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
        if self._own_write:  # the writer announces its edit itself, once the data is written
            return
        edited = _slice_of_atoms(getattr(event, "value", None))
        if self._group_depth:
            self._group_dirty = True
            self._group_slices.add(edited)
            return
        self._emit_slice_changed(edited)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Our own ``data_setitem`` calls: napari's paint event (sent before the data is written)
        is not forwarded; the caller emits ``labels_changed`` afterwards."""
        self._own_write = True
        try:
            yield
        finally:
            self._own_write = False

    @property
    def edited_slice(self) -> tuple[int, int] | None:
        """While ``labels_changed`` is emitted: (display axis, index) of the only slice that
        changed, or None (anything may have changed)."""
        return self._edited_slice

    def _emit_slice_changed(self, edited: tuple[int, int] | None) -> None:
        self._edited_slice = edited
        try:
            self.labels_changed.emit()
        finally:
            self._edited_slice = None

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
        current = plane(data, index, axis)  # a view (np.take would copy the whole map first)
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
        with self._writing():
            layer.data_setitem(tuple(full), values)
        if self._group_depth:  # the group's commit (napari's paint event) names the slices
            self._group_dirty = True
        else:
            self._emit_slice_changed((axis, index))
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
        self._group_slices = set()
        try:
            with self._labels_layer.block_history():
                yield
        finally:
            self._group_depth = 0
            slices, self._group_slices = self._group_slices, set()
            if self._group_dirty:
                self._group_dirty = False
                self._emit_slice_changed(next(iter(slices)) if len(slices) == 1 else None)

    def _labels_layer_shown(self) -> bool:
        """The labels layer exists and is in the viewer (not deleted, not yet replaced)."""
        return self._labels_layer is not None and self._labels_layer in self._viewer.layers

    def undo(self) -> None:
        if self._labels_layer_shown():
            self._labels_layer.undo()
            self._sync_deleted_entries()
            self.labels_changed.emit()

    def redo(self) -> None:
        if self._labels_layer_shown():
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
