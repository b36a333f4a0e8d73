"""The MedSAM dock's 3D propagation (:class:`PanelPropagationMixin` of
:class:`~medsam_gui.gui.medsam_panel.MedSAMPanel`): slice by slice with MedSAM
(:mod:`.propagation_run`) or with MedSAM2's memory (:mod:`.medsam2_run`), from the prompts of
the active label; one run at a time, one undo step each."""

from __future__ import annotations

from pathlib import Path

from ..errors import MedsamGuiError
from .medsam2_run import METHOD_MEDSAM2, key_prompt, start_medsam2
from .propagation_run import AXIS_NAMES, start_propagation


class PanelPropagationMixin:
    """Propagation methods of the MedSAM panel (uses its prompts, engines and groups)."""

    # ------------------------------------------------------------------ 3D propagation
    def _initial_prop_method(self) -> str:
        """The saved method, else MedSAM2 (memory) when its weights are installed, else slice
        by slice."""
        saved = str(self.settings["prop_method"])
        if saved:
            return saved
        from ..models import weights as manager

        return METHOD_MEDSAM2 if manager.resolve_medsam2() is not None else "slices"

    @property
    def propagating(self) -> bool:
        return self.propagation_box.running

    def propagate(self, axis: int | None = None, limits: tuple[int, int] | None = None,
                  margin: int | None = None, label: int | None = None, method: str | None = None):
        """Propagate ``label`` (default: active) from its key boxes on display ``axis`` (default:
        the current view's) within ``limits`` (inclusive display slice numbers; default: the
        panel's spin boxes) with ``method`` ("slices" or "medsam2"; default: the group's choice).
        Returns the WorkerHandle, or None when it could not start (for MedSAM2 also while its
        weights load: the run then starts by itself once they are loaded)."""
        c = self.controller
        if not self._can_propagate():
            return None
        axis = self._axis() if axis is None else int(axis)
        label = int(c.active_label if label is None else label)
        if (method or self.propagation_box.method) == METHOD_MEDSAM2:
            return self.propagate_medsam2(axis, limits, label)
        keys = self.key_boxes(axis, label)
        if not keys:
            c.show_error(MedsamGuiError(
                f"Draw a box or a RECIST line for label {label} on at least one {AXIS_NAMES.get(axis, '')} slice "
                "first; propagation starts from those key slices."))
            return None
        segmenter = self.segmentation.segmenter
        if segmenter is None:
            if not self.ensure_engine("MedSAM's weights are needed to propagate."):
                c.status("Load MedSAM's weights, then propagate again.", 8000)
                return None
            if self.service.axis != axis:
                self._configure(axis)
        pb = self.propagation_box
        limits = pb.limits if limits is None else limits
        margin = int(pb.margin_spin.value()) if margin is None else int(margin)
        try:
            run = start_propagation(c, keys, axis=axis, label=label, limits=limits, margin=margin,
                                    overwrite_other=self.overwrite_check.isChecked(), service=self.service,
                                    segmenter=segmenter, parent=self)
        except MedsamGuiError as exc:
            c.show_error(exc)
            return None
        self.last_propagation = run.results
        pb.show_run(run, keys)
        return run.handle

    def cancel_propagation(self) -> None:
        """Stop the running propagation; the slices already written stay (one undo step)."""
        self._medsam2_pending = None
        self.propagation_box.cancel()

    def _on_propagation_finished(self, state: str) -> None:
        self.measurements.refresh()
        self.propagation_finished.emit(state)

    # ------------------------------------------------------------------ MedSAM2 (issue 14)
    @property
    def medsam2_engine(self):
        return self._medsam2_engine

    def set_medsam2_engine(self, engine) -> None:
        """Use ``engine`` (a MedSAM2Engine, or a stand-in with its ``segmentation`` method; None
        unloads) for the MedSAM2 method; a propagation waiting for it starts now."""
        self._medsam2_engine = engine
        if engine is not None:
            dev = getattr(engine, "device", "?")
            self.controller.status(f"MedSAM2 ready on {dev} ({getattr(engine, 'precision', 'fp32')})", 8000)
        pending, self._medsam2_pending = self._medsam2_pending, None
        if engine is not None and pending is not None and self.controller.volume is not None:
            self.propagate_medsam2(**pending)

    def load_medsam2(self, path: str | Path | None = None):
        """Load MedSAM2 from ``path`` (default: the installed weights) off the GUI thread."""
        return self.medsam2_loader.load(path)

    def show_medsam2_weights_dialog(self, reason: str = ""):
        """Open MedSAM2's weights dialog (non-blocking); accepted weights are loaded at once."""
        return self.medsam2_loader.show_dialog(reason)

    def _can_propagate(self) -> bool:
        """True with a scan open and no propagation running (else the user is told why)."""
        c = self.controller
        if c.volume is None:
            c.show_error("Open a scan first (File > Open scan…).")
            return False
        if self.propagating:
            c.status("A propagation is already running.")
            return False
        return True

    def propagate_medsam2(self, axis: int | None = None, limits: tuple[int, int] | None = None,
                          label: int | None = None):
        """MedSAM2 from the key slice's box or RECIST line of ``label`` (default: active) on display
        ``axis`` within ``limits`` (default: the group's range); see :mod:`.medsam2_run`.
        Returns the WorkerHandle, or None (not started; while the weights load it starts later)."""
        c = self.controller
        if not self._can_propagate():
            return None
        axis = self._axis() if axis is None else int(axis)
        label = int(c.active_label if label is None else label)
        pb = self.propagation_box
        limits = pb.limits if limits is None else tuple(int(v) for v in limits)
        try:
            key = key_prompt(self.prompts, axis, label, self._current_index(axis))
        except MedsamGuiError as exc:
            c.show_error(exc)
            return None
        if self._medsam2_engine is None:
            self._medsam2_pending = {"axis": axis, "limits": limits, "label": label}
            if not self.medsam2_loader.busy:
                self.medsam2_loader.ensure("MedSAM2's weights are needed to segment the lesion in 3D.")
            c.status("Loading MedSAM2; the lesion is segmented as soon as it is ready.", 8000)
            return None
        try:
            run = start_medsam2(c, self._medsam2_engine, key, label=label, limits=limits, bounds=self._bounds(),
                                overwrite_other=self.overwrite_check.isChecked(), parent=self)
        except MedsamGuiError as exc:
            c.show_error(exc)
            return None
        self.last_propagation = run.results
        pb.show_run(run, [key.index])
        return run.handle
