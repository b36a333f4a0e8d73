"""UniverSeg v1: the in-context segmentation network (Butoi et al., ICCV 2023), our own code.

Architecture (what the official checkpoint ``universeg_v1_nf64_ss64_STA.pt`` expects):

- Two streams: the *target* (one image) and the *support set* (S image+label pairs, 2 channels).
  Tensors inside the network are (B, S, C, H, W); the target stream has S = 1.
- ``CrossBlock`` = ``cross`` (a 3x3 conv over every concatenated (target, support_j) feature
  pair, channels ordered target first then support, no activation; the new target is the mean of
  the S results, the new support the S results themselves) followed by ``target`` and
  ``support``: separate 3x3 conv + LeakyReLU(0.01), each applied to every item of its stream.
- Encoder: 4 CrossBlocks of 64 features, 2x2 max-pool between levels. Decoder: 3 CrossBlocks of
  64 features; before each, both streams are upsampled x2 (bilinear, align_corners=True) and the
  encoder's output of that level (skip) is concatenated on the channel axis (upsampled first).
- ``out_conv``: 1x1 conv on the target stream -> 1 channel of logits (no sigmoid).
- 1,182,785 parameters, 44 tensors. Module names reproduce the checkpoint's keys, e.g.
  ``enc_blocks.0.cross.cross_conv.weight`` (64, 3, 3, 3), ``enc_blocks.0.target.vmapped.conv.bias``,
  ``out_conv.conv.weight`` (1, 64, 1, 1).

The cross conv is computed as ``W_t * t + W_s * s_j + b`` with the weight split along its input
channels: mathematically the same as convolving the concatenated pair, but the target term is
computed once instead of S times (less time and memory; parity with the reference is within
float rounding, ~1e-6).

Inputs are float32, images in [0, 1], labels binary 0/1, H and W divisible by 8 (the model was
trained at 128 x 128; see :mod:`medsam_gui.models.incontext` for the resizing workflow).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

ENCODER_BLOCKS = (64, 64, 64, 64)
N_PARAMETERS = 1_182_785
N_TENSORS = 44
CHECKPOINT_NAME = "universeg_v1_nf64_ss64_STA.pt"
INPUT_SIZE = (128, 128)


class _ConvOp(nn.Module):
    """3x3 (or 1x1) 'same' conv, optionally followed by LeakyReLU(0.01). Key: ``conv``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.leaky_relu(x, 0.01, inplace=True) if self.activation else x


class _PerItem(nn.Module):
    """Applies a 2D module to every item of a (B, S, C, H, W) tensor. Key: ``vmapped``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.vmapped = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        y = self.vmapped(x.reshape(b * s, *x.shape[2:]))
        return y.reshape(b, s, *y.shape[1:])


_CHUNK_BYTES = 16 << 20  # temporaries of the fast path's per-pair loop


def _maxpool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool with stride 2 over the last two axes (even sizes), any leading axes.

    The same values as ``F.max_pool2d(x, 2)`` (which also computes argmax indices on the CPU and
    is several times slower there).
    """
    y = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(y[..., 0::2], y[..., 1::2])


_UP_MATRICES: dict = {}


