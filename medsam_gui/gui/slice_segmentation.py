"""Segment one display slice from a box and write the result to the labels (the box and RECIST
tools' GUI side).

Each result is written with ``controller.write_slice_mask`` as ONE undo step: the slice's
pixels of that label become (previous pixels of the label, minus this prompt's previous
result) | new mask; other labels' voxels are kept unless "overwrite other labels" is ticked.
With MedSAM the box is decoded on the EmbeddingService's decoder thread (``segment_async``; a box
decoded ahead while it was drawn is not decoded again). On an embedded slice the GUI thread
waits up to :data:`WAIT_FOR_MASK_S` for the mask, so that it is painted before the canvas
redraws (with software OpenGL a redraw takes ~100 ms); a slower one follows asynchronously;
an injected segmenter ``fn(index, box_xyxy) -> bool (H, W)`` runs at once on the GUI thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..core.orientation import plane

WAIT_FOR_MASK_S = 0.03  # the GUI thread waits this long for a box's mask; a slower one arrives later


class SliceSegmentation(QObject):
    """Box -> mask -> labels for ``controller``, through ``service`` (an EmbeddingService).

    ``overwrite_other()``: whether results may replace other labels' voxels. ``wanted(token)``:
    whether a result for ``token`` (a prompt id, or a tuple for a scripted box) is still wanted
    when it arrives. Signal ``painted(axis, index)`` after a result is written. ``timings``:
    per result ``decode_ms``, ``paint_ms``, ``total_ms``, ``box``.
    """

    painted = Signal(int, int)

    def __init__(self, controller, service, overwrite_other: Callable[[], bool],
                 wanted: Callable[[object], bool], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.service = service
        self.overwrite_other = overwrite_other
        self.wanted = wanted
        self.segmenter: Callable | None = None
        self.timings: list[dict] = []
        self._painted: dict = {}  # token -> (axis, index, label, mask) of its last result
        self._jobs: dict[tuple, tuple] = {}
        service.mask_ready.connect(self._on_mask_ready)
        service.mask_failed.connect(self._on_mask_failed)

    def reset(self) -> None:
        """Forget earlier results and pending decodes (a new scan)."""
        self._painted.clear()
        self._jobs.clear()

    def keep_only(self, tokens: set) -> None:
        """Forget the results of prompts that are gone."""
        for token in [t for t in self._painted if t not in tokens]:
            del self._painted[token]

    def segment(self, axis: int, index: int, box, label: int, token) -> None:
        """Segment ``box`` (x0, y0, x1, y1) on display slice ``index`` along ``axis`` for ``label``
        (with the injected segmenter, or asynchronously with MedSAM's decoder)."""
        c = self.controller
        t0 = time.perf_counter()
        if self.segmenter is not None:
            try:
                mask = np.asarray(self.segmenter(int(index), tuple(box)), dtype=bool)
            except Exception as exc:  # noqa: BLE001 - a broken segmenter is shown, not raised
                c.show_error(exc, title="Segmentation failed")
                return
            self._paint(token, axis, index, label, mask, t0, (time.perf_counter() - t0) * 1000.0, box)
            return
        embedded = self.service.has_embedding(int(index))
        gen = self.service.segment_async(token, int(index), box)
        self._jobs[(token, gen)] = (t0, int(axis), int(index), int(label))
        if embedded:  # painted now when quick, before the canvas redraws the finished box
            got = self.service.wait_result(token, gen, WAIT_FOR_MASK_S)
            if got is not None:
                del self._jobs[(token, gen)]  # the listener's later report finds no job
                self._paint(token, axis, index, label, got[0], t0, got[1], box)
                return
        if not embedded:
            c.status(f"MedSAM: slice {index} is being embedded; the mask follows…", 0)

    def _on_mask_ready(self, token, index: int, box, mask, decode_ms: float, gen: int) -> None:
        job = self._jobs.pop((token, gen), None)
        if job is None or not self.service.is_latest(token, gen) or not self.wanted(token):
            return
        t0, axis, idx, label = job
        self._paint(token, axis, idx, label, mask, t0, decode_ms, box)

    def _on_mask_failed(self, token, exc) -> None:
        for key in [k for k in self._jobs if k[0] == token]:
            self._jobs.pop(key, None)
        self.controller.show_error(exc if isinstance(exc, BaseException) else str(exc),
                                   title="MedSAM could not segment the box")

    def _paint(self, token, axis: int, index: int, label: int, mask: np.ndarray, t0: float,
               decode_ms: float, box) -> None:
        c = self.controller
        if c.volume is None:
            return
        tp = time.perf_counter()
        keep = plane(c.display_labels(), index, axis) == label  # a view, no whole-map copy
        old = self._painted.get(token)
        if old is not None and old[:3] == (axis, index, label):
            keep &= ~old[3]
        try:
            changed = c.write_slice_mask(axis, index, keep | mask, label, overwrite_other=self.overwrite_other())
        except Exception as exc:  # noqa: BLE001
            c.show_error(exc, title="Could not write the mask")
            return
        self._painted[token] = (axis, index, label, mask.copy())
        now = time.perf_counter()
        paint_ms = (now - tp) * 1000.0
        self.timings.append({"decode_ms": float(decode_ms), "paint_ms": paint_ms, "total_ms": (now - t0) * 1000.0,
                             "box": None if box is None else tuple(box)})
        c.status(f"MedSAM: label {label} on slice {index}: {int(mask.sum())} pixels, {changed} voxels changed "
                 f"(decoder {decode_ms:.0f} ms, paint {paint_ms:.0f} ms)", 6000)
        self.painted.emit(int(axis), int(index))
