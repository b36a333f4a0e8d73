"""The CLIP-Driven Universal Model network and its loader (official key names, torch only).

``Universal_model(img_size=(96,96,96), in_channels=1, out_channels=32, backbone='swinunetr',
encoding='word_embedding')`` of ljwztc/CLIP-Driven-Universal-Model: a SwinUNETR backbone, a
global feature of its deepest decoder input, and one CLIP text embedding per organ. A
controller turns [image feature, text feature] into 153 parameters per organ: three dynamic
1x1x1 convolutions (8->8 ReLU, 8->8 ReLU, 8->1) applied to an 8-channel head input. The
output is one logit map per organ (sigmoid > 0.5 = organ).

Released file layout: ``ckpt['net']`` with keys ``module.`` + the model key minus a leading
``backbone.``; text embedding ``txt_encoding.pth``: a (32, 512) float16 tensor, used as
float32 ``organ_embedding``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError
from ..checkpoints import load_checkpoint_object
from .swin_unetr import SwinUNETR

NUM_CLASSES = 32
TEXT_DIM = 512
HEAD_CHANNELS = 8
PARAMS_PER_CLASS = 153  # 64 + 64 + 8 weights, 8 + 8 + 1 biases
_VOXELS_PER_CHUNK = 1 << 17
_MODEL = "CLIP-Driven Universal Model"


class UniversalModel(nn.Module):
    """forward: x (B, 1, D, H, W) float32, D/H/W multiples of 32 -> logits (B, 32, D, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = SwinUNETR(in_channels=1, feature_size=48)
        self.precls_conv = nn.Sequential(nn.GroupNorm(16, 48), nn.ReLU(), nn.Conv3d(48, HEAD_CHANNELS, 1))
        self.GAP = nn.Sequential(nn.GroupNorm(16, 768), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Conv3d(768, 256, 1))
        self.controller = nn.Conv3d(512, PARAMS_PER_CLASS, 1)
        self.register_buffer("organ_embedding", torch.zeros(NUM_CLASSES, TEXT_DIM))
        self.text_to_vision = nn.Linear(TEXT_DIM, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_logits(x, range(NUM_CLASSES))

    def head_params(self, dec4: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """(K, 153) dynamic-head parameters for one sample's deepest feature dec4 (1, 768, ...)."""
        idx = torch.as_tensor(list(classes), dtype=torch.long, device=dec4.device)
        task = F.relu(self.text_to_vision(self.organ_embedding[idx]))  # (K, 256)
        feat = self.GAP(dec4).flatten(1).expand(len(idx), -1)  # (K, 256)
        cond = torch.cat([feat, task], 1)[..., None, None, None]
        return self.controller(cond).flatten(1)

    def class_logits(self, x: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """Logits of the given 0-based organ indices only: (B, K, D, H, W) float32."""
        classes = list(classes)
        dec4, out = self.backbone(x)
        result = []
        for i in range(x.shape[0]):
            params = self.head_params(dec4[i : i + 1], classes)
            feats = self.precls_conv(out[i : i + 1])[0]
            result.append(apply_heads(params, feats))
        return torch.stack(result)


def apply_heads(params: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Dynamic heads: params (K, 153), feats (8, D, H, W) -> logits (K, D, H, W).

    Layer l of organ k has weight params[k, split] viewed as (out, in) and bias after all
    weights, as the official grouped convolution reads them.
    """
    k = params.shape[0]
    c = HEAD_CHANNELS
    w1, w2, w3, b1, b2, b3 = torch.split(params, [c * c, c * c, c, c, c, 1], dim=1)
    w1, w2, w3 = w1.reshape(k, c, c), w2.reshape(k, c, c), w3.reshape(k, 1, c)
    flat = feats.reshape(c, -1)
    out = torch.empty(k, flat.shape[1], dtype=feats.dtype, device=feats.device)
    for s in range(0, flat.shape[1], _VOXELS_PER_CHUNK):
        f = flat[:, s : s + _VOXELS_PER_CHUNK]
        h = F.relu(torch.einsum("koi,iv->kov", w1, f) + b1[:, :, None])
        h = F.relu(torch.bmm(w2, h) + b2[:, :, None])
        out[:, s : s + _VOXELS_PER_CHUNK] = (torch.bmm(w3, h) + b3[:, :, None])[:, 0]
    return out.reshape(k, *feats.shape[1:])


def model_key(file_key: str) -> str:
    """Released-file key -> model key (``module.`` dropped, ``backbone.`` restored)."""
    key = file_key[len("module."):] if file_key.startswith("module.") else file_key
    if not key.startswith("backbone.") and any(p in key for p in ("swinViT", "encoder", "decoder")):
        key = "backbone." + key
    return key


def _other_model(obj: Any) -> str | None:
    """Which model a wrong file belongs to, when its layout says so."""
    if isinstance(obj, torch.Tensor):
        if tuple(obj.shape) == (NUM_CLASSES, TEXT_DIM):
            return "it is the Universal Model's text embedding (txt_encoding.pth); pass it as the text embedding"
        return f"it holds a single {tuple(obj.shape)} tensor, not a network"
    if not isinstance(obj, dict):
        return None
    if "ema_model_state_dict" in obj or "model_state_dict" in obj:
        return "it looks like a Hermes checkpoint (model_state_dict / ema_model_state_dict)"
    inner = obj.get("net", obj.get("model", obj.get("state_dict", obj)))
    keys = [str(k) for k in inner] if isinstance(inner, dict) else []
    joined = " ".join(keys[:2000])
    if "image_encoder.trunk" in joined:
        return "it looks like a MedSAM2 (SAM 2) checkpoint"
    if "image_encoder." in joined and "mask_decoder." in joined:
        return "it looks like a MedSAM / LiteMedSAM (Segment Anything) checkpoint"
    if "enc_blocks." in joined:
        return "it looks like a UniverSeg checkpoint"
    if "organ_embedding" in joined and "swinViT" not in joined:
        return "it is a Universal Model checkpoint with another backbone (this app runs the Swin UNETR release)"
    return None


def load_state_dict(path: str | os.PathLike, model: nn.Module) -> dict[str, torch.Tensor]:
    """Model-keyed float32 state dict from a released checkpoint file for ``model``.

    Raises CheckpointError for a missing, truncated or wrong file (naming the model it belongs
    to when recognisable)."""
    obj = load_checkpoint_object(path, model_name=_MODEL)
    net = obj.get("net") if isinstance(obj, dict) else None
    if not isinstance(net, dict):
        why = _other_model(obj) or "it has no 'net' entry"
        raise CheckpointError(
            f"{path} is not a {_MODEL} checkpoint: {why}. Choose clip_driven_universal_swin_unetr.pth.")
    state = {model_key(str(k)): v for k, v in net.items() if isinstance(v, torch.Tensor)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        why = _other_model(obj)
        detail = "; ".join(
            f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise CheckpointError(
            f"{path} does not match the {_MODEL} (Swin UNETR, 32 organs)"
            f"{': ' + why if why else ''} ({detail}). Choose clip_driven_universal_swin_unetr.pth.")
    return {k: v if v.dtype == torch.int64 else v.float() for k, v in state.items()}


def load_text_embedding(path: str | os.PathLike) -> torch.Tensor:
    """(32, 512) float32 organ text embedding from txt_encoding.pth; CheckpointError if wrong."""
    obj = load_checkpoint_object(path, model_name=f"{_MODEL} text embedding")
    if not isinstance(obj, torch.Tensor) or tuple(obj.shape) != (NUM_CLASSES, TEXT_DIM):
        what = (f"a {tuple(obj.shape)} tensor" if isinstance(obj, torch.Tensor)
                else f"a {type(obj).__name__}")
        raise CheckpointError(
            f"{path} is not the {_MODEL} text embedding: it holds {what}, not the (32, 512) CLIP "
            f"embedding of the 32 organs. Choose txt_encoding.pth from the official repository.")
    emb = obj.float()
    if not torch.isfinite(emb).all():
        raise CheckpointError(f"{path}: the text embedding contains NaN/inf values; download it again.")
    return emb


def universal_model(checkpoint: str | os.PathLike, text_embedding: str | os.PathLike | None = None,
                    *, device: str | torch.device | None = None) -> UniversalModel:
    """The released Universal Model in eval mode, weights loaded strict=True.

    ``text_embedding`` (txt_encoding.pth) replaces the checkpoint's organ_embedding, as the
    official training does; None keeps the one stored in the checkpoint. Both files are
    checked before the network is built (on the meta device: no random initialisation).
    """
    embedding = load_text_embedding(text_embedding) if text_embedding is not None else None
    with torch.device("meta"):
        model = UniversalModel()
    state = load_state_dict(checkpoint, model)
    if embedding is not None:
        state["organ_embedding"] = embedding
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().to(device or "cpu")
