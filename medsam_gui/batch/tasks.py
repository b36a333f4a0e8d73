"""One case on a worker: read the scan, segment it, write its outputs, return its report row.

:func:`run_case` is what the Dask workers run. It is idempotent (a rerun after a killed worker
writes the same files again, each atomically) and never raises for a case's own problem: a
failure becomes ``status="failed"`` with the message. Models are loaded once per worker process
and kept (:func:`cached_model`, keyed by (model, checkpoint, device)). The segmentation goes
through :mod:`medsam_gui.api`, handed in as ``Settings.api`` by ``api.run_batch`` (the api
imports this package, so this package does not import the api back).

Boxes are applied on axial slices (array axis 0), as ``medsam-gui segment`` does: without a
propagation range each prompt gives its slice's mask; with one, each label's boxes are the key
slices of a 3D propagation within the range (MedSAM, LiteMedSAM); with MedSAM2 each prompt is
one lesion followed in 3D with memory. Labels never overwrite each other (first come first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import MedsamGuiError
from .manifest import Case
from .outputs import CaseLabels, write_case_outputs

RECIST_MARGIN = 5.0  # pixels around a RECIST line (the MedSAM panel's default)
PROPAGATION_MARGIN = 5.0

_MODELS: dict[tuple[str, str | None, str], object] = {}  # this process's loaded models
_THREADS: list[int] = []


class BatchCaseError(MedsamGuiError):
    """A case cannot be done as asked (its message goes into the report)."""


@dataclass(frozen=True)
class Settings:
    """What every case of a run shares: ``api`` (the :mod:`medsam_gui.api` module), the output
    folder, the device ("auto", "cpu", "cuda"; with "cuda" a LocalCluster worker n takes GPU n
    modulo the count), the checkpoint path of each model (None: the installed weights), torch
    threads per worker (None: leave as is) and ``before_case(case)``, called on the worker
    before each case (tests kill a worker there)."""

    api: ModuleType
    out_dir: str
    device: str = "auto"
    checkpoints: dict[str, str | None] = field(default_factory=dict)
    threads: int | None = None
    before_case: Callable[[Case], None] | None = None


def worker_name() -> str:
    """The Dask worker's address, or ``local-PID`` outside a Dask worker."""
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:  # not inside a worker
        return f"local-{os.getpid()}"


def worker_device(device: str) -> str:
    """``device`` for this worker: plain "cuda" becomes "cuda:N" on a LocalCluster worker N of a
    machine with several GPUs (one GPU per worker)."""
    if device != "cuda":
        return device
    import torch
    from distributed import get_worker

    count = torch.cuda.device_count()
    try:
        name = get_worker().name
    except ValueError:
        return device
    return f"cuda:{name % count}" if count > 1 and isinstance(name, int) else device


def cached_model(api: ModuleType, model: str, checkpoint: str | None, device: str) -> tuple[object, float]:
    """(the loaded model, seconds spent loading it now: 0.0 when this process had it already)."""
    key = (model, checkpoint, device)
    if key in _MODELS:
        return _MODELS[key], 0.0
    t0 = time.perf_counter()
    if model == "universeg":
        loaded = api.load_universeg(checkpoint)
    else:
        loaded = api.load_engine(model, checkpoint, device=device)
    _MODELS[key] = loaded
    return loaded, time.perf_counter() - t0


def _label_dtype(top: int):
    return np.uint8 if top <= 255 else np.uint16


def _placed(volume, case: Case):
    from ..core.prompts import prompt_slice_box
    from ..core.prompts_file import read_prompts_file

    pf = read_prompts_file(case.input_path)
    pf.check_grid(volume, str(case.input_path))
    prompts = [p for p in pf.prompts if case.label is None or p.label == case.label]
    if not prompts:
        raise BatchCaseError(f"{case.input_path} has no prompt of label {case.label}.")
    placed = []
    for i, p in enumerate(prompts):
        try:
            axis, z, box = prompt_slice_box(p.vertices, p.kind, volume.shape, 0, RECIST_MARGIN)
        except ValueError as exc:
            raise BatchCaseError(f"{case.input_path}, prompt {i}: {exc}") from None
        if axis != 0:
            raise BatchCaseError(f"{case.input_path}, prompt {i} lies on a sagittal or coronal slice; batches apply "
                                 "prompts drawn on axial slices (draw them in the axial view).")
        placed.append((p, z, box))
    if pf.propagation is not None and pf.propagation.axis != 0:
        raise BatchCaseError(f"{case.input_path}: the propagation range runs along axis {pf.propagation.axis}; "
                             "batches propagate along the axial slices (set the range in the axial view).")
    z_range = None if pf.propagation is None else (pf.propagation.first, pf.propagation.last)
    return placed, z_range


def _key_prompt(p, z: int, box) -> tuple[int, str, np.ndarray]:
    if p.kind == "recist":
        return z, "recist", p.vertices[:, [2, 1]]
    return z, "box", np.array([[box.x0, box.y0], [box.x1, box.y1]])


