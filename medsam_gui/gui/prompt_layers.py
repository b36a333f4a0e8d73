"""MedSAM's prompt layers: the napari Shapes layer ``"prompts"`` (boxes and RECIST lines the user
draws; data = display voxel coordinates, same scale as the image) and ``"RECIST boxes"`` (the
square box each line is segmented with, read-only), their geometry (``core.prompts``) and their
saved state.

Every prompt carries the label it was drawn for (feature ``label``) and a stable id (feature
``pid``, > 0; a shape just drawn has -1 until :class:`PromptLayers` numbers it). While a box or
line is being drawn, ``drawing(index)`` follows when the mouse rests (:data:`DRAW_REST_MS`
after a move: the panel decodes the shape then, so its mask is ready when the mouse is
released there; decoding at every move would keep the decoder busy with boxes already left).

Saved state (``get_state`` / ``set_state``, the session's "medsam_prompts" provider):
``core.prompts.prompts_to_state`` with the vertices in the scan's own (z, y, x) voxel indices,
so the prompts come back on the same slices when the scan is reopened.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..core import prompts as cp
from ..errors import MedsamGuiError

PROMPTS_LAYER_NAME = "prompts"
RECIST_BOXES_LAYER_NAME = "RECIST boxes"
RECIST_BOX_COLOR = "#ffd54a"
DRAW_REST_MS = 25  # no mouse move for this long while drawing: the shape is decoded ahead


def _action_name(event) -> str:
    action = getattr(event, "action", None)
    return str(getattr(action, "value", action))


def _kind(shape_type: str, n_vertices: int) -> str:
    return "recist" if shape_type == "line" or (shape_type == "path" and n_vertices == 2) else "box"


class PromptLayers(QObject):
    """The prompt layers of ``controller``'s scan; ``recist_margin()`` gives the RECIST margin (px).

    Signals: ``drawn(pid)`` a new prompt; ``moved(pid)`` a prompt was moved/resized;
    ``removed(set)`` prompts were deleted (the set: pids still present); ``edited()`` any change
    of the prompts (for the session's autosave); ``drawing(index)`` the shape at ``index`` is
    being drawn and was just moved.
    """

    drawing = Signal(int)
    drawn = Signal(int)
    moved = Signal(int)
    removed = Signal(object)
    edited = Signal()

    def __init__(self, controller, recist_margin: Callable[[], float], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.recist_margin = recist_margin
        self._layer = None
        self._boxes = None
        self._pids = itertools.count(1)
        self._restoring = False
        self._rest = QTimer(self)
        self._rest.setSingleShot(True)
        self._rest.setInterval(DRAW_REST_MS)
        self._rest.timeout.connect(self._announce_drawing)

    # ------------------------------------------------------------------ layers
    def _alive(self, layer) -> bool:
        return layer is not None and layer in self.controller.viewer.layers

    @property
    def exists(self) -> bool:
        return self._alive(self._layer)

    @property
    def layer(self):
        """The Shapes layer "prompts" (created on demand, same scale as the image)."""
        c = self.controller
        if self._alive(self._layer):
            return self._layer
        if c.volume is None:
            raise MedsamGuiError("No scan is open. Open a scan first (File > Open scan…).")
        img = c.image_layer
        units = getattr(img, "units", None)
        common = dict(ndim=3, scale=tuple(img.scale), translate=tuple(img.translate), face_color="transparent",
                      **({"units": units} if units is not None else {}))
        layer = c.viewer.add_shapes(
            name=PROMPTS_LAYER_NAME, edge_color="yellow", edge_width=1.5,
            features={"label": np.zeros(0, dtype=int), "pid": np.zeros(0, dtype=int)}, **common)
        layer.feature_defaults = {"label": int(c.active_label), "pid": -1}
        layer.events.data.connect(self._on_data)
        layer.mouse_drag_callbacks.append(self._on_drag)
        boxes = c.viewer.add_shapes(name=RECIST_BOXES_LAYER_NAME, edge_color=RECIST_BOX_COLOR, edge_width=1.0,
                                    opacity=0.7, **common)
        boxes.editable = False
        # the prompts layer stays the active one (on top, receiving the user's drawing)
        c.viewer.layers.move(c.viewer.layers.index(boxes), c.viewer.layers.index(layer))
        c.viewer.layers.selection.active = layer
        self._boxes = boxes
        self._layer = layer
        return layer

    @property
    def recist_boxes_layer(self):
        """The Shapes layer showing the square box of each RECIST line (or None)."""
        return self._boxes if self._alive(self._boxes) else None

    def reset(self) -> None:
        """Remove both layers (a new scan is shown)."""
        for layer in (self._layer, self._boxes):
            if self._alive(layer):
                self.controller.viewer.layers.remove(layer)
        self._layer = None
        self._boxes = None

    def set_default_label(self, value: int) -> None:
        if self._layer is not None:
            self._layer.feature_defaults = {"label": int(value), "pid": -1}

    def activate(self, mode: str) -> None:
        """Make the prompts layer active in napari ``mode`` ("add_rectangle", "add_line", "select")."""
        c = self.controller
        layer = self.layer
        layer.feature_defaults = {"label": int(c.active_label), "pid": -1}
        c.viewer.layers.selection.active = layer
        layer.mode = mode

    def clear(self) -> None:
        layer = self._layer
        if layer is not None and len(layer.data):
            layer.selected_data = set(range(len(layer.data)))
            layer.remove_selected()

    # ------------------------------------------------------------------ geometry
    def pid_index(self, pid: int) -> int | None:
        layer = self._layer
        if layer is None or not len(layer.data):
            return None
        hits = np.flatnonzero(np.asarray(layer.features["pid"]) == pid)
        return int(hits[0]) if hits.size else None

    def _shape(self):
        c = self.controller
        return c.orientation.display_shape(c.volume.shape)

    def prompt(self, i: int) -> cp.Prompt:
        """Prompt ``i`` of the layer (display voxel coordinates)."""
        layer = self.layer
        verts = np.asarray(layer.data[i], dtype=float)
        return cp.Prompt(_kind(layer.shape_type[i], len(verts)), int(layer.features["label"].iloc[i]), verts)

    def geometry(self, i: int) -> tuple[int, int, tuple, str, int]:
        """(display axis, slice index, box (x0, y0, x1, y1) clipped to the slice, kind "box" or
        "recist", label) of prompt ``i``. Raises MedsamGuiError when it lies outside the scan."""
        p = self.prompt(i)
        try:
            axis, index, box = cp.prompt_slice_box(p.vertices, p.kind, self._shape(),
                                                   int(self.controller.view_axis), float(self.recist_margin()))
        except ValueError as exc:
            raise MedsamGuiError(str(exc)) from exc
        return axis, index, box.xyxy(), p.kind, p.label

    def _placed(self):
        layer = self._layer
        if not self._alive(layer):
            return
        for i in range(len(layer.data)):
            try:
                axis, index, box, kind, label = self.geometry(i)
            except MedsamGuiError:
                continue
            yield axis, index, cp.Box(*box), label, kind

    def key_boxes(self, axis: int, label: int) -> dict[int, tuple]:
        """{slice index: box} of the prompts of ``label`` on display ``axis`` (union per slice)."""
        return cp.key_boxes(((a, i, b, lab) for a, i, b, lab, _k in self._placed()), int(axis), int(label))

    def update_recist_boxes(self) -> None:
        """Show, for every RECIST line of the prompts layer, the square box MedSAM gets."""
        boxes = self.recist_boxes_layer
        if boxes is None:
            return
        rects = [cp.box_corners(a, i, b) for a, i, b, _lab, kind in self._placed() if kind == "recist"]
        boxes.data = []
        if rects:
            boxes.add_rectangles(rects, edge_color=RECIST_BOX_COLOR, edge_width=1.0)

    # ------------------------------------------------------------------ events
    def _on_drag(self, layer, event):
        """napari drag callback: while a box or RECIST line is drawn, ``drawing`` once the mouse
        rests (napari's own callback moves the shape after this one)."""
        if str(layer.mode) not in ("add_rectangle", "add_line"):
            return
        yield
        while event.type == "mouse_move":
            self._rest.start()
            yield
        self._rest.stop()  # released: the prompt is segmented as drawn

    def _announce_drawing(self) -> None:
        layer = self._layer
        if not self._alive(layer) or not len(layer.data):
            return
        unnumbered = np.flatnonzero(np.asarray(layer.features["pid"]) < 0)  # the shape being drawn
        if unnumbered.size:
            self.drawing.emit(int(unnumbered[-1]))

    def _on_data(self, event) -> None:
        action = _action_name(event)
        layer = self._layer
        if layer is None or action not in ("added", "changed", "removed"):
            return
        self.update_recist_boxes()
        if self._restoring:
            return
        pids = np.asarray(layer.features["pid"]).astype(int) if len(layer.data) else np.zeros(0, int)
        if action == "added":
            for i in np.flatnonzero(pids < 0):
                pid = next(self._pids)
                layer.features.loc[int(i), "pid"] = pid
                self.drawn.emit(pid)
        elif action == "changed":
            for i in event.data_indices:
                i = int(i)
                if -len(pids) <= i < len(pids) and pids[i] > 0:
                    self.moved.emit(int(pids[i]))
        else:
            self.removed.emit(set(pids.tolist()))
        self.edited.emit()

    # ------------------------------------------------------------------ saved state
    def get_state(self) -> dict:
        """``core.prompts.prompts_to_state`` of the prompts, vertices in source (z, y, x) voxels."""
        c = self.controller
        layer = self._layer
        if c.volume is None or not self._alive(layer):
            return {"shapes": []}
        shape = c.volume.shape
        return cp.prompts_to_state([self.prompt(i) for i in range(len(layer.data))],
                                   lambda v: c.orientation.display_to_index(v, shape))

    def set_state(self, state: dict | None) -> None:
        """Replace the prompts by the saved ones (nothing is segmented: the labels are restored
        by the session)."""
        c = self.controller
        if c.volume is None:
            return
        shape = c.volume.shape
        saved = cp.prompts_from_state(state, lambda v: c.orientation.index_to_display(v, shape))
        self.clear()
        if not saved:
            return
        layer = self.layer
        self._restoring = True
        try:
            for p in saved:
                layer.feature_defaults = {"label": p.label, "pid": next(self._pids)}
                if p.kind == "recist":
                    layer.add_lines([p.vertices])
                else:
                    layer.add_rectangles([p.vertices])
        finally:
            self._restoring = False
            layer.feature_defaults = {"label": int(c.active_label), "pid": -1}
        self.update_recist_boxes()
