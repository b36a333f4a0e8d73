"""In-context segmentation of a scan with UniverSeg: label a few slices, the model does the rest.

Workflow (numpy + torch, no Qt; meant to run in a worker thread, never on the GUI thread):

1. *Support*: a :class:`~medsam_gui.core.support_set.SupportSet`, by default built from the
   slices (along ``axis`` of the (z, y, x) arrays) on which the label being segmented is present
   (:meth:`SupportSet.from_partial_labels`: windowed with the display bounds (lo, hi), scaled to
   [0, 1], resized to 128 x 128; masks without blurring). Targets are preprocessed the same way.
2. If there are more support slices than the support size S, an evenly spaced subset is used
   (:func:`choose_support`); ``ensemble=n`` runs n different evenly spread subsets and averages
   the probabilities.
3. *Targets*: by default the slices between the first and the last support slice that do not
   contain the label; ``z_range=(a, b)`` (inclusive) extends that range; an explicit ``targets``
   list replaces it. Support slices (the user's slices with this label) are never targets, so
   they are never changed. Other labels on target slices are kept (see ``apply``).
4. Targets go through the model in batches sharing the same support; sigmoid probabilities at
   128 x 128 are resized back to the slice size (bilinear, align_corners=False) and stored as
   float16; probability > 0.5 is the mask.

A support set from another scan or a saved example set
(:func:`medsam_gui.core.example_sets.load_example_set`) is passed as ``support``.

Default support size: 64 on a GPU, 16 on the CPU (settings ``universeg_support_size_gpu`` /
``universeg_support_size_cpu``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.orientation import plane
from ..core.support_set import SupportSet, labeled_slices, resize_images, window_unit
from ..errors import MedsamGuiError
from .oom import OomFallback

DEFAULT_SUPPORT_SIZE_GPU = 64
DEFAULT_SUPPORT_SIZE_CPU = 16
# Largest (targets x support items) run through the model at once: bounds memory.
# CPU: 16 items (1 target at S=16, 2 at S=8) keep forward_fast's largest temporaries at 16 MiB,
# under glibc's mmap threshold (medsam_gui.runtime), so they reuse heap memory instead of being
# page-faulted in again every batch: as fast as 4 targets per batch with huge pages, ~25 % faster
# without them (the GUI), and a lower memory peak. The reference path needs ~25 MiB per item.
ITEMS_PER_BATCH_CPU = 16
ITEMS_PER_BATCH_GPU = 1024


class InContextError(MedsamGuiError):
    """The in-context segmentation cannot run as asked (no labeled slice, bad range ...)."""


# ----------------------------------------------------------------------------- small helpers


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; "cuda" without a GPU raises InContextError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InContextError("CUDA was requested but no usable GPU is available; use --device cpu.")
    return dev


def default_support_size(device: str | torch.device | None = "auto") -> int:
    """Support size S: setting ``universeg_support_size_gpu`` (64) or ``..._cpu`` (16) for
    ``device`` ("auto": the GPU when there is one; "cuda" counts as a GPU even without one)."""
    from ..config import get_setting

    gpu = torch.cuda.is_available() if device is None or device == "auto" else torch.device(device).type == "cuda"
    key, default = (("universeg_support_size_gpu", DEFAULT_SUPPORT_SIZE_GPU) if gpu
                    else ("universeg_support_size_cpu", DEFAULT_SUPPORT_SIZE_CPU))
    try:
        value = int(get_setting(key, default))
    except (TypeError, ValueError):
        value = default
    return max(1, value)


def resize_probabilities(probs: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, 128, 128) probabilities -> (B, h, w), bilinear (align_corners=False)."""
    if tuple(probs.shape[-2:]) == tuple(hw):
        return probs[:, 0]
    return F.interpolate(probs, size=tuple(hw), mode="bilinear", align_corners=False,
                         antialias=bool(hw[0] < probs.shape[-2] or hw[1] < probs.shape[-1]))[:, 0]


# ----------------------------------------------------------------------------- support


