"""The UniverSeg dock's support list: thumbnails, add / remove / pin, example-set files and the
pinned set as session state. The examples are :class:`~medsam_gui.core.support_set.SupportSlice`
(display slice index along the view axis); the live selection is a
:class:`~medsam_gui.core.support_selection.LiveSupport`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import QFileDialog, QListWidgetItem, QWidget

from .. import config
from ..core.orientation import plane
from ..core.support_set import SupportSet, SupportSlice, thumbnail
from ..errors import MedsamGuiError

EXAMPLE_SET_FILTER = "UniverSeg example sets (*.npz);;All files (*)"
THUMB = 48  # thumbnail size (pixels)
AXIS_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}


# module-level so tests replace them with monkeypatch
def ask_example_set_open_path(parent: QWidget | None) -> str | None:
    """File picker for an example set (.npz); returns the path or None."""
    start = config.get_setting("last_dir")
    path, _ = QFileDialog.getOpenFileName(parent, "Load UniverSeg example set",
                                          start if isinstance(start, str) else "", EXAMPLE_SET_FILTER)
    return path or None


def ask_example_set_save_path(parent: QWidget | None, suggested: str) -> str | None:
    """Save dialog for an example set; returns the path (``.npz`` appended if missing) or None."""
    start = config.get_setting("last_dir")
    start = str(Path(start) / suggested) if isinstance(start, str) else suggested
    path, _ = QFileDialog.getSaveFileName(parent, "Save UniverSeg example set", start, EXAMPLE_SET_FILTER)
    if not path:
        return None
    return path if path.lower().endswith(".npz") else path + ".npz"


def _icon(rgb: np.ndarray) -> QIcon:
    h, w, _ = rgb.shape
    qimg = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(qimg))


def _remember_folder(path) -> None:
    try:
        config.set_setting("last_dir", str(Path(path).parent))
    except OSError:
        pass


class SupportListMixin:
    """Support-list part of :class:`~medsam_gui.gui.universeg_panel.UniversegPanel`."""

    # ------------------------------------------------------------------ building examples
    def _make_item(self, index: int, axis: int, label: int, bounds, origin: str = "labels") -> SupportSlice:
        c = self.controller
        img = plane(c.display_volume(), int(index), axis)
        mask = plane(c.display_labels(), int(index), axis) == int(label)
        key = (id(c.volume), axis, int(index), int(label), bounds, hash(np.packbits(mask).tobytes()))
        item = self._live.cached(key, lambda: SupportSlice.from_slice(
            img, mask, bounds, index=index, axis=axis, label=label, source=self._scan_name(),
            modality=c.volume.modality))
        self._live_keys.append(key)
        return item if item.origin == origin else item.with_origin(origin)

    def thumbnail(self, item: SupportSlice) -> np.ndarray:
        """RGB uint8 (48, 48, 3) of ``item`` in the colour of the active label (cached)."""
        color = self._label_color(int(self.controller.active_label))
        key = (id(item.image), id(item.mask), color)
        th = self._thumbs.get(key)
        if th is None:
            th = self._thumbs[key] = thumbnail(item.image, item.mask, color, THUMB)
        return th

    def _schedule_refresh(self) -> None:
        if not self.isVisible():  # another dock in front: rebuilt when shown or asked for
            self._support_stale = True
        elif not self.pin_check.isChecked():
            self._refresh_timer.start()
        else:
            self._update_targets_label()

    def _fresh(self) -> None:
        """Rebuild now what changed while the panel was hidden or the refresh timer ran."""
        if self._support_stale or self._refresh_timer.isActive():
            self.refresh_support()

    def refresh_support(self) -> None:
        """Rebuild the support list from the labels (unless pinned) and the target range."""
        self._refresh_timer.stop()
        self._support_stale = False
        c = self.controller
        if not self.pin_check.isChecked():
            if c.volume is None:
                self._items = []
            else:
                axis, label, bounds = self._axis(), int(c.active_label), self._bounds()
                self._live_keys = []
                self._items = [self._make_item(i, axis, label, bounds, origin)
                               for i, origin in self._live.wanted(self.labeled(label, axis))]
                self._live.prune(self._live_keys)
        self._update_range_defaults()
        self._rebuild_support_list()

    def _used_positions(self) -> set[int]:
        from ..models.incontext_proposal import used_positions

        return used_positions(len(self._items), self.support_size_spin.value(), self.ensemble_spin.value(),
                              self._device())

    def _rebuild_support_list(self) -> None:
        used = self._used_positions()
        lst = self.support_list
        lst.clear()
        live = {(id(it.image), id(it.mask)) for it in self._items}
        self._thumbs = {k: v for k, v in self._thumbs.items() if k[:2] in live}
        for pos, it in enumerate(self._items):
            text = f"slice {it.index}" + (f" · {it.source}" if it.source and it.source != self._scan_name()
                                          or it.origin in ("pinned", "example set") else "")
            if not it.mask.any():
                text += " · negative"
            if it.origin == "added":
                text += " · added"
            if pos not in used:
                text += " · not used (S)"
            item = QListWidgetItem(_icon(self.thumbnail(it)), text)
            item.setData(Qt.ItemDataRole.UserRole, pos)
            item.setToolTip(f"{AXIS_NAMES.get(it.axis, it.axis)} slice {it.index} of {it.source or 'scan'} "
                            f"({it.origin}); window {it.bounds[0]:g}..{it.bounds[1]:g}; "
                            f"{int(it.mask.sum())} of 128×128 pixels in the mask")
            if pos not in used:
                item.setForeground(Qt.GlobalColor.gray)
            lst.addItem(item)
        n = len(self._items)
        pinned = self.pin_check.isChecked()
        if n == 0:
            self.support_label.setText("No examples yet: draw the active label on a few slices (or load an "
                                       "example set).")
        else:
            src = "pinned" if pinned else f"labeled {AXIS_NAMES.get(self._axis(), '')} slices of the active label"
            self.support_label.setText(f"{n} example{'s' if n != 1 else ''} ({src}); {len(used)} used per run.")
        self._update_targets_label()
        self._update_buttons()
        if pinned or self._was_pinned:
            self.controller.notify_state_changed()
        self._was_pinned = pinned
        self.support_changed.emit()

    # ------------------------------------------------------------------ queries
    def support_items(self) -> list[SupportSlice]:
        """The support list as shown (a copy of the list; items are shared)."""
        self._fresh()
        return list(self._items)

    def support_slices(self) -> list[int]:
        """Slice index of every support entry, in list order."""
        self._fresh()
        return [it.index for it in self._items]

    def thumbnail_icons(self) -> list[QIcon]:
        return [self.support_list.item(r).icon() for r in range(self.support_list.count())]

    def support_set(self, items: list[SupportSlice] | None = None) -> SupportSet:
        """The :class:`SupportSet` of ``items`` (default: the list) for the active label;
        SupportSetError when it is empty."""
        label = int(self.controller.active_label)
        info = self.controller.label_table.get(label)
        support = SupportSet(self._items if items is None else items,
                             info.name if info is not None else f"label {label}", label)
        support.require_examples()
        return support

    # ------------------------------------------------------------------ editing
    def add_current_slice(self) -> None:
        """Add the slice on screen (current view axis) with its mask of the active label."""
        c = self.controller
        if c.volume is None:
            return
        axis = self._axis()
        i = c.current_slice(axis)
        if self.pin_check.isChecked():
            if any(it.index == i and it.source == self._scan_name() and it.axis == axis for it in self._items):
                c.status(f"Slice {i} is already in the support set.")
                return
            self._items.append(self._make_item(i, axis, int(c.active_label), self._bounds(), "added"))
            self._rebuild_support_list()
        else:
            self._live.add(i)
            self.refresh_support()
        if not np.any(plane(c.display_labels(), i, axis) == int(c.active_label)):
            c.status(f"Slice {i} has no voxel of the active label: it is a negative example.", 6000)

    def remove_selected(self) -> None:
        """Drop the selected support entries."""
        rows = sorted({self.support_list.row(it) for it in self.support_list.selectedItems()}, reverse=True)
        if not rows:
            self.controller.status("Select the examples to remove in the support list first.")
            return
        if self.pin_check.isChecked():
            for r in rows:
                del self._items[r]
            self._rebuild_support_list()
            return
        for r in rows:
            self._live.remove(self._items[r].index)
        self.refresh_support()

    def _on_pin_toggled(self, on: bool) -> None:
        if on:
            self._items = [it.with_origin("pinned" if it.origin == "labels" else it.origin) for it in self._items]
            self._rebuild_support_list()
        else:
            self._live.reset()
            self.refresh_support()

    def set_pinned(self, on: bool) -> None:
        self.pin_check.setChecked(bool(on))

    def _on_support_double_clicked(self, item) -> None:
        pos = item.data(Qt.ItemDataRole.UserRole)
        it = self._items[int(pos)] if pos is not None and int(pos) < len(self._items) else None
        c = self.controller
        if it is None or c.volume is None or it.source != self._scan_name() or it.axis != self._axis():
            return
        c.set_current_slice(it.axis, it.index)

    def _set_items(self, items: list[SupportSlice]) -> None:
        """Show ``items`` pinned."""
        self.pin_check.blockSignals(True)
        self.pin_check.setChecked(True)
        self.pin_check.blockSignals(False)
        self._items = list(items)
        self._rebuild_support_list()

    # ------------------------------------------------------------------ example sets
    def save_example_set(self, path: str | Path | None = None) -> Path | None:
        """Save the support list as an example set (.npz); ``path`` None asks. Returns the path."""
        from ..core.example_sets import save_example_set

        c = self.controller
        try:
            support = self.support_set()
        except MedsamGuiError as exc:
            c.show_error(exc)
            return None
        if path is None:
            path = ask_example_set_save_path(self, f"{support.label_name.replace(' ', '_')}_examples.npz")
            if not path:
                return None
        try:
            written = save_example_set(path, support)
        except MedsamGuiError as exc:
            c.show_error(exc, title="Could not save the example set")
            return None
        _remember_folder(written)
        c.status(f"Saved {len(support)} examples of “{support.label_name}” to {written}", 8000)
        return Path(written)

    def load_example_set(self, path: str | Path | None = None) -> bool:
        """Replace the support list by a saved example set (and pin it); ``path`` None asks."""
        from ..core.example_sets import load_example_set

        c = self.controller
        if path is None:
            path = ask_example_set_open_path(self)
            if not path:
                return False
        try:
            es = load_example_set(path)
        except MedsamGuiError as exc:
            c.show_error(exc, title="Could not load the example set")
            return False
        self._set_items(es.slices)
        _remember_folder(path)
        c.status(f"Loaded {len(es)} examples of “{es.label_name}” ({es.modality}) from {Path(path).name}; "
                 "they segment the active label.", 8000)
        if es.axis != self._axis():
            c.status(f"Note: the example set holds {AXIS_NAMES.get(es.axis, es.axis)} slices; this view is "
                     f"{AXIS_NAMES.get(self._axis(), self._axis())}.", 8000)
        if c.volume is not None and es.modality not in ("unknown", c.volume.modality):
            c.status(f"Note: the example set is {es.modality}, this scan is {c.volume.modality}.", 8000)
        return True

    # ------------------------------------------------------------------ session state
    def get_state(self) -> dict:
        """State for sessions/autosave: ``{"pinned": False}`` while the list follows the labels;
        pinned: ``{"pinned": True, "label": value, "support": SupportSet.to_meta(),
        "support_sets": {value: SupportSet.to_arrays()}}`` (value = the active label)."""
        if not self.pin_check.isChecked() or not self._items:
            return {"pinned": False}
        support = self.support_set()
        label = max(1, support.label_value)
        return {"pinned": True, "label": label, "support": support.to_meta(),
                "support_sets": {label: support.to_arrays()}}

    def set_state(self, state: dict | None) -> None:
        """Restore what :meth:`get_state` returned (not pinned / empty: follow the labels)."""
        state = state or {}
        sets = state.get("support_sets") or {}
        if not state.get("pinned") or not sets:
            self.pin_check.setChecked(False)
            return
        key = state.get("label")
        arrays = sets.get(key, sets.get(str(key))) if key is not None else None
        if arrays is None:
            arrays = next(iter(sets.values()))
        self._set_items(SupportSet.from_arrays(arrays, state.get("support")).slices)
