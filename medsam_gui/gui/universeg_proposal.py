"""The UniverSeg dock's proposal: the ``"UniverSeg proposal"`` Labels layer (contours, display
order, the scan's scale and units), the list of proposed slices with check boxes, Accept (one
undo step) and Reject. The bookkeeping is :class:`medsam_gui.models.incontext_proposal.Proposal`.
"""

from __future__ import annotations


import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidgetItem

from ..core.orientation import plane

PROPOSAL_LAYER_NAME = "UniverSeg proposal"


def _slice_index(ndim: int, axis: int, index: int) -> tuple:
    idx: list = [slice(None)] * ndim
    idx[axis] = int(index)
    return tuple(idx)


class ProposalMixin:
    """Proposal part of :class:`~medsam_gui.gui.universeg_panel.UniversegPanel`."""

    @property
    def proposal(self):
        """The :class:`~medsam_gui.models.incontext_proposal.Proposal` under review, or None."""
        return self._proposal

    # ------------------------------------------------------------------ layer
    @property
    def proposal_layer(self):
        layer = self._layer
        if layer is not None and layer in self.controller.viewer.layers:
            return layer
        return None

    def _create_layer(self) -> None:
        c = self.controller
        lab = c.labels_layer
        shape = c.display_labels().shape
        prop = self._proposal
        top = max(prop.results) if prop is not None and prop.results else 1
        dtype = np.uint8 if top <= 255 else np.uint16
        old = self.proposal_layer
        if (old is not None and old.data.shape == shape and old.data.dtype == dtype
                and tuple(old.scale) == tuple(lab.scale) and tuple(old.translate) == tuple(lab.translate)):
            # a new run while the last proposal is still shown: reuse its layer (adding a layer
            # costs napari ~0.5-0.7 s of GUI thread)
            old.data[...] = 0
            self._layer_stale = False
            self._apply_layer_colormap()
            old.refresh()
            return
        self._remove_layer()
        units = getattr(lab, "units", None)  # the scan's physical units (mm): no napari warning
        kw = {"units": units} if units is not None else {}
        layer = c.viewer.add_labels(np.zeros(shape, dtype=dtype), name=PROPOSAL_LAYER_NAME,
                                    scale=tuple(lab.scale), translate=tuple(lab.translate), opacity=0.8, **kw)
        layer.contour = 1
        layer.editable = False
        self._layer = layer
        self._layer_stale = False
        self._apply_layer_colormap()
        c.viewer.layers.selection.active = lab

    def _apply_layer_colormap(self) -> None:
        from .layers import label_colormap

        if self._layer is not None:
            self._layer.colormap = label_colormap(self.controller.label_table,
                                                  self._proposal.results.keys() if self._proposal else ())

    def _paint_layer_slice(self, i: int) -> None:
        layer, prop = self.proposal_layer, self._proposal
        if layer is None or prop is None:
            return
        sl = _slice_index(3, prop.axis, i)
        if i in prop.unchecked or i not in prop.indices:
            layer.data[sl] = 0
        else:
            comb = prop.combined(i)
            prop.counts(i, comb)
            layer.data[sl] = comb.astype(layer.data.dtype)

    def _on_screen(self, axis: int, indices) -> bool:
        """Whether any of display slices ``indices`` along ``axis`` is drawn now (3D view, a
        view across that axis, or the current slice)."""
        c = self.controller
        dims = c.viewer.dims
        if dims.ndisplay == 3 or axis in dims.displayed:
            return True
        return int(c.current_slice(axis)) in {int(i) for i in indices}

    def _remove_layer(self) -> None:
        layer, self._layer = self._layer, None
        if layer is not None and layer in self.controller.viewer.layers:
            self.controller.viewer.layers.remove(layer)

    def _discard_proposal(self, keep_layer: bool = False) -> None:
        """Forget the proposal and remove its layer (``keep_layer``: empty it instead, for a new
        run about to reuse it; ``segment_rest`` removes it if that run does not start)."""
        self._proposal = None
        layer = self.proposal_layer if keep_layer else None
        if layer is not None:
            layer.data[...] = 0
            layer.refresh()
        else:
            self._remove_layer()
        self._rebuild_proposal_list()
        self._update_buttons()

    def _on_table_changed(self) -> None:
        self._apply_layer_colormap()

    # ------------------------------------------------------------------ list
    def _rebuild_proposal_list(self) -> None:
        lst = self.proposal_list
        lst.blockSignals(True)
        lst.clear()
        prop = self._proposal
        if prop is None:
            self.proposal_label.setText("No proposal.")
            lst.blockSignals(False)
            self.proposal_changed.emit()
            return
        table = self.controller.label_table
        for i in prop.indices:
            parts = []
            for v, k in prop.counts(i):
                if len(prop.results) > 1:
                    info = table.get(v)
                    parts.append(f"{info.name if info else v} {k:,} px")
                else:
                    parts.append(f"{k:,} px")
            item = QListWidgetItem(f"slice {i}: " + ", ".join(parts))
            item.setData(Qt.ItemDataRole.UserRole, int(i))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked if i in prop.unchecked else Qt.CheckState.Checked)
            lst.addItem(item)
        lst.blockSignals(False)
        done, planned = len(prop.indices), len(prop.planned)
        state = ("running" if self.running else "complete" if prop.complete else
                 "cancelled — partial" if prop.cancelled else "")
        self.proposal_label.setText(f"{done} of {planned} slices proposed ({state}); "
                                    f"{len(prop.checked())} ticked.")
        self.proposal_changed.emit()

    def proposal_slices(self) -> list[int]:
        """Slices with a proposal (display indices along the proposal's axis)."""
        return self._proposal.indices if self._proposal is not None else []

    def checked_slices(self) -> list[int]:
        return self._proposal.checked() if self._proposal is not None else []

    def set_slice_checked(self, index: int, checked: bool) -> None:
        """Tick / untick proposed slice ``index`` (same as clicking its check box)."""
        for r in range(self.proposal_list.count()):
            item = self.proposal_list.item(r)
            if int(item.data(Qt.ItemDataRole.UserRole)) == int(index):
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
                return
        raise KeyError(f"slice {index} has no proposal")

    def _on_proposal_item_changed(self, item) -> None:
        prop = self._proposal
        if prop is None:
            return
        i = int(item.data(Qt.ItemDataRole.UserRole))
        if item.checkState() == Qt.CheckState.Checked:
            prop.unchecked.discard(i)
        else:
            prop.unchecked.add(i)
        self._paint_layer_slice(i)
        if self._layer is not None:
            self._layer.refresh()
        done, planned = len(prop.indices), len(prop.planned)
        self.proposal_label.setText(f"{done} of {planned} slices proposed; {len(prop.checked())} ticked.")
        self.proposal_changed.emit()

    def _on_proposal_item_clicked(self, item) -> None:
        prop, c = self._proposal, self.controller
        if prop is None or c.volume is not prop.volume:
            return
        c.set_current_slice(prop.axis, int(item.data(Qt.ItemDataRole.UserRole)))

    def _check_all(self, on: bool) -> None:
        for r in range(self.proposal_list.count()):
            self.proposal_list.item(r).setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    # ------------------------------------------------------------------ accept / reject
    def accept(self, slices: list[int] | None = None) -> list[int]:
        """Write the ticked (or the given) proposed slices into the labels as ONE undo step.

        A slice where a label is drawn at this moment is never changed for that label; other
        labels' voxels are kept unless "Overwrite other labels". Removes the proposal. Returns
        the slices written."""
        c = self.controller
        prop = self._proposal
        if prop is None or self.running:
            return []
        if c.volume is not prop.volume:
            self._discard_proposal()
            return []
        chosen = prop.checked() if slices is None else [int(i) for i in slices if int(i) in prop.indices]
        overwrite = self.overwrite_check.isChecked()
        data = c.display_labels()
        active = int(c.active_label)
        written, skipped, active_written = [], 0, []
        try:
            with c.edit_group():
                for i in chosen:
                    masks, user_slice = prop.writes(i, plane(data, i, prop.axis))
                    skipped += user_slice
                    wrote = {v for v, m in masks
                             if c.write_slice_mask(prop.axis, i, m, v, overwrite_other=overwrite)}
                    if wrote:
                        written.append(i)
                    if active in wrote:
                        active_written.append(i)
        except Exception as exc:  # noqa: BLE001 - shown to the user; the proposal is dropped
            c.show_error(exc, title="Could not write the UniverSeg result")
        self._discard_proposal()
        msg = f"UniverSeg: accepted {len(written)} slice(s) (Edit > Undo removes them at once)."
        if skipped:
            msg += f" Skipped {skipped} slice(s) already labeled."
        if written:
            msg += " " + self._examples_after_accept(prop.axis, active_written)
        c.status(msg, 10000)
        return written

    def _examples_after_accept(self, axis: int, slices: list[int]) -> str:
        """Keep the accepted ``slices`` of the active label out of the live support set unless
        "Add accepted slices to the examples" is ticked; returns the sentence saying which."""
        if self.pin_check.isChecked():
            return "The support set is pinned: the accepted slices did not join the examples."
        if axis != self._axis():
            return "The accepted slices run along another view's axis: the examples are unchanged."
        if self.add_accepted_check.isChecked():
            return ("They now join the support set as examples (untick “Add accepted slices to the "
                    "examples” to keep them out).")
        for i in slices:
            self._live.remove(i)
            if any(j == i for j, _origin in self._live.wanted([i])):  # it was also added by hand
                self._live.remove(i)
        self.refresh_support()
        return "They were kept out of the support set (examples)."

    def reject(self) -> None:
        """Discard the proposal (nothing is written)."""
        if self.running:
            self.cancel()
        had = self._proposal is not None
        self._discard_proposal()
        if had:
            self.controller.status("UniverSeg proposal rejected.", 5000)
