"""MedSAM2 in the MedSAM dock's "Propagate in 3D" group (issue 14): one box or RECIST line of the
active label on a key slice becomes the whole 3D lesion, followed slice by slice with
MedSAM2's memory.

- :class:`MedSAM2Loader`: finds the installed MedSAM2 weights (``models.weights.resolve_medsam2``,
  MedSAM2_latest.pt first), builds the :class:`~medsam_gui.models.medsam2.engine.MedSAM2Engine`
  off the GUI thread and opens the weights dialog (model ``medsam2_latest``) when there are none
  or they cannot be used.
- :func:`key_prompt`: the key slice and its prompt (box, or the RECIST line's end points) from
  the prompts layer, in display pixels of the current view's axis.
- :func:`start_medsam2`: a :class:`~medsam_gui.gui.propagation_run.PropagationRun` whose
  generator runs the engine in ``controller.run_worker`` on the display-order uint8 volume
  (``core.intensity.volume_to_uint8`` with the window on screen, the same whole-volume
  windowing as MedSAM) with the current view's axis first. Each slice is written as it
  arrives (one undo step, cancellable); slices where the model reports no object are written
  empty; nothing outside the slice range is touched. When the run ends, the slices whose
  final mask differs (the box flow keeps the largest 3D component, as officially) are
  written again, so the labels equal ``MedSAM2Engine.segment_volume``'s result.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject

from ..errors import MedsamGuiError
from .engine_loader import EngineLoader
from .propagation_run import PROPAGATION_METHODS, PropagationRun

METHOD_MEDSAM2 = "medsam2"
METHOD_SLICES = "slices"
METHODS = PROPAGATION_METHODS


def medsam2_precision(precision: str) -> str:
    """The dock's precision choice for MedSAM2: auto/bf16/fp16 -> "auto" (bfloat16 on CUDA), else "fp32"."""
    return "auto" if str(precision).lower() in ("auto", "bf16", "fp16") else "fp32"


class MedSAM2Loader(EngineLoader):
    """:class:`EngineLoader` for MedSAM2 (weights dialog of ``medsam2_latest``)."""

    MODEL_NAME = "medsam2_latest"
    TITLE = "MedSAM2"
    ENGINE = "medsam2"

    @staticmethod
    def installed_weights() -> Path | None:
        from ..models import weights as manager

        return manager.resolve_medsam2()

    @staticmethod
    def build(path: Path, device: str, precision: str):
        from ..models.medsam2.engine import MedSAM2Engine

        return MedSAM2Engine(path, device=device, precision=medsam2_precision(precision))


@dataclass
class KeyPrompt:
    """The key slice ``index`` (display, along ``axis``) and its prompt in that slice's pixels:
    ``box`` (x0, y0, x1, y1) and, for a single RECIST line, ``recist`` ((x0, y0), (x1, y1))."""

    axis: int
    index: int
    box: tuple
    recist: tuple | None = None


def key_prompt(prompts, axis: int, label: int, current: int) -> KeyPrompt:
    """The MedSAM2 prompt of ``label`` on display ``axis`` from ``prompts`` (a PromptLayers).

    Key slice: ``current`` when it holds a prompt of ``label``, else the nearest slice that
    does. Several prompts on that slice give their union box; one RECIST line alone gives the
    official RECIST flow (its end points). Raises MedsamGuiError when there is none."""
    keys = prompts.key_boxes(axis, label)
    if not keys:
        raise MedsamGuiError(
            f"Draw a box or a RECIST line for label {label} on the key slice first; MedSAM2 follows the lesion "
            "from there through the slice range.")
    index = int(current) if int(current) in keys else min(keys, key=lambda i: (abs(i - int(current)), i))
    lines = []
    layer = prompts.layer if prompts.exists else None
    if layer is not None:
        for i in range(len(layer.data)):
            try:
                a, idx, _box, kind, lab = prompts.geometry(i)
            except MedsamGuiError:
                continue
            if a == axis and idx == index and lab == label:
                lines.append((kind, np.asarray(layer.data[i], dtype=float)))
    recist = None
    if len(lines) == 1 and lines[0][0] == "recist":
        verts = lines[0][1]
        r, c = [d for d in range(3) if d != axis]
        recist = ((float(verts[0, c]), float(verts[0, r])), (float(verts[-1, c]), float(verts[-1, r])))
        if recist[0] == recist[1]:
            recist = None
    return KeyPrompt(int(axis), index, tuple(keys[index]), recist)


