"""Controller mixin: the layers the controller follows, and why they cannot be deleted by accident.

napari deletes the selected layers on Ctrl+Backspace / Ctrl+Delete, on the layer list's bin
button and on Delete in the layer list. The scan and labels layers carry napari's deletion lock
(``LayerLock.DELETION``, a padlock in the layer list), so every one of those paths leaves them
in place; the keys and the bin button also say why in the status bar. Unlocking the labels
layer (the layer list's context menu, "Toggle lock") asks first, as its labels and undo history
go with the layer; the scan layer locks itself again.

When the labels layer is removed all the same (after that question, or by a script), an empty
labels layer on the same grid takes its place as soon as the removal is over: undo, save,
autosave and the panels then work on that layer, never on the one that is gone, and Save asks
for a new file name rather than overwrite the old labels file with an empty map.
"""

from __future__ import annotations

import numpy as np
from napari.layers.base import LayerLock
from qtpy.QtCore import QTimer

from . import dialogs
from .layers import LABELS_LAYER_NAME
from .undo import apply_history_budget, history_budget

DELETE_KEYS = ("Control-Backspace", "Control-Delete")  # napari's "delete selected layers"


def deletion_locked(layer) -> bool:
    """True when napari refuses to delete ``layer`` from the UI (it shows a padlock)."""
    return bool(layer.locked & LayerLock.DELETION)


