"""MedSAM2 input/output transforms, as in the official ``medsam2_infer_3D_CT.py``.

* :func:`window_to_uint8` volume (Z,Y,X) any real dtype + window (lo, hi) -> uint8 (Z,Y,X):
  clip to the window, min-max over the *clipped volume's own* extremes, x255 in float64,
  truncation to uint8 (``np.uint8``).
* :func:`slice_to_input` (H,W) uint8 -> (3,512,512) float32: grey to RGB, PIL bicubic resize
  to 512x512 when the slice is not already 512x512, /255, minus ImageNet mean, divided by
  ImageNet std (float64 arithmetic with float32-rounded mean/std, then float32).
* :func:`box_to_model` box (x0,y0,x1,y1) in slice pixels -> two points (2,2) in model pixels
  (x/W*512, y/H*512) labelled 2 (top-left) and 3 (bottom-right).
* :func:`logits_to_slice` low-res logits (..,128,128) -> (H,W) float32 by bilinear
  resampling (align_corners=False); the mask is ``> 0``.
* :func:`recist_box` the official RECIST-line box (square around the line's midpoint).
* :func:`largest_component` largest 26-connected 3D component (skimage labelling).
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 512
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def window_to_uint8(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """(Z,Y,X) -> uint8 (Z,Y,X). A constant clipped volume gives zeros."""
    lo, hi = float(window[0]), float(window[1])
    v = np.clip(np.asarray(volume), lo, hi)
    vmin, vmax = v.min(), v.max()
    if vmax <= vmin:
        return np.zeros(v.shape, dtype=np.uint8)
    return np.uint8((v - vmin) / (vmax - vmin) * 255.0)


def slice_to_input(slice_u8: np.ndarray):
    """(H,W) uint8 -> torch (3,512,512) float32 encoder input."""
    import torch

    a = np.asarray(slice_u8)
    if a.dtype != np.uint8:
        a = a.astype(np.uint8)
    if a.shape != (IMAGE_SIZE, IMAGE_SIZE):
        from PIL import Image

        rgb = Image.fromarray(a).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        img = np.asarray(rgb).transpose(2, 0, 1).astype(np.float64)
    else:
        img = np.repeat(a[None].astype(np.float64), 3, axis=0)
    mean = np.asarray(IMG_MEAN, dtype=np.float32).astype(np.float64)[:, None, None]
    std = np.asarray(IMG_STD, dtype=np.float32).astype(np.float64)[:, None, None]
    return torch.from_numpy(((img / 255.0 - mean) / std).astype(np.float32))


def box_to_model(box_xyxy, hw: tuple[int, int]):
    """Box in slice pixels -> (coords (1,2,2) float32, labels (1,2) int32) for the model."""
    import torch

    h, w = hw
    pts = torch.tensor(np.asarray(box_xyxy, dtype=np.float64), dtype=torch.float32).reshape(1, 2, 2)
    pts = pts / torch.tensor([w, h]) * IMAGE_SIZE
    return pts, torch.tensor([[2, 3]], dtype=torch.int32)


def logits_to_slice(low_res, hw: tuple[int, int]):
    """(1,1,h,w) logits -> (H,W) float32 torch tensor (bilinear, align_corners=False)."""
    import torch.nn.functional as F

    if tuple(low_res.shape[-2:]) == tuple(hw):
        return low_res[0, 0]
    return F.interpolate(low_res, size=tuple(hw), mode="bilinear", align_corners=False)[0, 0]


def recist_box(p0, p1, hw: tuple[int, int], shift: int = 0) -> np.ndarray:
    """The official RECIST prompt box: a square of side ~|p1-p0| centred on the midpoint
    (integer centre, half side truncated), widened by ``shift``, clipped to the slice.
    p0, p1 are (x, y) slice pixels; returns int (x0, y0, x1, y1)."""
    h, w = hw
    a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    centre = ((a + b) / 2).astype(int)
    half = int(np.linalg.norm(a - b) / 2)
    x0, y0 = max(0, centre[0] - half - shift), max(0, centre[1] - half - shift)
    x1, y1 = min(w - 1, centre[0] + half + shift), min(h - 1, centre[1] + half + shift)
    return np.array([x0, y0, x1, y1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """bool (Z,Y,X) -> its largest 26-connected component (ties: the first labelled)."""
    from skimage import measure

    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m.copy()
    labels = measure.label(m, connectivity=m.ndim)
    counts = np.bincount(labels.ravel())
    return labels == (int(np.argmax(counts[1:])) + 1)
