"""MedSAM's pre- and post-processing and its box coordinate transform (numpy/torch, no Qt).

Reference path (MedSAM's own inference): an (H, W) uint8 slice is repeated to 3 channels,
resized to 1024x1024 with ``skimage.transform.resize(order=3, preserve_range=True,
anti_aliasing=True)``, truncated to uint8 and min-max normalised to [0, 1] by its own min/max
(no SAM pixel mean/std). A box (x0, y0, x1, y1) in slice pixels becomes box / [W, H, W, H] * 1024.
The decoder's low-res logits (B, 1, 256, 256) become a mask by sigmoid, bilinear resize to
(H, W) (align_corners=False) and > 0.5.

Fast path: the reference resize is linear and separable, ``out = Ry @ X @ Rx.T`` with ``Ry``
(1024, H) and ``Rx`` (1024, W) taken once from scipy's B-spline code; as float64 matrix
products (numpy, or torch on any device, batched) it reproduces the reference uint8 image up to
float rounding before the truncation (rarely 1 grey level). ``method="bicubic"`` (torch's
antialiased bicubic) is kept only for comparison.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

INPUT_SIZE = 1024

# --------------------------------------------------------------------------- reference

def resize_to_1024_uint8(slice_hw: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (1024, 1024) uint8 as the reference does it (3 equal channels resized
    with skimage order=3, preserve_range, anti_aliasing, truncated to uint8). The channels are
    identical, so one channel is resized (bit-identical to resizing the 3-channel image)."""
    from skimage import transform

    arr = np.asarray(slice_hw)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W), got shape {arr.shape}")
    out = transform.resize(arr, (INPUT_SIZE, INPUT_SIZE), order=3, preserve_range=True, anti_aliasing=True)
    return out.astype(np.uint8)


def normalize_1024(img_1024_uint8: np.ndarray) -> np.ndarray:
    """(1024, 1024) uint8 -> float64 in [0, 1] by the image's own min/max (denominator >= 1e-8)."""
    img = img_1024_uint8.astype(np.float64)
    lo = img.min()
    return (img - lo) / np.clip(img.max() - lo, a_min=1e-8, a_max=None)


def preprocess_slice(slice_hw: np.ndarray):
    """(H, W) uint8 slice -> encoder input tensor (1, 3, 1024, 1024) float32 on CPU."""
    import torch

    norm = normalize_1024(resize_to_1024_uint8(slice_hw))
    t = torch.from_numpy(norm).float()
    return t.unsqueeze(0).unsqueeze(0).expand(1, 3, INPUT_SIZE, INPUT_SIZE).contiguous()


def box_to_1024(box_xyxy: Sequence[float], hw: tuple[int, int]) -> np.ndarray:
    """Box (x0, y0, x1, y1) in slice pixels of an (H, W) slice -> float64 (4,) in 1024 space."""
    h, w = int(hw[0]), int(hw[1])
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(4)
    return box / np.array([w, h, w, h], dtype=np.float64) * INPUT_SIZE


def postprocess_low_res_logits(logits, hw: tuple[int, int]) -> np.ndarray:
    """Low-res logits (B, 1, 256, 256) (torch tensor or numpy) -> bool mask (H, W) for B == 1,
    or (B, H, W) for B > 1: sigmoid, bilinear resize to (H, W) (align_corners=False), > 0.5."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(logits).detach().float().cpu()
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    prob = torch.sigmoid(t)
    prob = F.interpolate(prob, size=(int(hw[0]), int(hw[1])), mode="bilinear", align_corners=False)
    mask = (prob[:, 0] > 0.5).numpy()
    return mask[0] if mask.shape[0] == 1 else mask


# --------------------------------------------------------------------------- fast


@lru_cache(maxsize=16)
def _resize_matrix_cached(n_in: int, n_out: int) -> np.ndarray:
    from scipy import ndimage as ndi

    eye = np.eye(n_in, dtype=np.float64)
    factor = n_in / n_out
    sigma = max(0.0, (factor - 1.0) / 2.0)  # skimage anti_aliasing sigma (0 when upsampling)
    if sigma > 0:
        eye = ndi.gaussian_filter(eye, (sigma, 0.0), mode="mirror")
    # zoom along axis 0 only (factor 1 along axis 1 reproduces the identity to ~1e-16)
    out = ndi.zoom(eye, (n_out / n_in, 1.0), order=3, mode="mirror", grid_mode=True)
    out.setflags(write=False)
    return out


def resize_matrix(n_in: int, n_out: int = INPUT_SIZE) -> np.ndarray:
    """(n_out, n_in) float64 matrix R such that ``R @ v`` is the reference 1D resize of v
    (``skimage.transform.resize(order=3, mode="reflect", anti_aliasing=True)`` before its clip),
    i.e. the reference 2D resize of X (H, W) is ``clip(Ry @ X @ Rx.T, X.min(), X.max())``."""
    return _resize_matrix_cached(int(n_in), int(n_out))


def resize_to_1024_fast(slice_hw: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (1024, 1024) uint8 with two float64 matrix products (numpy): the
    reference resize up to float rounding before the uint8 truncation (rarely 1 grey level)."""
    arr = np.asarray(slice_hw)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W), got shape {arr.shape}")
    x = arr.astype(np.float64)
    ry = resize_matrix(arr.shape[0])
    rx = resize_matrix(arr.shape[1])
    out = ry @ x @ rx.T
    np.clip(out, x.min(), x.max(), out=out)
    return out.astype(np.uint8)


