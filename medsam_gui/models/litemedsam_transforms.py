"""LiteMedSAM's pre- and post-processing and box transform (numpy/torch, no Qt, no OpenCV).

Reference steps (MedSAM repository, branch LiteMedSAM, 2D inference):

1. the (H, W) uint8 slice (windowed over the whole volume by ``core.intensity``) is repeated to
   3 channels and resized so that its longest side is 256: new size
   ``(int(H * s + 0.5), int(W * s + 0.5))`` with ``s = 256 / max(H, W)``, with OpenCV's
   ``cv2.resize(..., interpolation=cv2.INTER_AREA)`` on the uint8 image;
2. min-max normalised to [0, 1] by the resized image's own min/max (denominator >= 1e-8, float64);
3. zero-padded at the bottom and right to 256 x 256 -> encoder input (1, 3, 256, 256) float32;
4. a box (x0, y0, x1, y1) in slice pixels becomes ``int(v * 256 / max(H, W))`` per coordinate;
5. the decoder's logits (B, 1, 256, 256) are cropped to the resized (newh, neww), resized
   bilinearly (align_corners=False) to (H, W), then ``sigmoid > 0.5``.

:func:`resize_area_uint8` reimplements OpenCV's INTER_AREA resize of a uint8 image with equal
channels in numpy, bit for bit (no OpenCV dependency): the three code paths OpenCV takes are

- an integer shrink factor in both axes: block means (factor 2x2: ``(a+b+c+d+2) >> 2``; other
  factors: float32 ``sum * (1/area)`` rounded half to even);
- other shrinks (both factors >= 1): OpenCV's area-weight tables in float32, accumulated in
  OpenCV's order, rounded half to even;
- any enlargement (a factor < 1 in either axis): bilinear with OpenCV's "area" coefficients
  in 11-bit fixed point, the vertical pass rounding as OpenCV's vector kernel does
  (``(((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2``) on every pixel.

Checked equal to opencv-python-headless 5.1.0.95 (the golden file's values) on the golden
slices and on random images of 200+ sizes (tests/test_litemedsam_golden.py runs that check when
cv2 happens to be installed; it is not a dependency). An OpenCV build whose scalar row tail
rounds differently could differ by 1 grey level on a few pixels of the last columns.

No work at import time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INPUT_SIZE = 256
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS  # 2048


# --------------------------------------------------------------------------- geometry

def resized_hw(hw: tuple[int, int], target: int = INPUT_SIZE) -> tuple[int, int]:
    """(newh, neww) of an (H, W) slice whose longest side becomes ``target`` (rounded half up)."""
    h, w = int(hw[0]), int(hw[1])
    scale = target * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def box_to_256(box_xyxy: Sequence[float], hw: tuple[int, int], target: int = INPUT_SIZE) -> np.ndarray:
    """Box (x0, y0, x1, y1) in slice pixels of an (H, W) slice -> float64 (4,) in the 256-pixel
    model frame: each coordinate times ``256 / max(H, W)``, truncated toward zero (``int()``)."""
    ratio = target / max(int(hw[0]), int(hw[1]))
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(4)
    return np.trunc(box * ratio)


# --------------------------------------------------------------------------- INTER_AREA

def _area_tab(n_in: int, n_out: int, scale: float):
    """OpenCV's computeResizeAreaTab: [(dst, src, float32 weight)] in OpenCV's order."""
    tab = []
    for d in range(n_out):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, n_in - f1)
        s1 = int(np.ceil(f1))
        s2 = int(np.floor(f2))
        s2 = min(s2, n_in - 1)
        s1 = min(s1, s2)
        if s1 - f1 > 1e-3:
            tab.append((d, s1 - 1, np.float32((s1 - f1) / cell)))
        for s in range(s1, s2):
            tab.append((d, s, np.float32(1.0 / cell)))
        if f2 - s2 > 1e-3:
            tab.append((d, s2, np.float32(min(min(f2 - s2, 1.0), cell) / cell)))
    return tab


def _tab_by_rank(tab, n_out: int):
    """Group an area table by each entry's rank within its destination: [(dst, src, w) arrays]."""
    ranks: list[list] = []
    count = [0] * n_out
    for d, s, a in tab:
        r = count[d]
        count[d] += 1
        if r == len(ranks):
            ranks.append([])
        ranks[r].append((d, s, a))
    return [(np.array([e[0] for e in g]), np.array([e[1] for e in g]), np.array([e[2] for e in g], np.float32))
            for g in ranks]


def _resize_area_general(x: np.ndarray, oh: int, ow: int, sy: float, sx: float) -> np.ndarray:
    h, w = x.shape
    xs = x.astype(np.float32)
    buf = np.zeros((h, ow), np.float32)
    for d, s, a in _tab_by_rank(_area_tab(w, ow, sx), ow):
        buf[:, d] = buf[:, d] + xs[:, s] * a[None, :]
    out = np.zeros((oh, ow), np.float32)
    for r, (d, s, a) in enumerate(_tab_by_rank(_area_tab(h, oh, sy), oh)):
        term = buf[s] * a[:, None]
        out[d] = term if r == 0 else out[d] + term
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _resize_area_fast(x: np.ndarray, ky: int, kx: int) -> np.ndarray:
    h, w = x.shape
    oh, ow = h // ky, w // kx
    blocks = x[: oh * ky, : ow * kx].astype(np.int32).reshape(oh, ky, ow, kx).sum(axis=(1, 3))
    if ky == 2 and kx == 2:
        return ((blocks + 2) >> 2).astype(np.uint8)
    val = blocks.astype(np.float32) * np.float32(1.0 / (ky * kx))
    return np.clip(np.rint(val), 0, 255).astype(np.uint8)