@dataclass
class _Slice:
    """What PropagationRun writes: ``index`` (display slice), ``mask`` (H, W) bool, ``kind``
    ("key", "forward", "backward", "no object", "final") and ``box`` (the key box)."""

    index: int
    mask: np.ndarray
    kind: str
    box: tuple


def medsam2_slices(engine, volume_u8: np.ndarray, key: KeyPrompt, limits: tuple[int, int], cancel):
    """Generator (worker thread) of :class:`_Slice` for :class:`PropagationRun` from
    ``engine.segmentation`` on ``volume_u8`` (display order, the slicing axis first, uint8).
    A slice seen twice (the key slice: both passes) is written as the union so far; after the
    run, slices whose final mask differs are sent again ("final")."""
    prompt = {"recist": key.recist} if key.recist is not None else {"box_xyxy": key.box}
    job = engine.segmentation(volume_u8, key.index, z_range=limits, cancel=cancel, **prompt)
    seen: dict[int, np.ndarray] = {}
    for upd in job:
        z = int(upd.index)
        mask = np.asarray(upd.mask, dtype=bool)
        mask = mask | seen[z] if z in seen else mask
        seen[z] = mask
        yield _Slice(z, mask, upd.direction if upd.present else "no object", key.box)
    if job.cancelled or job.result is None:
        return
    final = np.asarray(job.result, dtype=bool)
    for z in sorted(seen):
        if not np.array_equal(final[z], seen[z]):
            yield _Slice(z, final[z].copy(), "final", key.box)


def display_input(volume, orientation, bounds, axis: int) -> np.ndarray:
    """MedSAM2's input for the viewer: ``volume`` windowed to uint8 over the whole volume
    (MedSAM's rule, ``core.intensity.volume_to_uint8`` with ``bounds``; the percentile auto
    window when None), in display order (``orientation``) with display ``axis`` first:
    (slices, rows, columns), slice i == ``np.take(display, i, axis)``."""
    from ..core.intensity import default_bounds, volume_to_uint8

    if bounds is None:
        bounds = default_bounds(volume.array, volume.modality)
    u8 = volume_to_uint8(volume.array, volume.modality, bounds)
    return np.moveaxis(orientation.to_display(u8), int(axis), 0)


def start_medsam2(controller, engine, key: KeyPrompt, *, label: int, limits: tuple[int, int], bounds,
                  overwrite_other: bool, parent: QObject | None = None) -> PropagationRun:
    """Start MedSAM2 from ``key`` for ``label`` within display ``limits`` (inclusive) along
    ``key.axis``; returns the running PropagationRun. Raises MedsamGuiError when the key slice
    lies outside the limits (nothing started)."""
    lo, hi = sorted(int(v) for v in limits)
    if not lo <= key.index <= hi:
        raise MedsamGuiError(f"The key slice {key.index} is outside the slice range {lo}–{hi}: widen the range "
                             "or move the box.")
    cancel = threading.Event()
    vol = controller.volume
    orientation = controller.orientation
    axis = int(key.axis)

    def gen():  # runs on the worker thread, windowing included
        u8 = display_input(vol, orientation, bounds, axis)
        yield from medsam2_slices(engine, u8, key, (lo, hi), cancel.is_set)

    run = PropagationRun(controller, gen(), axis=axis, label=label, total=hi - lo + 2,
                         overwrite_other=overwrite_other, cancel=cancel, parent=parent)
    what = "RECIST line" if key.recist is not None else "box"
    run.start(f"MedSAM2: label {label} in 3D from the {what} on slice {key.index} (slices {lo}–{hi})…")
    return run
