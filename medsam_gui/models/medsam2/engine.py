"""MedSAM2 entry point for the viewer, CLI and API (no Qt): one box or RECIST line on a key
slice becomes the whole 3D lesion, slice by slice with memory.

    from medsam_gui.models.medsam2.engine import MedSAM2Engine
    eng = MedSAM2Engine("MedSAM2_latest.pt", device="auto", precision="fp32")
    mask = eng.segment_volume(volume_hu, key_index=33, box_xyxy=(206, 347, 229, 368),
                              window=(-1500, 0), z_range=(30, 36))        # bool (Z, Y, X)
    # or slice by slice, as results arrive:
    job = eng.segmentation(volume_u8, 33, box_xyxy=(206, 347, 229, 368))
    for upd in job:            # SliceUpdate(index, mask (H,W) bool, present, direction)
        show(upd.index, upd.mask)
    final = job.result          # bool (Z, Y, X) after union + largest component

Inputs: ``volume`` (Z, Y, X): uint8 already windowed over the whole volume (used as is), or
any real dtype with ``window=(lo, hi)`` (then windowed here like the official script: clip,
min-max over the clipped *whole* volume, x255, truncation). Slices of any (H, W) are
resized to 512 x 512 (PIL bicubic); outputs are at (H, W). Prompts on slice ``key_index``
(a volume index): ``box_xyxy`` (x0, y0, x1, y1) slice pixels; or ``recist=((x0, y0), (x1,
y1))`` the RECIST line end points; or ``mask`` (H, W) bool. ``z_range`` (z0, z1) inclusive
limits the slices handed to the model (default: all); nothing outside it is written, and
the object-pointer distances are scaled by the number of slices handed in (as officially).

Flows (official MedSAM2 commit 332f30d):

* box (``medsam2_infer_3D_CT.py``): box on the key slice, propagate forwards, reset, box
  again, propagate backwards; each slice's mask is bilinear(logits) > 0; union of both
  passes; largest 26-connected 3D component.
* RECIST line or mask (``medsam2_infer_CT_lesion_npz_recist.py``): the RECIST box (a square
  on the line) gives the key mask (or ``mask`` is used), which enters via the mask prompt
  (used as the key output, object score 10); forwards, then a fresh state backwards; union;
  no component step unless ``largest_component=True``.

Slices where the model reports no object (object score <= 0) stay empty. ``cancel()`` is
polled before each slice: when it returns True the job stops and ``result`` holds the
slices finished so far (no component step). ``on_slice(SliceUpdate)`` is called as each
slice arrives. Hole filling (CUDA-only in the official code) is not applied.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ...errors import CheckpointError, MedsamGuiError
from ..checkpoints import file_sha256, load_state_dict_file

MODEL_NAME = "MedSAM2 (SAM2.1 Hiera-tiny 512)"
OFFICIAL_FILES = ("MedSAM2_latest.pt", "MedSAM2_CTLesion.pt", "MedSAM2_MRI_LiverLesion.pt",
                  "MedSAM2_US_Heart.pt", "MedSAM2_2411.pt")
N_KEYS = 471


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """key -> shape of the official MedSAM2 state dict (built on the meta device)."""
    import torch

    from .model import MedSAM2Model

    with torch.device("meta"):
        m = MedSAM2Model()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def diagnose_weights(sd: Mapping[str, Any]) -> str | None:
    """A sentence naming what ``sd`` seems to be when it is not MedSAM2 (Hiera-tiny)."""
    keys = list(sd)
    if any(k.startswith(("enc_blocks.", "dec_blocks.")) for k in keys):
        return "this looks like UniverSeg weights, not MedSAM2"
    if any(k.startswith("image_encoder.blocks.") for k in keys) or any(k.startswith("mask_decoder.") for k in keys):
        return ("this looks like a SAM / MedSAM (segment-anything ViT) or LiteMedSAM checkpoint, not MedSAM2 "
                "(SAM2.1 Hiera)")
    pe = sd.get("image_encoder.trunk.patch_embed.proj.weight")
    if pe is not None and getattr(pe, "ndim", 0) == 4:
        dim = int(pe.shape[0])
        blocks = len({k.split(".")[3] for k in keys if k.startswith("image_encoder.trunk.blocks.")})
        if dim != 96 or blocks != 12:
            size = {(96, 16): "small", (112, 24): "base+", (144, 48): "large"}.get((dim, blocks), "another size")
            return (f"this looks like SAM2 Hiera-{size} (embed {dim}, {blocks} blocks); MedSAM2 uses Hiera-tiny "
                    f"(embed 96, 12 blocks)")
    elif any(k.startswith("image_encoder.") for k in keys) and not any(
            k.startswith("image_encoder.trunk.") for k in keys):
        return "the image encoder is not a Hiera trunk (an EfficientTAM / other SAM2 variant?), not MedSAM2"
    if not any(k.startswith("memory_attention.") for k in keys):
        return "the memory modules are missing (an image-only SAM2 checkpoint?)"
    return None


def load_medsam2_state_dict(path: str | os.PathLike) -> dict:
    """Read (safely, weights only) and strictly validate a MedSAM2 checkpoint
    (``{"model": state_dict}`` or a plain state dict, 471 keys). Raises CheckpointError."""
    return load_state_dict_file(path, expected_keys=expected_shapes(), model_name=MODEL_NAME,
                                diagnose=diagnose_weights)


class MedSAM2Cancelled(MedsamGuiError):
    """The segmentation was cancelled."""


@dataclass
class SliceUpdate:
    """One slice as it arrives: ``index`` (volume z), ``mask`` (H, W) bool, ``present``
    (object score > 0), ``direction`` "key" | "forward" | "backward", ``score`` the object
    score logit."""

    index: int
    mask: np.ndarray
    present: bool
    direction: str
    score: float = 0.0

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass
class Segmentation:
    """An iterable segmentation job (see the module docstring). After iteration:
    ``result`` bool (Z, Y, X), ``union`` bool (Z, Y, X) before the component step,
    ``key_mask`` (H, W) bool, ``cancelled``, ``timings`` ({"encode_s": [...], "steps": n})."""

    _run: Callable[["Segmentation"], Iterator[SliceUpdate]]
    result: np.ndarray | None = None
    union: np.ndarray | None = None
    key_mask: np.ndarray | None = None
    cancelled: bool = False
    timings: dict = field(default_factory=lambda: {"encode_s": [], "steps": 0})

    def __iter__(self) -> Iterator[SliceUpdate]:
        return self._run(self)

    def run(self, on_slice: Callable[[SliceUpdate], None] | None = None) -> np.ndarray:
        for upd in self:
            if on_slice is not None:
                on_slice(upd)
        return self.result


class MedSAM2Engine:
    """MedSAM2 on one device. ``checkpoint``: path of an official file (see
    ``OFFICIAL_FILES``) or an already validated state dict. ``device``: "auto" | "cpu" |
    "cuda" | "mps". ``precision``: "fp32" (reference numbers) | "auto" / "bf16" (bfloat16
    autocast on CUDA, as the official GPU scripts; fp32 elsewhere). ``cache_slices``:
    encoder features kept (the key slice is always kept; None keeps every slice); they are
    reused by the next job on the same uint8 volume and z-range. One job at a time (a lock)."""

    name = "medsam2"
    input_size = 512

    def __init__(self, checkpoint, device: str = "auto", precision: str = "fp32", *, cache_slices: int = 3) -> None:
        from ..device import pick_device, resolve_precision
        from .model import MedSAM2Model

        self.device = pick_device(device)
        eff = resolve_precision(precision, self.device)
        self.precision = "bf16" if eff == "bf16" and self.device.type == "cuda" else "fp32"
        if isinstance(checkpoint, Mapping):
            sd = dict(checkpoint)
            from ..checkpoints import check_state_dict

            check_state_dict(sd, expected_shapes(), model_name=MODEL_NAME, source="the given weights",
                             diagnose=diagnose_weights)
            self.checkpoint_path: Path | None = None
            self.checkpoint_id = "state-dict"
        else:
            self.checkpoint_path = Path(checkpoint)
            sd = load_medsam2_state_dict(self.checkpoint_path)
            self.checkpoint_id = file_sha256(self.checkpoint_path)
        model = MedSAM2Model()
        try:
            model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        except RuntimeError as exc:  # shapes were checked; this is a last guard
            raise CheckpointError(f"the MedSAM2 weights could not be loaded: {str(exc)[:300]}") from None
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.cache_slices = None if cache_slices is None else max(2, int(cache_slices))
        self._lock = threading.Lock()
        self._features: tuple[str, int, int, Any] | None = None  # (volume digest, z0, z1, FeatureCache)

    def _feature_cache(self, u8: np.ndarray, z0: int, z1: int):
        import hashlib

        from .propagator import FeatureCache

        crop = np.ascontiguousarray(u8[z0: z1 + 1])
        digest = hashlib.blake2b(crop.data, digest_size=16).hexdigest() + str(crop.shape)
        if self._features is not None and self._features[:3] == (digest, z0, z1):
            return self._features[3]
        cache = FeatureCache(self.cache_slices)
        self._features = (digest, z0, z1, cache)
        return cache

    def clear_cache(self) -> None:
        """Drop the cached encoder features."""
        self._features = None

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        import contextlib

        import torch

        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def _as_uint8(volume, window) -> np.ndarray:
        from .preprocessing import window_to_uint8

        v = np.asarray(volume)
        if v.ndim != 3:
            raise MedsamGuiError(f"MedSAM2 needs a 3D volume (z, y, x); got an array of shape {v.shape}.")
        if window is not None:
            return window_to_uint8(v, window)
        if v.dtype != np.uint8:
            raise MedsamGuiError("pass window=(lo, hi) with a volume in scan units (or a uint8 volume already "
                                 "windowed over the whole scan).")
        return v

    # ------------------------------------------------------------------ API
    def segmentation(self, volume, key_index: int, box_xyxy=None, *, recist=None, mask=None, window=None,
                     z_range: tuple[int, int] | None = None, largest_component: bool | None = None,
                     cancel: Callable[[], bool] | None = None, trace: list | None = None) -> Segmentation:
        """An iterable :class:`Segmentation` job (nothing runs until it is iterated)."""
        u8 = self._as_uint8(volume, window)
        nz, h, w = u8.shape
        if sum(p is not None for p in (box_xyxy, recist, mask)) != 1:
            raise MedsamGuiError("give exactly one prompt: a box, a RECIST line or a key-slice mask.")
        key_index = int(key_index)
        if not 0 <= key_index < nz:
            raise MedsamGuiError(f"key slice {key_index} is outside the scan (slices 0..{nz - 1}).")
        z0, z1 = (0, nz - 1) if z_range is None else sorted(int(v) for v in z_range)
        if z0 < 0 or z1 >= nz:
            raise MedsamGuiError(f"the z-range {z0},{z1} is outside the scan (slices 0..{nz - 1}).")
        if not z0 <= key_index <= z1:
            raise MedsamGuiError(f"the key slice {key_index} is outside the z-range {z0},{z1}.")
        if box_xyxy is not None:
            box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
            if box.size != 4 or not np.all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
                raise MedsamGuiError(f"the box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1; got {box_xyxy}.")
        if recist is not None:
            pts = np.asarray(recist, dtype=np.float64)
            if pts.shape != (2, 2) or not np.all(np.isfinite(pts)):
                raise MedsamGuiError(f"the RECIST line must be two points ((x0, y0), (x1, y1)); got {recist}.")
            if np.array_equal(pts[0], pts[1]):
                raise MedsamGuiError("the RECIST line has zero length; draw it across the lesion.")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (h, w):
                raise MedsamGuiError(f"the key mask must be {h}x{w} (the slice size); got {mask.shape}.")
        mask_flow = box_xyxy is None
        keep_largest = (not mask_flow) if largest_component is None else bool(largest_component)

        def run(job: Segmentation) -> Iterator[SliceUpdate]:
            with self._lock:
                yield from self._run(job, u8, key_index, z0, z1, box_xyxy, recist, mask, mask_flow,
                                     keep_largest, cancel, trace)

        return Segmentation(run)

    def segment_volume(self, volume, key_index: int, box_xyxy=None, *, recist=None, mask=None, window=None,
                       z_range: tuple[int, int] | None = None, largest_component: bool | None = None,
                       cancel: Callable[[], bool] | None = None,
                       on_slice: Callable[[SliceUpdate], None] | None = None) -> np.ndarray:
        """bool (Z, Y, X) lesion mask (see the module docstring)."""
        job = self.segmentation(volume, key_index, box_xyxy, recist=recist, mask=mask, window=window,
                                z_range=z_range, largest_component=largest_component, cancel=cancel)
        return job.run(on_slice)

    # ------------------------------------------------------------------ the flow
    def _run(self, job, u8, key, z0, z1, box, recist, mask, mask_flow, keep_largest, cancel, trace):
        import torch

        from .preprocessing import largest_component, recist_box, slice_to_input
        from .propagator import VolumePropagator

        nz, h, w = u8.shape
        out = np.zeros(u8.shape, dtype=bool)
        job.result = out
        k = key - z0
        cache = self._feature_cache(u8, z0, z1)
        cache.pinned = {k}

        def new_state() -> VolumePropagator:
            return VolumePropagator(self.model, z1 - z0 + 1, lambda i: slice_to_input(u8[z0 + i]), (h, w),
                                    cache=cache, device=self.device, trace=trace,
                                    on_encode=lambda i, s: job.timings["encode_s"].append(s))

        def prompt(p: VolumePropagator, key_mask) -> torch.Tensor:
            if key_mask is None:
                return p.add_box(k, box)
            return p.add_mask(k, key_mask)

        def stopped() -> bool:
            if cancel is not None and cancel():
                job.cancelled = True
            return job.cancelled

        def ctx():
            import contextlib

            stack = contextlib.ExitStack()
            stack.enter_context(torch.inference_mode())
            stack.enter_context(self._autocast())
            return stack

        # The model runs inside ctx() only; nothing is held across a yield, so the caller's
        # code never runs under inference mode or autocast.
        with ctx():
            p = new_state()
            key_mask = None
            if mask_flow:
                if mask is not None:
                    key_mask = mask
                else:
                    rbox = recist_box(recist[0], recist[1], (h, w))
                    key_mask = (p.add_box(k, rbox) > 0).cpu().numpy()
                    p.reset()
                logits = p.add_mask(k, key_mask)
            else:
                logits = p.add_box(k, box)
            job.key_mask = (logits > 0).cpu().numpy()
        for reverse in (False, True):
            if reverse:
                with ctx():
                    if mask_flow:
                        p = new_state()
                    p.reset()
                    prompt(p, key_mask)
            frames = p.propagate(reverse=reverse)
            while True:
                if stopped():
                    return
                with ctx():
                    fo = next(frames, None)
                    if fo is None:
                        break
                    present = bool(fo.object_score.item() > 0)
                    m = (p.video_res(fo.low_res) > 0).cpu().numpy() if present else np.zeros((h, w), bool)
                out[z0 + fo.frame] |= m
                job.timings["steps"] += 1
                direction = "key" if fo.frame == k else ("backward" if reverse else "forward")
                yield SliceUpdate(z0 + fo.frame, m, present, direction, float(fo.object_score.item()))
        job.union = out.copy()
        if keep_largest and out.any():
            out[...] = largest_component(out)
