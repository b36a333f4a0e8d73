"""The stable Python API of medsam-gui (no Qt; the CLI commands are thin wrappers of it).

    from medsam_gui import api
    vol = api.load_volume("scan.nii.gz")
    mask = api.segment_box(vol, 40, (120, 96, 180, 150), checkpoint="medsam_vit_b.pth")
    lesion = api.propagate(vol, {40: (120, 96, 180, 150)}, checkpoint="medsam_vit_b.pth")
    api.save_labels(lesion.astype("uint8"), like=vol, path="lesion.nii.gz")
    # MedSAM2: one box (or RECIST line) on a key slice -> the whole 3D lesion, with memory
    lesion = api.segment_lesion_3d(vol, 40, box=(120, 96, 180, 150), checkpoint="MedSAM2_latest.pt")

Arrays are (z, y, x) like ``Volume.array``; boxes are (x0, y0, x1, y1) voxel indices on axial
slice z (x = column, y = row). ``engine`` is an engine name (``"medsam"``, or ``"litemedsam"``:
LiteMedSAM, MedSAM distilled into a TinyViT encoder at 256x256, ~10x faster on a CPU) or an engine object
from :func:`load_engine` (load it once to segment many things); ``checkpoint`` is the weights
file (default: the one installed with ``medsam-gui weights``). ``window`` is the intensity
window (lo, hi) in scan units; by default CT soft tissue (40/400) or the MR percentile window,
applied to the whole volume as in MedSAM's reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .core.volume import Volume
from .errors import CheckpointError, MedsamGuiError
from .io import load_volume, save_labels
from .models.box_engines import BOX_ENGINES

__all__ = ["load_volume", "save_labels", "load_engine", "open_predictor", "segment_box", "segment_recist",
           "propagate", "segment_rest", "measure", "ENGINES"]
__all__ += ["load_medsam2", "segment_lesion_3d"]  # MedSAM2 (issue 14)
__all__ += ["run_batch"]  # cohort batches (issue 16)
__all__ += ["auto_segment"]  # automatic models (issue 15)

ENGINES = {name: (info.weights, info.title) for name, info in BOX_ENGINES.items()}  # name -> (weights, title)


def resolve_path(path, what: str):
    """``path`` as a Path; CheckpointError when it does not exist."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{what} weights not found: {p} does not exist.")
    return p


def resolve_checkpoint(engine: str, checkpoint=None):
    """The weights file for ``engine``: ``checkpoint`` when given (it must exist), else the
    installed one; CheckpointError says how to get it otherwise."""
    name, title = ENGINES[engine]
    if checkpoint is not None:
        return resolve_path(checkpoint, title)
    from .models import weights as manager

    found = manager.resolve(name, verify=True)  # a file whose recorded checksum changed is refused
    if found is None:
        raise CheckpointError(
            f"no {title} weights installed: pass the weights file (checkpoint=... / --checkpoint), or install "
            f"them once with `medsam-gui weights download {name}` (or `medsam-gui weights import {name} FILE`).")
    return found


def load_engine(engine: str = "medsam", checkpoint=None, *, device: str = "auto", precision: str = "fp32"):
    """Build a box-prompt engine (:class:`~medsam_gui.models.engine.BoxPromptEngine`):
    ``"medsam"`` (:class:`~medsam_gui.models.medsam.MedSAMEngine`) or ``"litemedsam"``
    (:class:`~medsam_gui.models.litemedsam.LiteMedSAMEngine`).

    ``precision``: "fp32" (the official computation bit for bit), "auto", "fast", "int8",
    "bf16", "fp16" (see README; LiteMedSAM has no int8 path: "int8" means "fast" there).
    ``engine="medsam2"`` gives a MedSAM2Engine (:func:`load_medsam2`)."""
    if engine == MEDSAM2:
        return load_medsam2(checkpoint, device=device, precision=precision)
    if engine not in ENGINES:
        raise MedsamGuiError(f"unknown engine {engine!r}; choose one of {', '.join(sorted(ENGINES))}.")
    path = resolve_checkpoint(engine, checkpoint)
    if engine == "litemedsam":
        from .models.litemedsam import LiteMedSAMEngine

        return LiteMedSAMEngine(path, device=device, precision=precision)
    from .models.medsam import MedSAMEngine

    return MedSAMEngine(path, device=device, precision=precision)