def preprocess_fast(slice_hw: np.ndarray):
    """(H, W) uint8 -> encoder input (1, 3, 1024, 1024) float32 CPU tensor, like
    ``medsam.preprocess_slice`` but with :func:`resize_to_1024_fast`."""
    import torch

    norm = normalize_1024(resize_to_1024_fast(slice_hw))
    t = torch.from_numpy(norm).float()
    return t[None, None].expand(1, 3, INPUT_SIZE, INPUT_SIZE).contiguous()


_torch_mats: dict = {}
_torch_mats_lock = threading.Lock()


def _torch_resize_matrix(n_in: int, device, dtype):
    import torch

    key = (int(n_in), str(device), dtype)
    with _torch_mats_lock:
        m = _torch_mats.get(key)
        if m is None:
            m = torch.from_numpy(np.array(resize_matrix(n_in))).to(device=device, dtype=dtype)
            _torch_mats[key] = m
        return m


def preprocess_batch(slices_u8, method: str = "spline", out_dtype=None):
    """Batched preprocessing on the slices' device (GPU or CPU).

    ``slices_u8``: torch uint8 tensor (B, H, W) (one shape for the batch). Returns the encoder
    input (B, 3, 1024, 1024) (``out_dtype``, default float32) in [0, 1], normalised per slice by
    its own min/max like the reference. ``method``: "spline" (the reference B-spline resize as
    two float64 matrix products, then uint8 truncation: equal to the reference up to rare
    1-grey-level flips) or "bicubic" (``F.interpolate(mode="bicubic", antialias=True)``,
    clamped and truncated: an approximation, several grey levels off).
    """
    import torch
    import torch.nn.functional as F

    x = slices_u8
    if x.ndim != 3:
        raise ValueError(f"expected slices (B, H, W), got shape {tuple(x.shape)}")
    b, h, w = x.shape
    out_dtype = out_dtype or torch.float32
    if method == "spline":
        xf = x.to(torch.float64)
        ry = _torch_resize_matrix(h, x.device, torch.float64)
        rx = _torch_resize_matrix(w, x.device, torch.float64)
        img = torch.matmul(torch.matmul(ry, xf), rx.T)  # (B, 1024, 1024)
    elif method == "bicubic":
        xf = x.to(torch.float32)[:, None]
        img = F.interpolate(xf, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", align_corners=False,
                            antialias=True)[:, 0].to(torch.float64)
    else:
        raise ValueError(f"unknown preprocessing method {method!r} (spline or bicubic)")
    lo_in = x.amin(dim=(1, 2)).to(img.dtype)[:, None, None]
    hi_in = x.amax(dim=(1, 2)).to(img.dtype)[:, None, None]
    img = torch.minimum(torch.maximum(img, lo_in), hi_in).trunc()  # clip like skimage, astype(uint8)
    lo = img.amin(dim=(1, 2), keepdim=True)
    hi = img.amax(dim=(1, 2), keepdim=True)
    norm = (img - lo) / torch.clamp(hi - lo, min=1e-8)
    return norm.to(out_dtype)[:, None].expand(b, 3, INPUT_SIZE, INPUT_SIZE).contiguous()