class LayerProtectionMixin:
    """Following, protecting and replacing the controller's layers (see the module docs)."""

    # ------------------------------------------------------------------ following layers
    def _add_labels_layer(self, data: np.ndarray, scale, translate=None):
        """Add a labels layer (display-order ``data``) that the controller follows and protects."""
        layer = self._viewer.add_labels(data, name=LABELS_LAYER_NAME, scale=scale, opacity=0.6, units="mm",
                                        **({} if translate is None else {"translate": translate}))
        self._follow_labels_layer(layer)
        return layer

    def _follow_labels_layer(self, layer) -> None:
        layer.events.paint.connect(self._on_layer_paint)
        layer.events.selected_label.connect(self._on_layer_selected_label)
        # napari's own Ctrl+Z / Ctrl+Shift+Z on the layer go through the controller, so every
        # undo/redo announces labels_changed (autosave, measurements follow)
        layer.bind_key("Control-z", lambda _layer: self.undo(), overwrite=True)
        layer.bind_key("Control-Shift-z", lambda _layer: self.redo(), overwrite=True)
        self._protect_layer(layer)

    def _unfollow_labels_layer(self, layer) -> None:
        layer.events.paint.disconnect(self._on_layer_paint)
        layer.events.selected_label.disconnect(self._on_layer_selected_label)
        layer.bind_key("Control-z", None)
        layer.bind_key("Control-Shift-z", None)
        self._release_layer(layer)

    def _follow_image_layer(self, layer) -> None:
        layer.events.contrast_limits.connect(self._on_contrast_limits)
        self._protect_layer(layer)

    def _unfollow_image_layer(self, layer) -> None:
        layer.events.contrast_limits.disconnect(self._on_contrast_limits)
        self._release_layer(layer)

    def _remove_followed_layers(self) -> None:
        """Take the controller's layers out of the viewer on purpose (a scan replaces them)."""
        followed = ((self._labels_layer, self._unfollow_labels_layer),
                    (self._image_layer, self._unfollow_image_layer))
        self._labels_layer = self._image_layer = None
        for layer, unfollow in followed:
            if layer is not None:
                unfollow(layer)
                if layer in self._viewer.layers:
                    self._viewer.layers.remove(layer)

    # ------------------------------------------------------------------ protection
    def _protect_layer(self, layer) -> None:
        layer.locked = layer.locked | LayerLock.DELETION
        layer.events.locked.connect(self._on_lock_changed)
        self._guard_layer_deletion()

    def _release_layer(self, layer) -> None:
        layer.events.locked.disconnect(self._on_lock_changed)
        layer.locked = LayerLock.NONE

    def _guard_layer_deletion(self) -> None:
        """Once per controller: watch removals, answer the delete keys and the bin button."""
        if self._deletion_guarded:
            return
        self._deletion_guarded = True
        viewer = self._viewer
        viewer.layers.events.removed.connect(self._on_layer_removed)
        def delete_selected_layers_but_scan_and_labels(_viewer) -> None:  # named: the F1 list shows it
            self.delete_selected_layers()

        for key in DELETE_KEYS:
            viewer.bind_key(key, delete_selected_layers_but_scan_and_labels, overwrite=True)
        if self._window is not None:
            self._window.qt_viewer.layerButtons.deleteButton.clicked.connect(self._explain_kept_layers)

    def delete_selected_layers(self) -> None:
        """Delete the selected layers except the protected ones (the status bar says which stayed)."""
        layers = self._viewer.layers
        for layer in [la for la in layers.selection if not deletion_locked(la)]:
            layers.remove(layer)
        self._explain_kept_layers()

    def _explain_kept_layers(self, _checked: bool = False) -> None:
        kept = [la for la in self._viewer.layers.selection if deletion_locked(la)]
        if self._image_layer in kept:
            self.status("The scan layer was not deleted: it is the scan you segment. "
                        "Open another scan (File > Open scan…) to replace it.", 10000)
        elif self._labels_layer in kept:
            self.status("The labels layer was not deleted: it holds your segmentation. To delete it anyway, "
                        "unlock it first (right-click it in the layer list: Toggle lock).", 10000)
        elif kept:
            self.status(f"Locked layers were not deleted: {', '.join(la.name for la in kept)}.", 10000)

    def _on_lock_changed(self, event) -> None:
        layer = event.source
        if deletion_locked(layer):
            return
        if layer is self._image_layer:
            layer.locked = layer.locked | LayerLock.DELETION
            self.status("The scan layer stays locked: it is the scan you segment. "
                        "Open another scan (File > Open scan…) to replace it.", 10000)
            return
        if layer is not self._labels_layer:
            return
        voxels = int(np.count_nonzero(layer.data))
        text = (f"Allow deleting the labels layer “{layer.name}”? Deleting it discards its {voxels:,} labelled "
                "voxels and their undo history (Undo cannot bring them back); an empty labels layer takes "
                "its place.")
        if self.has_unsaved_labels():
            text += "\n\nThe labels have unsaved changes: save them first (File > Save labels)."
        if dialogs.ask_yes_no(self._parent_widget(), "Unlock the labels layer", text):
            self.status("The labels layer is unlocked: the bin button or Ctrl+Backspace now deletes it.", 10000)
        else:
            layer.locked = layer.locked | LayerLock.DELETION
            self.status("The labels layer stays locked.")

    # ------------------------------------------------------------------ removal
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is not self._labels_layer:
            return
        self._unfollow_labels_layer(layer)
        # after the removal is over: napari may be removing several layers, or closing the viewer
        QTimer.singleShot(0, lambda gone=layer: self._replace_labels_layer(gone))

    def _replace_labels_layer(self, gone) -> None:
        """An empty labels layer on ``gone``'s grid becomes the labels layer (see module docs)."""
        layers = self._viewer.layers
        if (self._shut_down or self._labels_layer is not gone or gone in layers
                or self._image_layer not in layers):
            return
        layer = self._add_labels_layer(np.zeros(gone.data.shape, dtype=gone.data.dtype),
                                       tuple(gone.scale), tuple(gone.translate))
        budget = history_budget(gone)
        if budget is not None:
            apply_history_budget(layer, budget.budget_bytes)
        self._labels_layer = layer
        self._deleted_entries = {}
        self._labels_path = None
        self._apply_colormap()
        self._saved_digest = self._labels_digest()
        self.set_active_label(self._active_label)
        layers.selection.active = layer
        self.label_table_changed.emit()
        self.labels_changed.emit()
        self.status("The labels layer was deleted with its undo history; an empty labels layer took its place "
                    "(Save asks for a new file name).", 10000)