def _engine(engine, checkpoint, device: str, precision: str):
    return load_engine(engine, checkpoint, device=device, precision=precision) if isinstance(engine, str) else engine


def window_bounds_for(volume: Volume, window=None, modality: str | None = None) -> tuple[float, float]:
    """``window`` as (lo, hi) floats, or the default window of ``volume`` for ``modality``."""
    from .core.intensity import default_bounds

    if window is not None:
        lo, hi = (float(v) for v in window)
        if not hi > lo:
            raise MedsamGuiError(f"the window ({lo:g}, {hi:g}) is empty: its upper bound must exceed the lower.")
        return lo, hi
    return default_bounds(volume.array, modality or volume.modality)


def open_predictor(volume: Volume, *, engine="medsam", checkpoint=None, modality: str | None = None,
                   window=None, device: str = "auto", precision: str = "fp32"):
    """A :class:`~medsam_gui.models.volume_predictor.VolumePredictor` on ``volume``'s axial
    slices, ready (use it as a context manager, or call ``shutdown()``): embeddings are computed
    once per slice for any number of boxes."""
    from .models.embedding_cache import EmbeddingCache
    from .models.volume_predictor import VolumePredictor

    bounds = window_bounds_for(volume, window, modality)
    predictor = VolumePredictor(_engine(engine, checkpoint, device, precision), EmbeddingCache(disk_bytes=0),
                                background=False, keep_float32=64)
    try:
        predictor.set_volume(volume, bounds=bounds, modality=modality or volume.modality, axis=0, wait=True)
    except BaseException:
        predictor.shutdown()
        raise
    return predictor


def _check_slice(volume: Volume, z: int) -> int:
    nz = volume.shape[0]
    if not 0 <= int(z) < nz:
        raise MedsamGuiError(f"slice {z} is outside the scan (slices 0..{nz - 1}).")
    return int(z)


def segment_box(volume: Volume, z: int, box: Sequence[float], *, engine="medsam", checkpoint=None,
                modality: str | None = None, window=None, device: str = "auto",
                precision: str = "fp32") -> np.ndarray:
    """bool mask (y, x) of axial slice ``z`` for ``box`` (x0, y0, x1, y1)."""
    z = _check_slice(volume, z)
    with open_predictor(volume, engine=engine, checkpoint=checkpoint, modality=modality, window=window,
                        device=device, precision=precision) as p:
        return p.segment_box(z, box)


def segment_recist(volume: Volume, z: int, p0: Sequence[float], p1: Sequence[float], *, margin: float = 5.0,
                   engine="medsam", checkpoint=None, modality: str | None = None, window=None,
                   device: str = "auto", precision: str = "fp32") -> np.ndarray:
    """bool mask (y, x) of axial slice ``z`` for a RECIST long-axis line p0-p1 ((x, y) voxels):
    the engine gets the square box around the line, ``margin`` voxels wider."""
    z = _check_slice(volume, z)
    with open_predictor(volume, engine=engine, checkpoint=checkpoint, modality=modality, window=window,
                        device=device, precision=precision) as p:
        return p.segment_recist(z, p0, p1, margin)[0]