def _boxes(api: ModuleType, volume, case: Case, model, device: str) -> CaseLabels:
    from ..core.prompts import key_boxes

    placed, z_range = _placed(volume, case)
    top = max(p.label for p, _, _ in placed)
    out = CaseLabels(np.zeros(volume.shape, _label_dtype(top)))
    out.key_prompts = [_key_prompt(p, z, box) for p, z, box in placed]

    def put(mask: np.ndarray, label: int, kind: str, z: int | None = None) -> None:
        target = out.labels if z is None else out.labels[z]
        target[np.asarray(mask, bool) & (target == 0)] = label
        out.kinds.setdefault(label, kind)
        out.names.setdefault(label, f"label {label}")

    if case.engine == "medsam2":
        for p, z, box in placed:
            line = p.vertices[:, [2, 1]] if p.kind == "recist" else None
            put(api.segment_lesion_3d(volume, z, None if line is not None else box.xyxy(), recist=line,
                                      engine=model, z_range=z_range, device=device), p.label, p.kind)
    elif z_range is not None:
        for label in sorted({p.label for p, _, _ in placed}):
            keys = key_boxes([(0, z, box, p.label) for p, z, box in placed], 0, label)
            kinds = {p.kind for p, _, _ in placed if p.label == label}
            put(api.propagate(volume, keys, z_range=z_range, margin=PROPAGATION_MARGIN, engine=model, device=device),
                label, "recist" if kinds == {"recist"} else "box")
    else:
        with api.open_predictor(volume, engine=model, device=device) as predictor:
            for p, z, box in placed:
                if p.kind == "recist":
                    (x0, y0), (x1, y1) = p.vertices[:, [2, 1]]
                    mask = predictor.segment_recist(z, (x0, y0), (x1, y1), RECIST_MARGIN)[0]
                else:
                    mask = predictor.segment_box(z, box.xyxy())
                put(mask, p.label, p.kind, z)
    return out


def _universeg(api: ModuleType, volume, case: Case, model, device: str) -> CaseLabels:
    from ..core.example_sets import load_example_set

    support = load_example_set(case.input_path)
    labels = api.segment_rest(volume, support, model=model, label=case.label, device=device, axis=support.axis)
    value = int(case.label or support.label_value or 1)
    return CaseLabels(labels, names={value: support.label_name or f"label {value}"}, kinds={value: "universeg"})


AUTO_WEIGHTS = {"hermes": "hermes_r", "universal": "universal_model",
                "universal_text_embedding": "universal_text_embedding"}  # model manager names


def _auto_weights(settings: Settings, key: str) -> str:
    """The ``--checkpoint`` of ``key``, else the model manager's installed file."""
    from ..errors import CheckpointError
    from ..models import weights

    if settings.checkpoints.get(key):
        return settings.checkpoints[key]
    found = weights.resolve(AUTO_WEIGHTS[key])
    if found is None:
        raise CheckpointError(f"no {AUTO_WEIGHTS[key]} weights installed: pass --checkpoint {key}=FILE, or install "
                              f"them once with `medsam-gui weights download {AUTO_WEIGHTS[key]}`.")
    return str(found)


def _auto(volume, case: Case, settings: Settings) -> CaseLabels:
    embedding = _auto_weights(settings, "universal_text_embedding") if case.engine == "universal" else None
    names = [int(s) if s.isdigit() else s for s in case.structures]  # official indices or catalogue names
    masks = settings.api.auto_segment(volume, case.engine, names, _auto_weights(settings, case.engine), text_embedding=embedding)
    first = case.label or 1
    out = CaseLabels(np.zeros(volume.shape, _label_dtype(first + len(masks))))
    for value, (key, mask) in enumerate(masks.items(), start=first):
        out.labels[np.asarray(mask, bool) & (out.labels == 0)] = value
        out.names[value], out.kinds[value] = str(key), "auto"
    return out


def _segment(volume, case: Case, settings: Settings, row: dict) -> CaseLabels:
    if case.task == "auto":
        return _auto(volume, case, settings)
    device = worker_device(settings.device)
    model, row["load_s"] = cached_model(settings.api, case.model, settings.checkpoints.get(case.model), device)
    if case.task == "boxes":
        return _boxes(settings.api, volume, case, model, device)
    return _universeg(settings.api, volume, case, model, device)


def run_case(case: Case, settings: Settings) -> dict:
    """Do ``case`` and write its outputs into ``settings.out_dir``; returns its report row
    (:data:`medsam_gui.batch.report.COLUMNS`) with status "ok" or "failed"."""
    from ..io import load_volume

    t0 = time.perf_counter()
    row = {"case": case.name, "row": case.row, "scan": str(case.scan), "task": case.task, "model": case.model,
           "status": "failed", "message": "", "worker": worker_name(), "load_s": 0.0, "input_sha256": "",
           "output_sha256": ""}
    if settings.before_case is not None:
        settings.before_case(case)
    if settings.threads and not _THREADS:
        import torch

        torch.set_num_threads(settings.threads)
        _THREADS.append(settings.threads)
    try:
        row["input_sha256"] = case.input_checksum()
        volume = load_volume(case.scan)
        result = _segment(volume, case, settings, row)
        row.update(write_case_outputs(Path(settings.out_dir), case.name, volume, result))
        row["status"] = "ok"
    except MedsamGuiError as exc:
        row["message"] = str(exc)
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # an unexpected failure of this case only
        row["message"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = time.perf_counter() - t0
    return row
