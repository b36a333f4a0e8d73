"""The Auto-segment dock's runs: weights (the model manager's files, else the weights dialog with
the licence), loading and segmenting off the GUI thread, progress "windows done / total, time
left", Cancel (the model stops between two windows)."""

from __future__ import annotations

import threading
import time

from ..models.auto_model import AutoSegmentationCancelled
from .pending_run import PendingRunMixin
from .workers import set_bar_value


class AutoRunMixin(PendingRunMixin):
    """Run part of :class:`~medsam_gui.gui.auto_panel.AutoPanel` (its ``_progress_sig(done,
    total)`` is emitted by the worker thread and lands in :meth:`_on_progress`)."""

    # ------------------------------------------------------------------ weights
    def _missing_weights(self) -> str | None:
        """The model manager's name of the first file the current model lacks, or None."""
        from ..models import weights as manager
        from ..models.auto_models import model_spec

        if self.model_name in self._segmenters:
            return None
        spec = model_spec(self.model_name)
        for name in (spec.weights, spec.text_embedding):
            if name is not None and manager.resolve(name) is None:
                return name
        return None

    def show_weights_dialog(self, name: str | None = None, reason: str = ""):
        """Open the weights dialog (non-blocking) for ``name`` (default: the current model's first
        missing file, else its checkpoint); returns it."""
        from ..models.auto_models import model_spec
        from .weights_dialog import WeightsDialog

        name = name or self._missing_weights() or model_spec(self.model_name).weights
        return self._open_weights_dialog(WeightsDialog(self, model_name=name, reason=reason))

    def _on_weights_ready(self, path) -> None:
        self.controller.status(f"Weights installed: {path}", 6000)
        self._start_pending()

    # ------------------------------------------------------------------ run
    def run(self) -> bool:
        """Segment the ticked structures (the Run button). True when the run started; False when
        there is nothing to do or the weights dialog opened (the run starts once the files are in)."""
        from ..models.auto_models import installed_weights, load_auto_model

        c = self.controller
        self._load_structures()
        chosen = self.checked_structures()
        if c.volume is None or self.running or not chosen:
            return False
        model = self.model_name
        missing = self._missing_weights()
        if missing is not None:
            self._pending = self.run
            self.show_weights_dialog(missing, f"The {model} model needs this file before it can segment.")
            return False
        segmenter = self._segmenters.get(model)
        volume, modality, overlap = c.volume, self.modality, self.overlap
        stop = self._stop = threading.Event()  # one per run: a cancelled run stops even when another starts

        def work():
            seg = segmenter
            if seg is None:  # the files' recorded checksums are verified here, off the GUI thread
                checkpoint, text = installed_weights(model)
                seg = load_auto_model(model, checkpoint, text_embedding=text)
            masks = seg.segment(volume, chosen, modality=modality, overlap=overlap,
                                progress=self._progress_sig.emit, stop=stop.is_set)
            return seg, volume, chosen, masks

        self._discard_proposal()
        self._t0 = time.perf_counter()
        self.last_run = {"model": model, "structures": [s.key for s in chosen], "modality": modality,
                         "overlap": overlap, "windows": None, "seconds": None}
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.progress_label.setText("Loading the model…" if segmenter is None else "Segmenting…")
        self._handle = handle = c.run_worker(work, on_done=self._on_done, on_error=self._on_error,
                                             description=f"Auto-segment: {len(chosen)} structure(s) with {model}…")
        handle.add_done_callback(lambda h: self._on_handle_finished(h, stop))
        self._update_buttons()
        return True

    def _on_progress(self, done: int, total: int) -> None:
        if self._handle is None:
            return
        spent = time.perf_counter() - self._t0
        left = spent / done * (total - done) if done else 0.0
        set_bar_value(self.progress, done, total)
        self._handle.set_progress(done, total)
        self.last_run["windows"] = (done, total)
        self.progress_label.setText(f"Windows {done} / {total}, about {_duration(left)} left")

    def _on_done(self, result) -> None:
        seg, volume, chosen, masks = result
        self._segmenters[seg.name] = seg
        self._finish_run("done")
        if self.controller.volume is not volume:
            self.controller.status("Auto-segment: another scan was opened meanwhile; its result was dropped.", 8000)
            return
        self._show_proposal(volume, chosen, masks)

    def _on_error(self, exc) -> None:
        cancelled = isinstance(exc, AutoSegmentationCancelled)
        self._finish_run("cancelled" if cancelled else "error")
        if not cancelled:
            self.controller.show_error(exc, title="Auto-segment failed")

    def _on_handle_finished(self, handle, stop: threading.Event) -> None:
        if handle.cancelled:  # also the status bar's Cancel: stop the model at its next window
            stop.set()
            if self._handle is handle:
                self._finish_run("cancelled")

    def cancel(self) -> None:
        """Stop the run at the model's next window; nothing is proposed."""
        h = self._handle
        if h is None or h.finished:
            return
        self._stop.set()
        h.cancel()

    def _finish_run(self, how: str) -> None:
        if self._handle is None:
            return
        self._handle = None
        self.progress.setVisible(False)
        seconds = time.perf_counter() - self._t0
        self.last_run["seconds"] = seconds
        texts = {"done": f"Done in {_duration(seconds)}.", "error": "Failed.",
                 "cancelled": "Cancelled: nothing was proposed."}
        self.progress_label.setText(texts[how])
        if how == "cancelled":
            self.controller.status("Auto-segment cancelled; nothing was proposed.", 6000)
        self._update_buttons()
        self.run_finished.emit(how)

    def shutdown(self) -> None:
        """Stop a running model (the controller's shutdown hook)."""
        self.cancel()


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