def propagate(volume: Volume, key_boxes: Mapping[int, Sequence[float]], *, z_range: tuple[int, int] | None = None,
              margin: float = 5.0, engine="medsam", checkpoint=None, modality: str | None = None, window=None,
              device: str = "auto", precision: str = "fp32",
              on_slice: Callable[[object], None] | None = None,
              cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """bool (z, y, x) mask of a structure followed from boxes on key slices ({z: box}) through
    the scan, within ``z_range`` (inclusive) when given.

    Between key slices the boxes are interpolated; beyond them each slice's box grows from the
    previous slice's mask (MedSAM's 3D method). ``on_slice(result)`` is called with each
    :class:`~medsam_gui.core.propagation.SliceResult` as it arrives; ``cancel()`` stops early
    (the slices done are returned).

    ``engine="medsam2"`` (or a loaded MedSAM2Engine): MedSAM2 from the one key slice's box
    (:func:`segment_lesion_3d`; ``margin`` is not used, ``on_slice`` gets its SliceUpdates)."""
    if _is_medsam2(engine):
        return _propagate_medsam2(volume, key_boxes, z_range=z_range, engine=engine, checkpoint=checkpoint,
                                  modality=modality, window=window, device=device, precision=precision,
                                  on_slice=on_slice, cancel=cancel)
    for z in key_boxes:
        _check_slice(volume, z)
    limits = None
    if z_range is not None:
        lo, hi = sorted(int(v) for v in z_range)
        if lo < 0 or hi >= volume.shape[0]:
            raise MedsamGuiError(f"the z-range {lo},{hi} is outside the scan (slices 0..{volume.shape[0] - 1}).")
        limits = (lo, hi)
    out = np.zeros(volume.shape, dtype=bool)
    with open_predictor(volume, engine=engine, checkpoint=checkpoint, modality=modality, window=window,
                        device=device, precision=precision) as p:
        for res in p.propagate(key_boxes, limits=limits, margin=margin, cancel=cancel):
            out[res.index] = res.mask
            if on_slice is not None:
                on_slice(res)
    return out


def load_universeg(checkpoint=None):
    """The UniverSeg v1 network with the official weights (default: the installed file)."""
    from .models import weights as manager
    from .models.universeg import universeg_v1

    if checkpoint is None:
        checkpoint = manager.resolve("universeg_v1")
        if checkpoint is None:
            raise CheckpointError(
                "no UniverSeg weights installed: pass the weights file (checkpoint=... / --checkpoint "
                "universeg_v1_nf64_ss64_STA.pt), or install them once with `medsam-gui weights download universeg_v1`.")
    return universeg_v1(resolve_path(checkpoint, "UniverSeg"))


def universeg_window(volume: Volume, support, window=None) -> tuple[float, float]:
    """``window``, else an example set's own window when it and the scan are CT, else the
    scan's default window."""
    from .core.support_set import SupportSet

    if window is None and isinstance(support, SupportSet) and volume.modality == "CT" and support.modality == "CT":
        return support.bounds
    return window_bounds_for(volume, window)


def segment_rest(volume: Volume, support, *, checkpoint=None, model=None, label: int | None = None, window=None,
                 device: str = "auto", z_range: tuple[int, int] | None = None, support_size: int | None = None,
                 axis: int = 0, ensemble: int = 1, batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """UniverSeg: a label map (z, y, x) with the unlabelled slices (along ``axis``) filled in context.

    ``support`` is a partial label map on the scan's grid (the slices where a label is drawn are
    its support and stay as drawn; between its first and last labelled slice the others are
    filled; every label present unless ``label`` picks one; several labels never overlap) or a
    :class:`~medsam_gui.core.support_set.SupportSet`, e.g. an example set (targets: ``z_range``
    or every slice; value ``label`` or the set's). ``model``: a loaded UniverSeg network (else
    ``checkpoint``, else the installed weights). ``progress(done, total)`` follows the batches;
    ``cancel()`` stops early (the slices done are kept)."""
    from .core.support_set import SupportSet
    from .models import incontext as ic

    dev = ic.resolve_device(device)
    common = dict(model=model if model is not None else load_universeg(checkpoint),
                  bounds=universeg_window(volume, support, window), support_size=support_size or
                  ic.default_support_size(dev), z_range=z_range, device=dev, axis=axis, ensemble=ensemble,
                  batch_size=batch_size, progress=progress, cancel=cancel)
    if isinstance(support, SupportSet):
        value = int(label or support.label_value or 1)
        result = ic.segment_rest(volume.array, None, value, support=support, **common)
        out = np.zeros(volume.shape, dtype=np.uint8 if value <= 255 else np.uint16)
    else:
        labels = np.asarray(support)
        if labels.shape != tuple(volume.shape):
            raise MedsamGuiError(f"the support label map's shape {labels.shape} differs from the scan's "
                                 f"{tuple(volume.shape)}.")
        if not np.issubdtype(labels.dtype, np.integer):
            labels = np.rint(labels).astype(np.int64)
        present = [int(v) for v in np.unique(labels) if v > 0]
        if label is not None and label not in present:
            raise MedsamGuiError(f"label {label} is not drawn in the support label map (labels present: "
                                 f"{', '.join(map(str, present)) or 'none'}).")
        values = present if label is None else [int(label)]
        if not values:
            raise MedsamGuiError("the support label map is empty: draw the structure on a few slices first.")
        result = ic.segment_rest_multi(volume.array, labels, values, **common)
        out = labels.copy()
    result.apply(out)
    return out.astype(np.uint8 if (int(out.max()) if out.size else 0) <= 255 else np.uint16)


def measure(volume: Volume, labels: np.ndarray, label_table=None) -> list:
    """Per label value > 0 of ``labels`` (z, y, x on ``volume``'s grid): volume (mL), slice
    range and the RECIST long/short axes (mm)
    (:class:`~medsam_gui.core.measurements.LabelMeasurement`)."""
    from .core.measurements import measure_labels

    labels = np.asarray(labels)
    if labels.shape != tuple(volume.shape):
        raise MedsamGuiError(f"the label map's shape {labels.shape} differs from the scan's {tuple(volume.shape)}.")
    return measure_labels(labels, volume.spacing, label_table)


# ------------------------------------------------------------------ MedSAM2 (issue 14)

MEDSAM2 = "medsam2"


def _is_medsam2(engine) -> bool:
    if isinstance(engine, str):
        return engine == MEDSAM2
    return getattr(engine, "name", None) == MEDSAM2


def medsam2_precision(precision: str) -> str:
    """MedSAM2's precision for one of the app's choices: "auto", "bf16" and "fp16" -> "auto"
    (bfloat16 autocast on CUDA, float32 elsewhere); every other choice -> "fp32"."""
    return "auto" if str(precision).lower() in ("auto", "bf16", "fp16") else "fp32"


def resolve_medsam2_checkpoint(checkpoint=None):
    """The MedSAM2 weights file: ``checkpoint`` when given (it must exist), else the installed
    one (MedSAM2_latest.pt first); CheckpointError says how to get it otherwise."""
    if checkpoint is not None:
        return resolve_path(checkpoint, "MedSAM2")
    from .models import weights as manager

    found = manager.resolve_medsam2()
    if found is None:
        raise CheckpointError(
            "no MedSAM2 weights installed: pass the weights file (checkpoint=... / --checkpoint MedSAM2_latest.pt), "
            "or install them once with `medsam-gui weights download medsam2_latest` (or `medsam-gui weights import "
            "medsam2_latest FILE`).")
    return found


def load_medsam2(checkpoint=None, *, device: str = "auto", precision: str = "fp32"):
    """A :class:`~medsam_gui.models.medsam2.engine.MedSAM2Engine` on ``checkpoint`` (default:
    the installed MedSAM2 weights). ``precision``: "fp32" (reference) or "auto" (bfloat16 on CUDA)."""
    from .models.medsam2.engine import MedSAM2Engine

    return MedSAM2Engine(resolve_medsam2_checkpoint(checkpoint), device=device, precision=medsam2_precision(precision))


def medsam2_uint8(volume: Volume, window=None, modality: str | None = None) -> np.ndarray:
    """MedSAM2's input: ``volume`` (z, y, x) windowed over the whole volume to uint8
    (``core.intensity.volume_to_uint8``, the same windowing as MedSAM)."""
    from .core.intensity import volume_to_uint8

    bounds = window_bounds_for(volume, window, modality)
    return volume_to_uint8(volume.array, modality or volume.modality, bounds)


def segment_lesion_3d(volume: Volume, z: int, box: Sequence[float] | None = None, recist=None, *, checkpoint=None,
                      engine=None, window=None, modality: str | None = None,
                      z_range: tuple[int, int] | None = None, device: str = "auto", precision: str = "fp32",
                      on_slice: Callable[[object], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """MedSAM2: bool (z, y, x) mask of the lesion on ``volume``'s exact grid, from ONE prompt on
    axial slice ``z``: ``box`` (x0, y0, x1, y1) voxels, or ``recist`` the RECIST long-axis
    line ((x0, y0), (x1, y1)) (or x0, y0, x1, y1).

    The slices are followed forwards and backwards with MedSAM2's memory within ``z_range``
    (inclusive; default: the whole scan); nothing outside it is set, and slices where the model
    reports no object stay empty. Box flow: largest 3D component of the union (as the official
    script); RECIST flow: the official RECIST script (no component step). ``engine``: a loaded
    MedSAM2Engine (:func:`load_medsam2`; load it once for many lesions), else ``checkpoint``,
    else the installed weights. ``window`` / ``modality`` as for MedSAM (the whole-volume
    windowing of :func:`medsam2_uint8`). ``on_slice(SliceUpdate)`` is called as each slice
    arrives; ``cancel()`` stops early (the slices done are returned)."""
    z = _check_slice(volume, z)
    if (box is None) == (recist is None):
        raise MedsamGuiError("give exactly one prompt for MedSAM2: box=(x0, y0, x1, y1) or recist=((x0, y0), (x1, y1)).")
    if z_range is not None:
        lo, hi = sorted(int(v) for v in z_range)
        if lo < 0 or hi >= volume.shape[0]:
            raise MedsamGuiError(f"the z-range {lo},{hi} is outside the scan (slices 0..{volume.shape[0] - 1}).")
        if not lo <= z <= hi:
            raise MedsamGuiError(f"the key slice {z} is outside the z-range {lo},{hi}.")
        z_range = (lo, hi)
    line = None
    if recist is not None:
        line = np.asarray(recist, dtype=np.float64).reshape(-1)
        if line.size != 4:
            raise MedsamGuiError(f"the RECIST line must be ((x0, y0), (x1, y1)); got {recist!r}.")
        line = line.reshape(2, 2)
    if engine is None or isinstance(engine, str):
        if isinstance(engine, str) and engine != MEDSAM2:
            raise MedsamGuiError(f"segment_lesion_3d needs MedSAM2 (engine='medsam2' or a loaded MedSAM2Engine); "
                                 f"got {engine!r}.")
        engine = load_medsam2(checkpoint, device=device, precision=precision)
    elif not _is_medsam2(engine):
        raise MedsamGuiError("segment_lesion_3d needs a MedSAM2Engine (api.load_medsam2); for MedSAM use propagate().")
    u8 = medsam2_uint8(volume, window, modality)
    return engine.segment_volume(u8, z, None if box is None else tuple(float(v) for v in box), recist=line,
                                 z_range=z_range, cancel=cancel, on_slice=on_slice)


def _propagate_medsam2(volume: Volume, key_boxes: Mapping[int, Sequence[float]], **kw) -> np.ndarray:
    if len(key_boxes) != 1:
        raise MedsamGuiError(f"MedSAM2 starts from ONE key slice; got boxes on {len(key_boxes)} slices "
                             f"({', '.join(map(str, sorted(key_boxes)))}).")
    (z, box), = key_boxes.items()
    engine = kw.pop("engine")
    return segment_lesion_3d(volume, z, box, engine=None if isinstance(engine, str) else engine, **kw)


# ------------------------------------------------------------------ automatic models (issue 15)

def auto_segment(volume: Volume, model, structures: Sequence[str | int], checkpoint=None, text_embedding=None,
                 modality: str | None = None, overlap: float | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 stop: Callable[[], bool] | None = None, *, device: str | None = None) -> dict[str, np.ndarray]:
    """Hermes-R or the CLIP-Driven Universal Model on the whole scan: {structure key: uint8
    {0,1} mask (z, y, x) on ``volume``'s exact grid}, in the order asked.

    ``model``: "hermes" | "universal", or a loaded
    :class:`~medsam_gui.models.auto_model.AutoSegmenter` (load it once with
    :func:`medsam_gui.models.auto_models.load_auto_model` for many scans). ``structures``:
    catalogue keys, titles or official indices (Universal: 0-based organ index; Hermes: task
    id). ``checkpoint`` / ``text_embedding`` (Universal only): files in the official layouts,
    default the installed ones. ``modality``: "CT" | "MR" | "PET" (default: the scan's).
    ``overlap``: sliding-window overlap in [0, 1) (default: as published; less is faster).
    ``progress(windows done, total)``; ``stop()`` cancels between windows
    (AutoSegmentationCancelled)."""
    from .models import auto_models
    from .models.auto_models import MODALITIES

    if modality is not None and str(modality).upper() not in MODALITIES:
        raise MedsamGuiError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}.")
    modality = str(modality).upper() if modality is not None else (
        volume.modality if volume.modality in MODALITIES else None)
    if overlap is not None and not 0.0 <= float(overlap) < 1.0:
        raise MedsamGuiError(f"the window overlap must be at least 0 and below 1; got {overlap}.")
    if isinstance(model, str):
        chosen = auto_models.find_structures(model, structures)
        segmenter = auto_models.load_auto_model(model, checkpoint, text_embedding=text_embedding, device=device)
    else:
        segmenter = model
        chosen = auto_models.select_structures(segmenter.structures, structures, segmenter.name)
    masks = segmenter.segment(volume, chosen, modality=modality, overlap=overlap, progress=progress, stop=stop)
    out = {}
    for s in chosen:
        mask = np.asarray(masks[s.key])
        if mask.shape != tuple(volume.shape):
            raise MedsamGuiError(f"{segmenter.name} returned {s.title} on a {mask.shape} grid, not the scan's "
                                 f"{tuple(volume.shape)}.")
        out[s.key] = (mask > 0).astype(np.uint8)
    return out


# ------------------------------------------------------------------ cohort batches (issue 16)

def run_batch(manifest, out, *, workers: int | None = None, scheduler: str | None = None, device: str | None = None,
              checkpoints: Mapping[str, object] | None = None, resume: bool = False, report: bool = False,
              quiet: bool = True):
    """Run a batch manifest (CSV: scan, task, input[, engine, label, out]; see docs/batch.md)
    on Dask distributed and write every case's outputs and ``out/report.csv`` (``report``: also
    report.html). ``workers``: processes of a local cluster (default from the cores, memory and
    GPUs), or ``scheduler``: an existing cluster's address; ``checkpoints``: {model: weights
    file} for medsam, litemedsam, medsam2, universeg, hermes, universal (else the installed
    weights); ``resume``: skip cases whose inputs and outputs are unchanged since the last report.
    Returns a :class:`~medsam_gui.batch.runner.BatchSummary` (``rows``, ``ok``, ``failed``,
    ``skipped``). A bad manifest raises ManifestError listing every bad row before any model loads."""
    import medsam_gui.api as this_module  # the workers use the api's functions: handed in, so batch never imports it

    from .batch.runner import run_batch as run

    return run(this_module, manifest, out, workers=workers, scheduler=scheduler, device=device, checkpoints=checkpoints,
               resume=resume, report=report, quiet=quiet)