def choose_support(labeled_indices: Sequence[int], S: int) -> list[int]:
    """At most ``S`` of ``labeled_indices``, evenly spaced (first and last included), sorted."""
    return choose_support_subsets(labeled_indices, S, 1)[0]


def choose_support_subsets(labeled_indices: Sequence[int], S: int, n: int = 1) -> list[list[int]]:
    """``n`` subsets of at most ``S`` of ``labeled_indices`` each, for ensembling.

    With no more than S items, every subset is all of them. Otherwise subset 0 is evenly spaced
    with both ends included; subset k >= 1 takes position floor((i + k/n) * N / S) for i < S, a
    shifted even spread, so the subsets differ while each covers the whole range.
    """
    items = sorted(int(i) for i in labeled_indices)
    if S < 1:
        raise InContextError(f"support size must be at least 1, got {S}")
    n = max(1, int(n))
    N = len(items)
    if N <= S:
        return [list(items) for _ in range(n)]
    out = []
    for k in range(n):
        if k == 0:
            pos = np.round(np.linspace(0, N - 1, S)).astype(int) if S > 1 else np.array([N // 2])
        else:
            pos = np.minimum(np.floor((np.arange(S) + k / n) * N / S).astype(int), N - 1)
        out.append([items[p] for p in sorted(set(pos.tolist()))])
    return out


# ----------------------------------------------------------------------------- targets


def plan_targets(n_slices: int, support_slices: Sequence[int], *, targets: Sequence[int] | None = None,
                 z_range: tuple[int, int] | None = None) -> list[int]:
    """Target slice indices (sorted, never a support slice).

    ``targets`` given: those (in range). Else the slices between the first and last support
    slice, extended to cover ``z_range`` = (a, b) inclusive if given; no support: ``z_range`` or
    all slices.
    """
    sup = set(int(i) for i in support_slices)
    if targets is not None:
        cand = sorted(set(int(t) for t in targets))
        bad = [t for t in cand if not 0 <= t < n_slices]
        if bad:
            raise InContextError(f"target slices {bad[:5]} are outside the scan (0..{n_slices - 1}).")
    else:
        lo, hi = (min(sup), max(sup)) if sup else (None, None)
        if z_range is not None:
            a, b = sorted((int(z_range[0]), int(z_range[1])))
            if b < 0 or a >= n_slices:
                raise InContextError(f"slice range {z_range} lies outside the scan (0..{n_slices - 1}).")
            a, b = max(a, 0), min(b, n_slices - 1)
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        if lo is None:
            lo, hi = 0, n_slices - 1
        cand = list(range(lo, hi + 1))
    return [t for t in cand if t not in sup]


# ----------------------------------------------------------------------------- results


@dataclass(eq=False)
class InContextResult:
    """Per-slice probabilities for one label.

    ``probabilities[i]``: float16 (rows, cols) of slice ``i`` (``np.take(volume, i, axis)``) for
    each finished target ``i`` in ``indices``; ``support_indices``: slices used as support
    (untouched); ``cancelled``: the run stopped early (only finished slices are present).
    """

    label_value: int
    axis: int
    slice_shape: tuple[int, int]
    targets: list[int]
    support_indices: list[int]
    probabilities: dict[int, np.ndarray] = field(default_factory=dict)
    cancelled: bool = False

    @property
    def indices(self) -> list[int]:
        return sorted(self.probabilities)

    def mask(self, index: int) -> np.ndarray:
        """bool (rows, cols): probability > 0.5 on slice ``index``."""
        return self.probabilities[index].astype(np.float32) > 0.5

    def apply(self, labels: np.ndarray, *, overwrite_other: bool = False) -> list[int]:
        """Write the masks into ``labels`` (z, y, x, in place) on the finished target slices.

        Voxels of other labels are kept unless ``overwrite_other``. Returns the changed slices.
        """
        changed = []
        for i in self.indices:
            sl = _slice_view(labels, i, self.axis)
            m = self.mask(i)
            if not overwrite_other:
                m &= sl == 0
            m &= sl != self.label_value
            if m.any():
                sl[m] = self.label_value
                changed.append(i)
        return changed


@dataclass(eq=False)
class MultiResult:
    """Several labels segmented separately; combined without overlap (highest probability > 0.5)."""

    results: dict[int, InContextResult]
    axis: int = 0
    stopped: bool = False  # cancelled before every label was run

    @property
    def cancelled(self) -> bool:
        return self.stopped or any(r.cancelled for r in self.results.values())

    @property
    def indices(self) -> list[int]:
        return sorted(set().union(*(r.probabilities for r in self.results.values())))

    def combined(self, index: int) -> np.ndarray:
        """(rows, cols) label values (0 = none) on slice ``index``: the label with the highest
        probability, where that probability is > 0.5."""
        cands = [(v, r.probabilities[index]) for v, r in self.results.items() if index in r.probabilities]
        if not cands:
            raise KeyError(index)
        probs = np.stack([p.astype(np.float32) for _, p in cands])
        values = np.array([v for v, _ in cands])
        best = probs.argmax(axis=0)
        out = values[best].astype(np.int64)
        out[probs.max(axis=0) <= 0.5] = 0
        return out

    def apply(self, labels: np.ndarray, *, overwrite_other: bool = False) -> list[int]:
        """Write the combined masks into ``labels`` (in place); voxels already labeled are kept
        unless ``overwrite_other`` (user slices of a label are never its targets). Returns the
        changed slice indices."""
        changed = []
        for i in self.indices:
            sl = _slice_view(labels, i, self.axis)
            comb = self.combined(i)
            m = comb > 0
            if not overwrite_other:
                m &= sl == 0
            # never write a label onto a slice that is support for that label
            for v, r in self.results.items():
                if i in r.support_indices:
                    m &= comb != v
            m &= sl != comb
            if m.any():
                sl[m] = comb[m].astype(labels.dtype)
                changed.append(i)
        return changed


def _slice_view(arr: np.ndarray, index: int, axis: int) -> np.ndarray:
    idx = [slice(None)] * arr.ndim
    idx[axis] = index
    return arr[tuple(idx)]


# ----------------------------------------------------------------------------- running


@dataclass
class BatchDone:
    """One finished batch: ``probabilities`` float16 (n, rows, cols) for slices ``indices``."""

    indices: list[int]
    probabilities: np.ndarray
    done: int
    total: int


def _auto_batch(S_eff: int, device: torch.device) -> int:
    budget = ITEMS_PER_BATCH_GPU if device.type == "cuda" else ITEMS_PER_BATCH_CPU
    return max(1, min(32, budget // max(1, S_eff)))


def iter_segment_rest(volume: np.ndarray, labels: np.ndarray | None, label_value: int, *,
                      model: torch.nn.Module, bounds: tuple[float, float] | None = None,
                      support: SupportSet | None = None, support_size: int | None = None,
                      targets: Sequence[int] | None = None, z_range: tuple[int, int] | None = None,
                      batch_size: int | None = None, device: str | torch.device | None = "auto",
                      ensemble: int = 1, axis: int = 0,
                      cancel: Callable[[], bool] | None = None,
                      on_notice: Callable[[str], None] | None = None) -> Iterator[BatchDone]:
    """Generator form of :func:`segment_rest`: yields a :class:`BatchDone` per batch.

    Stops early (without error) when ``cancel()`` returns True before a batch. Out of GPU
    memory: see :func:`segment_rest` (``on_notice`` is called on the generator's thread).
    """
    yield from _run(volume, labels, label_value, model=model, bounds=bounds, support=support,
                    support_size=support_size, targets=targets, z_range=z_range, batch_size=batch_size,
                    device=device, ensemble=ensemble, axis=axis, cancel=cancel, plan_out={},
                    on_notice=on_notice)


def _run(volume, labels, label_value, *, model, bounds, support, support_size, targets, z_range,
         batch_size, device, ensemble, axis, cancel, plan_out, on_notice=None):
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InContextError(f"the scan must be 3D (z, y, x), got shape {volume.shape}")
    if axis not in (0, 1, 2):
        raise InContextError(f"axis must be 0, 1 or 2, got {axis}")
    if labels is not None and np.shape(labels) != volume.shape:
        raise InContextError(f"label map {np.shape(labels)} and scan {volume.shape} differ in shape")
    if bounds is None and volume.dtype == np.uint8:
        bounds = (0.0, 255.0)
    dev = resolve_device(device)
    S = int(support_size) if support_size else default_support_size(dev)
    ensemble = max(1, int(ensemble))
    protected = labeled_slices(labels, label_value, axis) if labels is not None else []
    if support is None:
        if labels is None:
            raise InContextError("give a label map with labeled slices or a support set (example set).")
        if not protected:
            raise InContextError(f"label {label_value} is not drawn on any slice: label it on a few slices "
                                 "first (or use an example set).")
        positions = choose_support_subsets(protected, S, ensemble)
        used = sorted(set().union(*positions))
        support = SupportSet.from_partial_labels(volume, labels, label_value, axis, bounds=bounds, slices=used)
        positions = [[used.index(i) for i in p] for p in positions]
    else:
        if not len(support):
            raise InContextError("the support set is empty: label the structure on at least one slice.")
        positions = choose_support_subsets(range(len(support)), S, ensemble)
    # identical subsets (fewer items than S) would only repeat the same computation
    subsets = [support.subset(p) for p in dict.fromkeys(tuple(sorted(set(p))) for p in positions)]
    tgt = plan_targets(volume.shape[axis], protected, targets=targets, z_range=z_range)
    plan_out.update(targets=tgt, support=protected, subsets=subsets)
    slice_hw = tuple(s for a, s in enumerate(volume.shape) if a != axis)

    model = model.to(dev).eval()
    # where the work runs: moved to the CPU when the GPU runs out of memory even one slice at a time
    placed = {"dev": dev, "sup": [(torch.from_numpy(s.images)[None, :, None].to(dev),
                                   torch.from_numpy(s.masks.astype(np.float32))[None, :, None].to(dev))
                                  for s in subsets]}
    S_eff = max(len(s) for s in subsets)
    bs = int(batch_size) if batch_size else _auto_batch(S_eff, dev)
    total = len(tgt)

    def run_batch(a: int, b: int, _size: int) -> np.ndarray:
        d, sup_tensors = placed["dev"], placed["sup"]
        idx = tgt[a:b]
        imgs = resize_images(window_unit(np.stack([plane(volume, i, axis) for i in idx]), bounds))
        x = torch.from_numpy(imgs)[:, None].to(d)
        acc = None
        with torch.inference_mode():
            for si, sl in sup_tensors:
                n = x.shape[0]
                logits = model(x, si.expand(n, *si.shape[1:]), sl.expand(n, *sl.shape[1:]))
                p = torch.sigmoid(logits.float())
                acc = p if acc is None else acc + p
            probs = resize_probabilities(acc / len(sup_tensors), slice_hw)
        return probs.clamp(0, 1).cpu().numpy().astype(np.float16)

    def move_to_cpu() -> None:
        cpu = torch.device("cpu")
        model.to(cpu)
        placed["sup"] = [(si.to(cpu), sl.to(cpu)) for si, sl in placed["sup"]]
        placed["dev"] = cpu

    fallback = OomFallback(lambda: placed["dev"], bs, move_to_cpu=move_to_cpu, on_notice=on_notice,
                           cpu_batch_size=min(bs, _auto_batch(S_eff, torch.device("cpu"))))
    if cancel is not None and cancel():
        return
    try:
        for a, b, probs in fallback.run(total, run_batch):
            yield BatchDone(list(tgt[a:b]), probs, b, total)
            if b < total and cancel is not None and cancel():
                return
    finally:  # the support set's cached terms (S x 64 x 128 x 128 floats) are not needed any more
        clear = getattr(model, "clear_support_cache", None)
        if callable(clear):
            clear()


def segment_rest(volume: np.ndarray, labels: np.ndarray | None, label_value: int, *,
                 model: torch.nn.Module, bounds: tuple[float, float] | None = None,
                 support: SupportSet | None = None, support_size: int | None = None,
                 targets: Sequence[int] | None = None, z_range: tuple[int, int] | None = None,
                 batch_size: int | None = None, device: str | torch.device | None = "auto",
                 ensemble: int = 1, axis: int = 0, cancel: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 on_batch: Callable[[BatchDone], None] | None = None,
                 on_notice: Callable[[str], None] | None = None) -> InContextResult:
    """Segment ``label_value`` on the remaining slices from the slices the user labeled.

    volume: (z, y, x) raw intensities windowed with ``bounds`` = display (lo, hi), or already
    in [0, 1] with ``bounds=None`` (a uint8 volume with ``bounds=None``: (0, 255)). labels:
    (z, y, x) int label map (None with ``support``). Slices are taken along ``axis``.
    ``support``: a :class:`~medsam_gui.core.support_set.SupportSet` used instead
    of the labeled slices (labeled slices of this label are still never targets).
    ``support_size``: S (default :func:`default_support_size`); ``ensemble``: number of support
    subsets whose probabilities are averaged; ``batch_size``: targets per model call (default:
    from a memory budget). ``model`` is moved to ``device``. ``progress(done, total)`` is called
    after each batch, ``on_batch(BatchDone)`` too; ``cancel()`` -> True stops before the next
    batch and returns the finished part with ``cancelled=True``. ``labels`` is not modified:
    call ``result.apply(labels)``.

    Out of GPU memory: the batch is run again with half as many targets, down to 1, then the
    model and support move to the CPU and the run goes on there (the model stays on the CPU);
    ``on_notice(message)`` is told each time (:class:`~medsam_gui.models.oom.OomFallback`).
    The probabilities are those of a run without the error.
    """
    plan: dict = {}
    slice_hw = tuple(s for a, s in enumerate(np.shape(volume)) if a != axis) if np.ndim(volume) == 3 else ()
    gen = _run(volume, labels, label_value, model=model, bounds=bounds, support=support,
               support_size=support_size, targets=targets, z_range=z_range, batch_size=batch_size,
               device=device, ensemble=ensemble, axis=axis, cancel=cancel, plan_out=plan,
               on_notice=on_notice)
    probs: dict[int, np.ndarray] = {}
    total = None
    for ev in gen:
        for i, p in zip(ev.indices, ev.probabilities):
            probs[i] = p
        total = ev.total
        if on_batch is not None:
            on_batch(ev)
        if progress is not None:
            progress(ev.done, ev.total)
    tgt = plan.get("targets", [])
    if total is None and progress is not None:
        progress(0, len(tgt))
    return InContextResult(label_value=int(label_value), axis=axis, slice_shape=slice_hw, targets=list(tgt),
                           support_indices=list(plan.get("support", [])), probabilities=probs,
                           cancelled=len(probs) < len(tgt))


def segment_rest_multi(volume: np.ndarray, labels: np.ndarray, label_values: Sequence[int], *,
                       progress: Callable[[int, int], None] | None = None,
                       cancel: Callable[[], bool] | None = None, **kwargs) -> MultiResult:
    """:func:`segment_rest` for each label of ``label_values`` separately (same keyword
    arguments); combine with :meth:`MultiResult.apply` / :meth:`MultiResult.combined`.
    ``progress(done, total)`` counts target slices over all labels."""
    values = [int(v) for v in label_values]
    if not values:
        raise InContextError("no label to segment: draw at least one label on a few slices.")
    axis = kwargs.get("axis", 0)
    plans = {v: plan_targets(np.shape(volume)[axis], labeled_slices(labels, v, axis),
                             targets=kwargs.get("targets"), z_range=kwargs.get("z_range")) for v in values}
    grand = sum(len(p) for p in plans.values())
    results: dict[int, InContextResult] = {}
    offset = 0
    for v in values:
        if cancel is not None and cancel():
            return MultiResult(results=results, axis=axis, stopped=True)

        def _prog(done, total, _off=offset):
            if progress is not None:
                progress(_off + done, grand)

        results[v] = segment_rest(volume, labels, v, progress=_prog, cancel=cancel, **kwargs)
        offset += len(plans[v])
        if results[v].cancelled:
            return MultiResult(results=results, axis=axis, stopped=v != values[-1])
    return MultiResult(results=results, axis=axis)

