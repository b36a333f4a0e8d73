"""The GUI side of 3D propagation: the dock's "Propagate in 3D" group (:class:`PropagationBox`)
and one run (:class:`PropagationRun`), which runs ``core.propagation.propagate`` in
``controller.run_worker`` (progress bar + Cancel in the status bar) and writes each finished
slice to the labels as it arrives, all of them ONE undo step (:class:`RunHistory`), so autosave,
measurements and the support list follow the run while the user's own edits made meanwhile
stay separate undo steps. Cancel keeps exactly the slices written so far.
"""

from __future__ import annotations

import threading

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .run_history import RunHistory

AXIS_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}

STROKE_RETRY_MS = 100  # how often slices held back by a brush stroke are tried again


class _Failed:
    """A propagation generator's return value when it raised (see :func:`_guarded`)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _guarded(gen):
    """Run ``gen`` and turn an exception into a returned :class:`_Failed`.

    superqt's generator workers treat a RuntimeError raised by the generator (torch raises
    those) as "the worker was deleted": they only warn and emit neither ``errored`` nor
    ``finished``, so the task would never end. Returning the failure avoids that.
    """
    try:
        result = yield from gen
    except Exception as exc:  # noqa: BLE001 - handed to on_done
        return _Failed(exc)
    return result


class PropagationRun(QObject):
    """One propagation of ``label`` along display ``axis`` from the generator ``gen`` of
    ``core.propagation.SliceResult`` (``total``: slices expected, for the progress bar).

    Signals: ``slice_painted(axis, index)`` after a slice is written; ``finished(state)`` once,
    state "done", "cancelled" or "failed". ``results``: (index, kind, box) of the slices written.
    """

    slice_painted = Signal(int, int)
    finished = Signal(str)

    def __init__(self, controller, gen, *, axis: int, label: int, total: int, overwrite_other: bool,
                 cancel: threading.Event, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.axis = int(axis)
        self.label = int(label)
        self.total = int(total)
        self.overwrite_other = bool(overwrite_other)
        self.results: list[tuple] = []
        self.state = "running"
        self.handle = None
        self._gen = gen
        self._cancel = cancel
        self._history = RunHistory(controller)
        self._held: list = []  # slices waiting for a brush stroke to end
        self._worker_ended = False
        self._cancelled = False
        self._retry = QTimer(self)
        self._retry.setInterval(STROKE_RETRY_MS)
        self._retry.timeout.connect(self._write_held)
        controller.volume_changed.connect(self._on_volume_changed)

    def start(self, description: str):
        """Start the worker; returns its WorkerHandle."""
        self.handle = self.controller.run_worker(
            _guarded(self._gen), on_yield=self._on_result, on_done=self._on_done, on_error=self._on_error,
            description=description)
        self.handle.add_done_callback(lambda _h: self._on_worker_ended())
        return self.handle

    @property
    def running(self) -> bool:
        return self.state != "finished"

    def cancel(self) -> None:
        """Stop: the slices written so far stay (one undo step); slices not written yet are dropped."""
        self._cancelled = True
        self._cancel.set()
        self._held.clear()
        if self.state == "running":
            self.state = "cancelled"
        h = self.handle
        if h is not None and not h.finished:
            h.cancel()

    def _on_volume_changed(self, _volume) -> None:
        if self.state != "finished":
            self.cancel()  # its slices belong to the scan that was replaced

    def _on_result(self, res) -> None:
        if self._cancelled or self.controller.volume is None:
            return
        self._held.append(res)
        self._write_held()

    def _write_held(self) -> None:
        while self._held:
            res = self._held[0]
            if self._history.write(self.axis, res.index, res.mask, self.label,
                                   overwrite_other=self.overwrite_other) is None:
                self._retry.start()  # a brush stroke is in progress
                return
            self._held.pop(0)
            self.results.append((int(res.index), res.kind, tuple(res.box)))
            n = len(self.results)
            if self.handle is not None:
                self.handle.set_progress(n, max(n, self.total))
            self.slice_painted.emit(self.axis, int(res.index))
            if self._cancelled:  # cancelled from a slice_painted handler
                self._held.clear()
        self._retry.stop()
        self._maybe_finish()

    def _on_done(self, result) -> None:
        if isinstance(result, _Failed):
            self._on_error(result.exc)
        elif self.state == "running":
            self.state = "done"

    def _on_error(self, exc) -> None:
        self.state = "failed"
        self.controller.show_error(exc, title="Propagation failed")

    def _on_worker_ended(self) -> None:
        self._cancel.set()  # ends waits of the segmenter, if any
        if self.state == "running":
            self.state = "cancelled"
        self._worker_ended = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._worker_ended and not self._held and self.state != "finished":
            state, self.state = self.state, "finished"
            self.controller.volume_changed.disconnect(self._on_volume_changed)
            self.finished.emit(state)


def start_propagation(controller, keys: dict, *, axis: int, label: int, limits: tuple[int, int], margin: int,
                      overwrite_other: bool, service=None, segmenter=None,
                      parent: QObject | None = None) -> PropagationRun:
    """Start propagating ``label`` from ``keys`` ({display slice: (x0, y0, x1, y1)}) along display
    ``axis`` within ``limits`` (inclusive). Slices are segmented by ``segmenter(index, box) -> bool
    (H, W)`` when given, else by MedSAM through ``service`` (an EmbeddingService configured for
    ``axis``; its background embedding pauses during the run). Raises MedsamGuiError for
    impossible keys/limits (nothing started)."""
    from ..core import propagation

    shape = tuple(int(s) for s in controller.orientation.display_shape(controller.volume.shape))
    cancel = threading.Event()
    if segmenter is None:
        gen = service.predictor.propagate(keys, limits=limits, margin=margin, cancel=cancel.is_set)
    else:
        gen = propagation.propagate(shape, keys, lambda i, box: np.asarray(segmenter(int(i), tuple(box)), dtype=bool),
                                    axis=axis, margin=margin, limits=limits, cancel=cancel.is_set)
    total = len(propagation.slices_to_encode(shape, keys, axis=axis, limits=limits))
    run = PropagationRun(controller, gen, axis=axis, label=label, total=total, overwrite_other=overwrite_other,
                         cancel=cancel, parent=parent)
    n = len(keys)
    run.start(f"Propagating label {label} in 3D ({n} key slice{'s' if n != 1 else ''})…")
    if segmenter is None:
        service.pause_background(True)
        run.finished.connect(lambda _state: service.pause_background(False))
    return run


PROPAGATION_METHODS = {"medsam2": "MedSAM2 (memory)", "slices": "Slice by slice (MedSAM)"}


class PropagationBox(QGroupBox):
    """The "Propagate in 3D" group: the method (``method_combo``: "medsam2" = MedSAM2 with
    memory from one key slice, "slices" = MedSAM slice by slice; ``method``), the MedSAM2
    ``medsam2_weights_button``, slice range (``from_spin`` / ``to_spin``, "Current" buttons),
    ``margin_spin`` (slice by slice only), and ``actions`` (a widget outside the group, which the
    dock places where it is always visible): ``propagate_button`` / ``cancel_button`` and a status
    line (``status_label``, shown once there is something to say); shows one
    :class:`PropagationRun` at a time (``run``).

    Signals: ``slice_painted(axis, index)``, ``finished(state)`` (see PropagationRun),
    ``method_changed(str)``."""

    slice_painted = Signal(int, int)
    finished = Signal(str)
    method_changed = Signal(str)

    def __init__(self, controller, margin: int, parent: QWidget | None = None, method: str = "slices") -> None:
        super().__init__("Propagate in 3D", parent)
        self.controller = controller
        self.run: PropagationRun | None = None
        pl = QFormLayout(self)
        self.method_combo = QComboBox()
        for key, text in PROPAGATION_METHODS.items():
            self.method_combo.addItem(text, key)
        self.method_combo.setToolTip(
            "MedSAM2 (memory): one box or RECIST line on the key slice becomes the whole 3D lesion, followed "
            "with MedSAM2's memory (needs MedSAM2's weights).\n"
            "Slice by slice (MedSAM): each slice is segmented by MedSAM from the previous slice's mask "
            "(several key slices: interpolated boxes between them).")
        self.medsam2_weights_button = QPushButton("Weights…")
        self.medsam2_weights_button.setToolTip("Download MedSAM2's weights or choose a MedSAM2 .pt file")
        row = QHBoxLayout()
        row.addWidget(self.method_combo, 1)
        row.addWidget(self.medsam2_weights_button)
        pl.addRow("Method", row)
        self.axis_label = QLabel("axial")
        pl.addRow("Along", self.axis_label)
        self.from_spin, self.to_spin = QSpinBox(), QSpinBox()
        self.from_button, self.to_button = QPushButton("Current"), QPushButton("Current")
        for text, spin, button in (("First slice", self.from_spin, self.from_button),
                                   ("Last slice", self.to_spin, self.to_button)):
            button.setToolTip("Set from the current slice")
            button.clicked.connect(lambda _=False, sp=spin: sp.setValue(self._current_index()))
            row = QHBoxLayout()
            row.addWidget(spin, 1)
            row.addWidget(button)
            pl.addRow(text, row)
        self.margin_spin = QSpinBox()
        self.margin_spin.setRange(0, 100)
        self.margin_spin.setSuffix(" px")
        self.margin_spin.setValue(int(margin))
        self.margin_spin.setToolTip("Pixels added around each slice's mask for the next slice's box")
        pl.addRow("Margin", self.margin_spin)
        # the buttons and status line live in ``actions``, which the dock keeps always in view
        self.actions = QWidget()
        al = QVBoxLayout(self.actions)
        al.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.propagate_button = QPushButton("Propagate in 3D")
        self.propagate_button.setToolTip(
            "Follow the active label through the scan from its boxes/lines on this view's slices "
            "(several key slices: the slices between use interpolated boxes). One undo step.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda _=False: self.cancel())
        row.addWidget(self.propagate_button, 1)
        row.addWidget(self.cancel_button)
        al.addLayout(row)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setVisible(False)
        al.addWidget(self.status_label)
        self.set_method(method)
        self.method_combo.currentIndexChanged.connect(self._on_method)

    @property
    def method(self) -> str:
        """"medsam2" or "slices"."""
        return str(self.method_combo.currentData() or "slices")

    def set_method(self, method: str) -> None:
        i = self.method_combo.findData(method if method in PROPAGATION_METHODS else "slices")
        self.method_combo.setCurrentIndex(max(0, i))
        self._update_method_widgets()

    def _update_method_widgets(self) -> None:
        medsam2 = self.method == "medsam2"
        self.margin_spin.setEnabled(not medsam2)
        self.medsam2_weights_button.setVisible(medsam2)

    def _on_method(self, _i: int) -> None:
        self._update_method_widgets()
        self.method_changed.emit(self.method)

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.running

    @property
    def limits(self) -> tuple[int, int]:
        return int(self.from_spin.value()), int(self.to_spin.value())

    def _current_index(self) -> int:
        c = self.controller
        return int(c.current_slice(int(c.view_axis))) if c.volume is not None else 0

    def update_limits(self) -> None:
        """The whole scan along the current view's axis (a new scan or view)."""
        c = self.controller
        if c.volume is None:
            return
        axis = int(c.view_axis)
        n = int(c.orientation.display_shape(c.volume.shape)[axis])
        for spin in (self.from_spin, self.to_spin):
            spin.blockSignals(True)
            spin.setRange(0, max(0, n - 1))
            spin.blockSignals(False)
        self.from_spin.setValue(0)
        self.to_spin.setValue(max(0, n - 1))
        self.axis_label.setText(f"{AXIS_NAMES.get(axis, str(axis))} (display axis {axis}, {n} slices)")

    def get_state(self) -> dict:
        """The slice range as ``{"range_axis", "range_first", "range_last"}`` (plain ints: settings,
        not work worth recovering): the scan's own array axis and indices along it (first <= last)."""
        c = self.controller
        if c.volume is None:
            return {}
        o, axis = c.orientation, int(c.view_axis)
        n = int(c.volume.shape[o.perm[axis]])
        ends = [n - 1 - i if o.flips[axis] else i for i in self.limits]
        return {"range_axis": int(o.perm[axis]), "range_first": min(ends), "range_last": max(ends)}

    def set_state(self, state: dict) -> None:
        """Restore :meth:`get_state`'s range when the current view runs along that source axis."""
        c = self.controller
        if c.volume is None or "range_axis" not in state:
            return
        o, axis = c.orientation, int(c.view_axis)
        if int(state["range_axis"]) != int(o.perm[axis]):
            return
        n = int(c.volume.shape[o.perm[axis]])
        ends = sorted(n - 1 - int(state[k]) if o.flips[axis] else int(state[k]) for k in ("range_first", "range_last"))
        self.from_spin.setValue(ends[0])
        self.to_spin.setValue(ends[1])

    def show_run(self, run: PropagationRun, keys) -> None:
        """Follow ``run`` (started from the key slices ``keys``)."""
        self.run = run
        run.slice_painted.connect(self._on_slice)
        run.finished.connect(self._on_finished)
        self.propagate_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._say(f"Propagating from slices {', '.join(map(str, keys))}…")

    def _say(self, text: str) -> None:
        self.status_label.setText(text)
        self.status_label.setVisible(bool(text))

    def cancel(self) -> None:
        """Stop the running propagation; the slices already written stay (one undo step)."""
        if self.run is not None:
            self.run.cancel()

    def _on_slice(self, axis: int, index: int) -> None:
        results = self.run.results
        self._say(f"Slice {index} ({results[-1][1]}): {len(results)} slices done")
        self.slice_painted.emit(axis, index)

    def _on_finished(self, state: str) -> None:
        idx = sorted(i for i, _k, _b in self.run.results)
        n = len(idx)
        rng = f" (slices {idx[0]}–{idx[-1]})" if idx else ""
        text = {"done": f"Propagation finished: {n} slices{rng}. Edit > Undo removes it in one step.",
                "cancelled": f"Propagation cancelled: {n} slices kept{rng}. Edit > Undo removes them.",
                "failed": f"Propagation failed after {n} slices{rng}."}[state]
        self._say(text)
        self.controller.status(text, 8000)
        self.propagate_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.finished.emit(state)
