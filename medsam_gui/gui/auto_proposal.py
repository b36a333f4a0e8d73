"""The Auto-segment dock's proposal: the "Auto-segment proposal" layer (one colour per structure,
the colour its label will get), the list of proposed structures with their volumes and check
boxes, Accept (new named labels, ONE undo step) and Reject."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QListWidgetItem

from ..core.labels import DEFAULT_COLORS_255, default_color
from ..core.volume import Volume
from ..models.auto_model import Structure
from ..models.auto_models import label_map

PROPOSAL_LAYER_NAME = "Auto-segment proposal"
KEY_ROLE = Qt.ItemDataRole.UserRole


@dataclass
class AutoProposal:
    """What a run proposed on ``volume``: ``structures`` still under review (run order),
    ``masks`` (key -> uint8 (z, y, x) on the scan's grid), ``colors`` (key -> RGBA 0..1 of the
    label each will become)."""

    volume: Volume
    structures: list[Structure]
    masks: dict[str, np.ndarray]
    colors: dict[str, tuple]


def planned_colors(table, structures) -> dict[str, tuple]:
    """A colour per structure, distinct from the labels' colours and from each other (as long as
    the palette lasts)."""
    used = {info.color_255 for info in table}
    free = [c for c in DEFAULT_COLORS_255 if c not in used]
    out = {}
    for i, s in enumerate(structures):
        if i < len(free):
            r, g, b = free[i]
            out[s.key] = (r / 255.0, g / 255.0, b / 255.0, 1.0)
        else:
            out[s.key] = default_color(len(table) + i + 1)
    return out


class AutoProposalMixin:
    """Proposal part of :class:`~medsam_gui.gui.auto_panel.AutoPanel`."""

    @property
    def proposal(self) -> AutoProposal | None:
        return self._proposal

    def proposal_keys(self) -> list[str]:
        """Keys of the structures under review, in run order."""
        return [s.key for s in self._proposal.structures] if self._proposal is not None else []

    @property
    def proposal_layer(self):
        layer = self._layer
        return layer if layer is not None and layer in self.controller.viewer.layers else None

    def _show_proposal(self, volume: Volume, chosen, masks: dict) -> None:
        c = self.controller
        self._proposal = AutoProposal(volume, list(chosen), {s.key: masks[s.key] for s in chosen},
                                      planned_colors(c.label_table, chosen))
        self._paint_layer()
        self._fill_proposal_list()
        empty = [s.title for s in chosen if not masks[s.key].any()]
        msg = f"Auto-segment proposed {len(chosen)} structure(s): review, then Accept or Reject."
        c.status(msg + (f" Nothing found for {', '.join(empty)}." if empty else ""), 10000)

    # ------------------------------------------------------------------ layer
    def _paint_layer(self) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        c, prop = self.controller, self._proposal
        if prop is None or not prop.structures:
            self._remove_layer()
            return
        combined = label_map([prop.masks[s.key] for s in prop.structures])
        data = np.ascontiguousarray(c.orientation.to_display(combined))
        colors = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
        colors.update({i: prop.colors[s.key] for i, s in enumerate(prop.structures, start=1)})
        layer = self.proposal_layer
        if layer is None:
            lab = c.labels_layer
            units = getattr(lab, "units", None)
            kw = {"units": units} if units is not None else {}
            layer = c.viewer.add_labels(data, name=PROPOSAL_LAYER_NAME, scale=tuple(lab.scale),
                                        translate=tuple(lab.translate), opacity=0.6, **kw)
            layer.editable = False
            self._layer = layer
            c.viewer.layers.selection.active = lab
        else:
            layer.data = data
        layer.colormap = DirectLabelColormap(color_dict=colors)

    def _remove_layer(self) -> None:
        layer, self._layer = self._layer, None
        if layer is not None and layer in self.controller.viewer.layers:
            self.controller.viewer.layers.remove(layer)

    # ------------------------------------------------------------------ list
    def _fill_proposal_list(self) -> None:
        lst, prop = self.proposal_list, self._proposal
        lst.blockSignals(True)
        lst.clear()
        if prop is not None:
            voxel_ml = prop.volume.voxel_volume_mm3 / 1000.0
            for s in prop.structures:
                n = int(np.count_nonzero(prop.masks[s.key]))
                item = QListWidgetItem(f"{s.title}: {n:,} voxels, {n * voxel_ml:.1f} mL")
                item.setData(KEY_ROLE, s.key)
                pix = QPixmap(12, 12)
                pix.fill(QColor.fromRgbF(*prop.colors[s.key]))
                item.setIcon(QIcon(pix))
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked)
                lst.addItem(item)
        lst.blockSignals(False)
        self.proposal_label.setText("No proposal." if prop is None else
                                    f"{len(prop.structures)} structure(s) proposed. Tick the ones to accept or "
                                    f"reject.")
        self._update_buttons()
        self.proposal_changed.emit()

    def _ticked_proposals(self) -> list[str]:
        lst = self.proposal_list
        return [lst.item(r).data(KEY_ROLE) for r in range(lst.count())
                if lst.item(r).checkState() == Qt.CheckState.Checked]

    def set_proposal_checked(self, key: str, checked: bool) -> None:
        """Tick / untick the proposed structure ``key`` (like clicking its check box)."""
        for r in range(self.proposal_list.count()):
            item = self.proposal_list.item(r)
            if item.data(KEY_ROLE) == key:
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
                return
        raise KeyError(f"{key} is not proposed")

    # ------------------------------------------------------------------ accept / reject
    def _label_name(self, s: Structure) -> str:
        names = {info.name for info in self.controller.label_table}
        name, n = s.title, 2
        while name in names:
            name, n = f"{s.title} {n}", n + 1
        return name

    def accept(self, keys=None) -> dict[str, int]:
        """Write the structures ``keys`` (default: all proposed) as new labels named after them,
        as ONE undo step; returns {key: label value}. Voxels of existing labels are kept unless
        "Overwrite existing labels"; where accepted structures overlap the smaller wins."""
        c, prop = self.controller, self._proposal
        if prop is None or self.running:
            return {}
        if c.volume is not prop.volume:
            self._discard_proposal()
            return {}
        wanted = None if keys is None else set(keys)
        chosen = [s for s in prop.structures if wanted is None or s.key in wanted]
        if not chosen:
            return {}
        combined = c.orientation.to_display(label_map([prop.masks[s.key] for s in chosen]))
        target = combined > 0
        if not self.overwrite_check.isChecked():
            target &= c.display_labels() == 0
        voxels = np.nonzero(target)  # one pass over the volume; then per structure over these voxels
        values = combined[voxels]
        written: dict[str, int] = {}
        try:
            with c.edit_group():
                for i, s in enumerate(chosen, start=1):
                    mine = values == i
                    if not mine.any():
                        continue
                    info = c.add_label(self._label_name(s), prop.colors[s.key])
                    c.labels_layer.data_setitem(tuple(v[mine] for v in voxels), info.value)
                    written[s.key] = info.value
        except Exception as exc:  # noqa: BLE001 - shown to the user; the proposal stays for another try
            c.show_error(exc, title="Could not write the auto-segmentation")
            return written
        run = self.last_run
        self.accepted += [{"model": s.model, "key": s.key, "title": s.title, "value": written[s.key],
                           "modality": run.get("modality"), "overlap": run.get("overlap")}
                          for s in chosen if s.key in written]
        c.notify_state_changed()
        self._drop(set(s.key for s in chosen))
        c.status(f"Auto-segment: accepted {len(written)} structure(s) as new labels "
                 f"(Edit > Undo removes them at once).", 8000)
        return written

    def reject(self, keys=None) -> list[str]:
        """Drop the structures ``keys`` (default: all) from the proposal; returns their keys."""
        if self._proposal is None:
            return []
        dropped = [k for k in self.proposal_keys() if keys is None or k in set(keys)]
        self._drop(set(dropped))
        self.controller.status(f"Auto-segment: rejected {len(dropped)} structure(s).", 5000)
        return dropped

    def _drop(self, keys: set[str]) -> None:
        prop = self._proposal
        prop.structures = [s for s in prop.structures if s.key not in keys]
        if not prop.structures:
            self._discard_proposal()
            return
        self._paint_layer()
        self._fill_proposal_list()

    def _discard_proposal(self) -> None:
        self._proposal = None
        self._remove_layer()
        self._fill_proposal_list()