def _linear_area_coeffs(n_in: int, n_out: int, *, clip_last: bool = True):
    """OpenCV's INTER_AREA coefficients for enlarging: (src index (n_out,), weights (n_out, 2)
    int16-valued). ``clip_last``: the horizontal pass clamps a source index past the last pixel
    (weight (1, 0)); the vertical pass keeps it (its rows are clipped where they are read)."""
    inv_scale = n_out / n_in
    scale = 1.0 / inv_scale
    ofs = np.empty(n_out, np.int64)
    coef = np.empty((n_out, 2), np.int64)
    for d in range(n_out):
        s = int(np.floor(d * scale))
        f = np.float32((d + 1) - (s + 1) * inv_scale)
        f = np.float32(0.0) if f <= 0 else np.float32(f - np.float32(np.floor(f)))
        if clip_last and s >= n_in - 1:
            s, f = n_in - 1, np.float32(0.0)
        ofs[d] = s
        c0 = np.float32(np.float32(1.0) - f)
        coef[d, 0] = int(np.rint(np.float32(c0 * np.float32(_COEF_SCALE))))
        coef[d, 1] = int(np.rint(np.float32(f * np.float32(_COEF_SCALE))))
    return ofs, coef


def _resize_linear_area(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    h, w = x.shape
    xo, xc = _linear_area_coeffs(w, ow)
    xi = x.astype(np.int64)
    hor = xi[:, xo] * xc[None, :, 0] + xi[:, np.minimum(xo + 1, w - 1)] * xc[None, :, 1]  # (h, ow)
    yo, yc = _linear_area_coeffs(h, oh, clip_last=False)
    s0 = hor[np.clip(yo, 0, h - 1)]
    s1 = hor[np.clip(yo + 1, 0, h - 1)]
    b0 = yc[:, 0:1]
    b1 = yc[:, 1:2]
    # OpenCV's vector kernel: 16-bit products keeping the high halves, then a rounding shift
    vec = (((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2
    return np.clip(vec, 0, 255).astype(np.uint8)


def resize_area_uint8(img_hw: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 -> (oh, ow) uint8, equal to each channel of ``cv2.resize(np.dstack([img] * 3),
    (ow, oh), interpolation=cv2.INTER_AREA)`` (also to the 1-channel call)."""
    x = np.asarray(img_hw)
    if x.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W), got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"expected a uint8 slice, got {x.dtype}")
    h, w = x.shape
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"cannot resize to {oh}x{ow}")
    if (oh, ow) == (h, w):
        return x.copy()
    inv_x, inv_y = ow / w, oh / h
    sx, sy = 1.0 / inv_x, 1.0 / inv_y
    if sx >= 1 and sy >= 1:
        ix, iy = int(round(sx)), int(round(sy))
        eps = np.finfo(np.float64).eps
        if abs(sx - ix) < eps and abs(sy - iy) < eps:
            return _resize_area_fast(x, iy, ix)
        return _resize_area_general(x, oh, ow, sy, sx)
    return _resize_linear_area(x, oh, ow)


# --------------------------------------------------------------------------- pipeline

def resize_longest_side(slice_hw: np.ndarray, target: int = INPUT_SIZE) -> np.ndarray:
    """(H, W) uint8 -> (newh, neww) uint8 resized (INTER_AREA) so its longest side is ``target``."""
    arr = np.asarray(slice_hw)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W), got shape {arr.shape}")
    return resize_area_uint8(arr, resized_hw(arr.shape, target))


def normalize_pad(img_u8: np.ndarray, target: int = INPUT_SIZE) -> np.ndarray:
    """(newh, neww) uint8 -> (target, target) float32: min-max to [0, 1] (float64, denominator
    >= 1e-8), zero-padded at the bottom/right."""
    img = img_u8.astype(np.float64)
    lo = img.min()
    norm = (img - lo) / np.clip(img.max() - lo, a_min=1e-8, a_max=None)
    out = np.zeros((target, target), np.float32)
    out[: norm.shape[0], : norm.shape[1]] = norm
    return out


def preprocess_slice_256(slice_hw: np.ndarray):
    """(H, W) uint8 slice -> encoder input tensor (1, 3, 256, 256) float32 (CPU), the reference's."""
    import torch

    x = torch.from_numpy(normalize_pad(resize_longest_side(slice_hw)))
    return x[None, None].expand(1, 3, INPUT_SIZE, INPUT_SIZE).contiguous()


def preprocess_batch_256(slices: Sequence[np.ndarray]):
    """(H, W) uint8 slices (any shapes) -> (N, 1, 256, 256) float32 CPU tensor (one channel: the
    reference's 3 channels are equal; the fast encoder folds them into its first layer)."""
    import torch

    arr = np.stack([normalize_pad(resize_longest_side(s)) for s in slices])
    return torch.from_numpy(arr)[:, None]


def postprocess_logits(logits, hw: tuple[int, int]) -> np.ndarray:
    """Low-res logits (B, 1, 256, 256) -> bool mask (H, W) for B == 1, else (B, H, W): crop to
    the resized size, bilinear (align_corners=False) to (H, W), sigmoid > 0.5."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(logits).detach().float().cpu()
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    h, w = int(hw[0]), int(hw[1])
    nh, nw = resized_hw((h, w), t.shape[-1])
    t = F.interpolate(t[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
    mask = (torch.sigmoid(t)[:, 0] > 0.5).numpy()
    return mask[0] if mask.shape[0] == 1 else mask