def _up_matrix(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(2n, n) matrix of x2 linear interpolation with align_corners=True (rows sum to 1)."""
    key = (n, dtype, device)
    m = _UP_MATRICES.get(key)
    if m is None:
        src = torch.arange(2 * n, dtype=torch.float64) * ((n - 1) / max(1, 2 * n - 1))
        i0 = src.floor().long().clamp(max=n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        frac = src - i0
        with torch.inference_mode(False):  # usable in and outside inference mode
            m = torch.zeros(2 * n, n, dtype=torch.float64)
            rows = torch.arange(2 * n)
            m.index_put_((rows, i0), 1 - frac, accumulate=True)
            m.index_put_((rows, i1), frac, accumulate=True)
            m = m.to(device=device, dtype=dtype)
        _UP_MATRICES[key] = m
    return m


def _up2(x: torch.Tensor) -> torch.Tensor:
    """x2 bilinear upsampling (align_corners=True) of the last two axes, any leading axes.

    The same values as ``F.interpolate(..., scale_factor=2, mode="bilinear",
    align_corners=True)`` (to float rounding, ~1e-6) as two matrix products: separable linear
    interpolation. On the CPU this is 3-8x faster than ``F.interpolate`` for many channels.
    """
    h, w = x.shape[-2:]
    uh = _up_matrix(h, x.dtype, x.device)
    uw = uh if w == h else _up_matrix(w, x.dtype, x.device)
    return torch.matmul(uh, torch.matmul(x, uw.t()))


def _conv_sum(parts, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3 'same' conv of the channel-concatenation of ``parts`` (N,C_k,H,W) without building it.

    conv(cat(x_1..x_k), W) = sum_k conv(x_k, W[:, slice_k]): no copy of the inputs (the
    concatenation costs as much memory traffic as a conv on the CPU).
    """
    out, start = None, 0
    for x in parts:
        c = x.shape[1]
        y = F.conv2d(x, weight[:, start:start + c], bias if out is None else None, padding=1)
        out = y if out is None else out.add_(y)
        start += c
    if start != weight.shape[1]:
        raise ValueError(f"conv inputs have {start} channels, the weight expects {weight.shape[1]}")
    return out


def _per_item(fn, x: torch.Tensor) -> torch.Tensor:
    b, s = x.shape[:2]
    y = fn(x.reshape(b * s, *x.shape[2:]))
    return y.reshape(b, s, *y.shape[1:])


class _CrossOp(nn.Module):
    """Pairwise (target, support_j) 3x3 conv without activation. Key: ``cross_conv``.

    target (B, 1, Ct, H, W), support (B, S, Cs, H, W) -> new target (B, 1, Co, H, W) (mean over
    the S pairs) and new support (B, S, Co, H, W).
    """

    def __init__(self, target_ch: int, support_ch: int, out_ch: int):
        super().__init__()
        self.target_ch = target_ch
        self.cross_conv = nn.Conv2d(target_ch + support_ch, out_ch, 3, padding=1)

    def forward(self, target: torch.Tensor, support: torch.Tensor):
        w = self.cross_conv.weight
        ct = self.target_ch
        t_term = _per_item(lambda x: F.conv2d(x, w[:, :ct], self.cross_conv.bias, padding=1), target)
        s_term = _per_item(lambda x: F.conv2d(x, w[:, ct:], None, padding=1), support)
        pairs = s_term.add_(t_term)  # (B, S, Co, H, W); t_term broadcasts over S
        return pairs.mean(dim=1, keepdim=True), pairs


class _CrossBlock(nn.Module):
    def __init__(self, target_ch: int, support_ch: int, features: int):
        super().__init__()
        self.cross = _CrossOp(target_ch, support_ch, features)
        self.target = _PerItem(_ConvOp(features, features))
        self.support = _PerItem(_ConvOp(features, features))

    def forward(self, target: torch.Tensor, support: torch.Tensor):
        target, support = self.cross(target, support)
        return self.target(target), self.support(support)


class UniverSeg(nn.Module):
    """UniverSeg v1 network.

    ``forward(target (B,1,H,W), support_images (B,S,1,H,W), support_labels (B,S,1,H,W))``
    -> logits (B,1,H,W), all float32; H, W divisible by 8 (128 x 128 as trained).
    """

    def __init__(self, encoder_blocks=ENCODER_BLOCKS):
        super().__init__()
        enc = list(encoder_blocks)
        dec = enc[-2::-1]
        self.enc_blocks = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        t_ch, s_ch = 1, 2
        skips = []
        for f in enc:
            self.enc_blocks.append(_CrossBlock(t_ch, s_ch, f))
            t_ch = s_ch = f
            skips.append(f)
        for f, skip in zip(dec, skips[-2::-1]):
            self.dec_blocks.append(_CrossBlock(t_ch + skip, s_ch + skip, f))
            t_ch = s_ch = f
        self.out_conv = _ConvOp(t_ch, 1, kernel_size=1, activation=False)
        # forward() uses forward_fast (exact rewrite, 3-7x faster); False: forward_reference
        self.fast = True

    def forward(self, target_image: torch.Tensor, support_images: torch.Tensor,
                support_labels: torch.Tensor) -> torch.Tensor:
        """Logits (B,1,H,W). Uses :meth:`forward_fast` unless ``self.fast`` is False."""
        self._check_inputs(target_image, support_images, support_labels)
        if self.fast:
            return self.forward_fast(target_image, support_images, support_labels)
        return self.forward_reference(target_image, support_images, support_labels)

    @staticmethod
    def _check_inputs(target_image, support_images, support_labels) -> None:
        if target_image.ndim != 4 or target_image.shape[1] != 1:
            raise ValueError(f"target must be (B,1,H,W), got {tuple(target_image.shape)}")
        if support_images.ndim != 5 or support_images.shape != support_labels.shape:
            raise ValueError("support_images and support_labels must both be (B,S,1,H,W), got "
                             f"{tuple(support_images.shape)} and {tuple(support_labels.shape)}")
        if support_images.shape[0] != target_image.shape[0] or \
                support_images.shape[-2:] != target_image.shape[-2:]:
            raise ValueError(f"target {tuple(target_image.shape)} and support "
                             f"{tuple(support_images.shape)} differ in batch size or image size")

    def forward_reference(self, target_image: torch.Tensor, support_images: torch.Tensor,
                          support_labels: torch.Tensor) -> torch.Tensor:
        """The network evaluated block by block as published (every pair through every conv)."""
        self._check_inputs(target_image, support_images, support_labels)
        target = target_image.unsqueeze(1)  # (B,1,1,H,W)
        support = torch.cat([support_images, support_labels], dim=2)  # (B,S,2,H,W)
        skips = []
        last = len(self.enc_blocks) - 1
        for i, block in enumerate(self.enc_blocks):
            target, support = block(target, support)
            if i == last:
                break
            skips.append((target, support))
            target = _per_item(lambda x: F.max_pool2d(x, 2), target)
            support = _per_item(lambda x: F.max_pool2d(x, 2), support)

        def up(x):
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

        for block in self.dec_blocks:
            t_skip, s_skip = skips.pop()
            target = torch.cat([_per_item(up, target), t_skip], dim=2)
            support = torch.cat([_per_item(up, support), s_skip], dim=2)
            del t_skip, s_skip  # free the skip before the block runs (memory peak at full size)
            target, support = block(target, support)
        return self.out_conv(target[:, 0])


    # ------------------------------------------------------------------------- fast path
    #
    # Three exact rewrites (the same function; results differ only by float summation order):
    # 1. Level 1 is linear up to the support conv's activation: the support stream after level 1
    #    is act(C_s * (T + A_j) + c) with T = W_t * t + b (per target) and A_j = W_s * s_j (per
    #    support item, target-independent). C_s * A_j is computed once per support set and
    #    cached, C_s * T once per target: no full-resolution conv per (target, support) pair.
    # 2. Of the level-1 support outputs, the decoder's last block needs only their mean over the
    #    support set (see 3), so per pair only an add, an activation, a max-pool and a mean remain.
    # 3. The last decoder block's support output is discarded, and its target output is
    #    mean_j(W_t * t + b + W_s * s_j) = W_t * t + b + W_s * mean_j(s_j) (no activation before
    #    the mean; bilinear upsampling commutes with the mean): one conv per target instead of S
    #    at full resolution.
    # Per (target, support) pair this leaves the levels at 64^2 and below: ~1.9 GFLOP instead
    # of ~6.8 GFLOP.
    # Two more, for memory traffic (the CPU convs run near the machine's GEMM peak, so the copies
    # around them were ~30 % of the time): the decoder's skip concatenations are never built
    # (conv(cat(a, b)) = conv_a(a) + conv_b(b), see _conv_sum), and the x2 bilinear upsampling is
    # two matrix products (_up2) instead of F.interpolate.

    def _level1_support_terms(self, support_images: torch.Tensor, support_labels: torch.Tensor):
        """(A_mean (Bs,C,H,W), P (Bs,S,C,H,W)) for supports (Bs,S,1,H,W): A_j = W_s * s_j,
        P_j = C_s * A_j (level-1 support conv without bias), A_mean = mean_j A_j."""
        blk = self.enc_blocks[0]
        cross, ct = blk.cross.cross_conv, blk.cross.target_ch
        sconv = blk.support.vmapped.conv
        bs, S = support_images.shape[:2]
        x = torch.cat([support_images, support_labels], dim=2).reshape(bs * S, 2, *support_images.shape[-2:])
        a = F.conv2d(x.to(cross.weight.dtype), cross.weight[:, ct:], None, padding=1)
        p = F.conv2d(a, sconv.weight, None, padding=1)
        a = a.reshape(bs, S, *a.shape[1:])
        return a.mean(dim=1), p.reshape(bs, S, *p.shape[1:])

    @staticmethod
    def _tensor_key(t: torch.Tensor):
        try:
            version = t._version
        except RuntimeError:  # inference tensors carry no version counter: do not cache
            return None
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
                version, t.device, t.dtype)

    def _cached_support_terms(self, support_images: torch.Tensor, support_labels: torch.Tensor):
        """Level-1 support terms of one support set (1,S,1,H,W), cached for the last set seen.

        The cache keeps references to the support tensors (so their memory cannot be reused by
        another tensor) and is keyed by storage, shape, strides, version counter (in-place
        changes), device, dtype and the level-1 weights' identity and versions.
        """
        import threading

        lock = self.__dict__.setdefault("_support_lock", threading.Lock())
        blk = self.enc_blocks[0]
        keys = [self._tensor_key(t) for t in (support_images, support_labels,
                                                blk.cross.cross_conv.weight, blk.support.vmapped.conv.weight)]
        key = None if any(k is None for k in keys) else tuple(keys)
        with lock:
            cached = self.__dict__.get("_support_cache")
            if key is not None and cached is not None and cached[0] == key:
                return cached[2]
        terms = self._level1_support_terms(support_images, support_labels)
        if key is not None:
            with lock:
                self.__dict__["_support_cache"] = (key, (support_images, support_labels), terms)
        return terms

    def clear_support_cache(self) -> None:
        """Drop the cached level-1 terms of the last support set (S x 64 x H x W floats)."""
        self.__dict__.pop("_support_cache", None)

    @staticmethod
    def _shared_support(x: torch.Tensor) -> bool:
        if x.shape[0] == 1 or x.stride(0) == 0:
            return True
        return bool(torch.equal(x[1:], x[:1].expand_as(x[1:])))

    @staticmethod
    def _decoder_block(block: "_CrossBlock", up_t, t_skip, up_s, s_skip):
        """A decoder CrossBlock on (upsampled, skip) inputs without concatenating them."""
        w, b, ct = block.cross.cross_conv.weight, block.cross.cross_conv.bias, block.cross.target_ch
        bt, S = up_s.shape[:2]
        t_term = _conv_sum((up_t.flatten(0, 1), t_skip.flatten(0, 1)), w[:, :ct], b)
        s_term = _conv_sum((up_s.flatten(0, 1), s_skip.flatten(0, 1)), w[:, ct:], None)
        pairs = s_term.view(bt, S, *s_term.shape[1:]).add_(t_term.view(bt, 1, *t_term.shape[1:]))
        del t_term, s_term
        target = pairs.mean(dim=1, keepdim=True)
        return block.target(target), block.support(pairs)

    def forward_fast(self, target_image: torch.Tensor, support_images: torch.Tensor,
                     support_labels: torch.Tensor) -> torch.Tensor:
        """Same logits as :meth:`forward_reference` (to float rounding), 3-4x fewer operations.

        When all targets of the batch share one support set (the usual case: ``expand``), its
        target-independent level-1 terms are computed once and cached for the next batch.
        """
        self._check_inputs(target_image, support_images, support_labels)
        B = target_image.shape[0]
        if self._shared_support(support_images) and self._shared_support(support_labels):
            a_mean, p = self._cached_support_terms(support_images[:1], support_labels[:1])
        else:
            a_mean, p = self._level1_support_terms(support_images, support_labels)
        blk = self.enc_blocks[0]
        cross, ct = blk.cross.cross_conv, blk.cross.target_ch
        tconv, sconv = blk.target.vmapped.conv, blk.support.vmapped.conv
        x = target_image.to(cross.weight.dtype)
        t_cross = F.conv2d(x, cross.weight[:, :ct], cross.bias, padding=1)  # (B,C,H,W)
        t1 = F.leaky_relu(F.conv2d(t_cross + a_mean, tconv.weight, tconv.bias, padding=1), 0.01)
        u = F.conv2d(t_cross, sconv.weight, sconv.bias, padding=1)  # (B,C,H,W)
        del t_cross
        S, C, H, W = p.shape[1:]
        pooled = u.new_empty(B, S, C, H // 2, W // 2)
        s1_mean = u.new_empty(B, C, H, W)
        # per pair: add, activation, mean and 2x2 max-pool, a few support items at a time so the
        # temporary stays small (cache-sized) and is reused
        chunk = max(1, min(S, _CHUNK_BYTES // max(1, C * H * W * u.element_size())))
        buf = u.new_empty(chunk, C, H, W)
        for b in range(B):
            pb, acc = p[b if p.shape[0] > 1 else 0], s1_mean[b]
            acc.zero_()
            for a in range(0, S, chunk):
                x = buf[:min(chunk, S - a)]
                torch.add(pb[a:a + x.shape[0]], u[b], out=x)
                F.leaky_relu(x, 0.01, inplace=True)
                acc.add_(x.sum(dim=0))
                pooled[b, a:a + x.shape[0]] = _maxpool2(x)
            acc.div_(S)
        del buf, u
        skips = [(t1, s1_mean)]
        target = _maxpool2(t1).unsqueeze(1)
        support = pooled
        last = len(self.enc_blocks) - 1
        for i in range(1, len(self.enc_blocks)):
            target, support = self.enc_blocks[i](target, support)
            if i == last:
                break
            skips.append((target, support))
            target, support = _maxpool2(target), _maxpool2(support)

        for block in self.dec_blocks[:-1]:
            t_skip, s_skip = skips.pop()
            target, support = self._decoder_block(block, _up2(target), t_skip, _up2(support), s_skip)
            del t_skip, s_skip
        blk = self.dec_blocks[-1]
        t_skip, s_skip_mean = skips.pop()  # (B,C,H,W) each
        w, b = blk.cross.cross_conv.weight, blk.cross.cross_conv.bias
        parts = (_up2(target[:, 0]), t_skip, _up2(support.mean(dim=1)), s_skip_mean)
        del target, support, t_skip, s_skip_mean
        z = _conv_sum(parts, w, b)
        del parts
        tconv = blk.target.vmapped.conv
        t = F.leaky_relu(F.conv2d(z, tconv.weight, tconv.bias, padding=1), 0.01)
        return self.out_conv(t)


# ----------------------------------------------------------------------------- loading


def _read_checkpoint(path: Path) -> Any:
    """Read a checkpoint file safely (weights_only); shared messages for bad files."""
    from .checkpoints import load_checkpoint_object

    return load_checkpoint_object(path, model_name="UniverSeg")


def load_universeg_state_dict(weights: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Read and validate UniverSeg v1 weights; return a state dict that loads with strict=True.

    ``weights`` is a path (``torch.load(map_location="cpu", weights_only=True)``) or a mapping;
    either may wrap the tensors as ``{"state_dict": {...}}``; a ``module.`` prefix (DataParallel)
    is removed. Raises :class:`CheckpointError` naming what is wrong: unreadable/truncated file,
    pickled code, not a dict, empty, MedSAM/SAM weights, missing or unexpected keys, wrong shapes.
    """
    source = "the given weights"
    if isinstance(weights, (str, os.PathLike)):
        source = str(weights)
        obj = _read_checkpoint(Path(weights))
    elif isinstance(weights, (bytes, bytearray)):
        try:
            obj = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"Cannot read UniverSeg weights from bytes: {exc}") from None
    else:
        obj = weights
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} is not a UniverSeg checkpoint: expected a dict of tensors, "
                              f"found {type(obj).__name__}.")
    if len(obj) == 0:
        raise CheckpointError(f"{source} is an empty dict: no UniverSeg weights in it.")
    sd = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{source}: key {k!r} is not a string; not a UniverSeg checkpoint.")
        sd[k[7:] if k.startswith("module.") else k] = v
    if any(k.startswith(("image_encoder.", "mask_decoder.", "prompt_encoder.")) for k in sd):
        raise CheckpointError(f"{source} holds MedSAM / Segment Anything weights, not UniverSeg. Use "
                              f"the UniverSeg checkpoint ({CHECKPOINT_NAME}) here and the MedSAM one "
                              "for MedSAM.")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(bad[:5])}.")
    expected = {k: tuple(v.shape) for k, v in UniverSeg().state_dict().items()}
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        hint = "This is not a UniverSeg v1 checkpoint" if len(missing) == len(expected) else \
            "The checkpoint does not match UniverSeg v1 (nf64)"
        raise CheckpointError(f"{source}: {hint}: keys {'; '.join(parts)}. Use {CHECKPOINT_NAME}.")
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {shape})" for k, shape in expected.items()
             if tuple(sd[k].shape) != shape]
    if wrong:
        raise CheckpointError(f"{source}: tensors with wrong shapes: {'; '.join(wrong[:3])}"
                              f"{' ...' if len(wrong) > 3 else ''}. This is a different UniverSeg "
                              f"variant; use {CHECKPOINT_NAME}.")
    for k, v in sd.items():
        if not v.is_floating_point():
            raise CheckpointError(f"{source}: tensor {k} has dtype {v.dtype}, expected floating point.")
        if not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{source}: tensor {k} contains NaN or infinite values; the file is "
                                  "corrupt. Download it again.")
    return {k: v.float() for k, v in sd.items()}


def universeg_v1(weights: str | os.PathLike | Mapping[str, Any] | None = None) -> UniverSeg:
    """Build UniverSeg v1 (encoder blocks [64, 64, 64, 64]) in eval mode on the CPU.

    ``weights``: None (random initialisation), a checkpoint path, or a state dict (optionally
    wrapped as ``{"state_dict": ...}``); loaded with ``strict=True`` after validation. Wrong
    weights raise :class:`medsam_gui.errors.CheckpointError`. Call as
    ``model(target (B,1,H,W), support_images (B,S,1,H,W), support_labels (B,S,1,H,W)) -> logits (B,1,H,W)``.
    """
    model = UniverSeg()
    if weights is not None:
        model.load_state_dict(load_universeg_state_dict(weights), strict=True)
    return model.eval()
