"""Hermes-R: the residual 3D U-Net with task and modality priors (Gao et al., CVPR 2024).

Written from the published description and the official repository's facts
(yhygao/universal-medical-image-segmentation, commit 033e16ae): module names follow the
official state-dict keys so the released checkpoint loads with ``strict=True``.

Layout (Hermes-R: base 32 channels, 4 max-pool stages of 2, 3x3x3 kernels, 2 pre-activation
residual blocks per stage, instance norm without affine parameters, 72 task + 1 null token,
6 modality priors of 10 tokens each):

- encoder ``inc`` (32) -> ``down1`` (64) -> ``down2`` (128) -> ``down3`` (256) -> ``down4`` (320);
- prior fusion (cross-attention both ways between the image tokens and the prior tokens) after
  ``down2``/``down3``/``down4`` and after the decoder stages ``up1``/``up2``;
- ``out``: the task tokens of the five fusion layers (concatenated, 1088 dims) become one 32-d
  per-task classifier, dotted with the 32-channel full-resolution features -> one logit map per
  requested task; ``mod_out``: the modality tokens -> 6 modality logits.

Forward: ``x`` (B, 1, D, H, W) float32, ``tgt_idx`` (B, T) int64 task ids (0..71, or -1 for the
null token, prior row 72), ``mod_idx`` (B, 1) int64 modality (0 CT, 1 PET, 2 T1, 3 T2, 4 cine
MR, -1 unknown MR = prior row 5) -> (logits (B, T, D, H, W), modality logits (B, 6)).
D, H, W must be multiples of 16. Every output channel depends on the whole token list.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError

BASE_CH = 32
NUM_TASKS = 72          # task ids 0..71 (71 are used); row 72 is the null token
NUM_MODALITIES = 6
MODALITY_TOKENS = 10
NULL_TASK = -1
UNKNOWN_MODALITY = -1
MODEL_NAME = "Hermes-R"


class PreActConv(nn.Module):
    """Instance norm (eps 1e-4, no affine) -> ReLU -> 3D convolution without bias."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.instance_norm(x, eps=1e-4).relu_())


class ResBlock(nn.Module):
    """Two pre-activation convolutions plus a shortcut (a third one when the width changes)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = PreActConv(in_ch, out_ch)
        self.conv2 = PreActConv(out_ch, out_ch)
        self.shortcut = PreActConv(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out.add_(x if self.shortcut is None else self.shortcut(x))

    def forward_parts(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``forward(torch.cat(parts, 1))`` without building the concatenation: instance norm is
        per channel, so a convolution over concatenated channels is the sum of convolutions over
        the parts. Empties ``parts`` as it goes, so each part is freed once used (at 128^3 this
        saves about a gigabyte in the last decoder stage)."""
        conv1, shortcut, start = self.conv1.conv, self.shortcut.conv, 0
        h = skip = None
        while parts:
            act = F.instance_norm(parts.pop(0), eps=1e-4).relu_()
            stop = start + act.shape[1]
            h_part = F.conv3d(act, conv1.weight[:, start:stop], padding=1)
            s_part = F.conv3d(act, shortcut.weight[:, start:stop], padding=1)
            del act
            h = h_part if h is None else h.add_(h_part)
            skip = s_part if skip is None else skip.add_(s_part)
            del h_part, s_part
            start = stop
        return self.conv2(h).add_(skip)


class InConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False)
        self.conv2 = ResBlock(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class DownStage(nn.Module):
    """Max-pool by 2, then residual blocks (``conv.0`` is the pool, so keys start at ``conv.1``)."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.MaxPool3d(2), ResBlock(in_ch, out_ch)]
        layers += [ResBlock(out_ch, out_ch) for _ in range(blocks - 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpStage(nn.Module):
    """Trilinear upsampling (align_corners=True) to the skip's size, concat [skip, up] (as
    parts, see :meth:`ResBlock.forward_parts`), residual blocks."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int = 2) -> None:
        super().__init__()
        layers = [ResBlock(in_ch + out_ch, out_ch)] + [ResBlock(out_ch, out_ch) for _ in range(blocks - 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        parts = [skip, F.interpolate(low.float(), size=skip.shape[2:], mode="trilinear",
                                     align_corners=True).to(low.dtype)]
        del low, skip
        out = self.conv[0].forward_parts(parts)
        for block in self.conv[1:]:
            out = block(out)
        return out


class Mlp(nn.Module):
    def __init__(self, in_dim: int, hid_dim: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hid_dim or in_dim)
        self.fc2 = nn.Linear(hid_dim or in_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CrossAttention(nn.Module):
    """Multi-head attention of the query tokens over the context tokens (heads of 32 dims)."""

    def __init__(self, dim: int, heads: int, head_dim: int = 32) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = queries.shape
        q = self.to_q(queries).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class DualPreNorm(nn.Module):
    """Layer norm (eps 1e-5) on both inputs of ``fn``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm1(a), self.norm2(b))


class PreNorm(nn.Module):
    """Layer norm (eps 1e-4) before ``fn``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-4)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class PriorAttentionBlock(nn.Module):
    """Priors read the image (cross-attention + MLP), then the image reads the priors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        heads = dim // 32
        self.prior_aggregate_block = DualPreNorm(dim, CrossAttention(dim, heads))
        self.prior_ffn = PreNorm(dim, Mlp(dim, 4 * dim, dim))
        self.feat_aggregate_block = DualPreNorm(dim, CrossAttention(dim, heads))
        self.feat_ffn = PreNorm(dim, Mlp(dim, 4 * dim, dim))

    def forward(self, feats: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        priors = priors + self.prior_aggregate_block(priors, feats)
        priors = priors + self.prior_ffn(priors)
        feats = feats + self.feat_aggregate_block(feats, priors)
        feats = feats + self.feat_ffn(feats)
        return feats, priors


def _rows(idx: torch.Tensor, n_rows: int, what: str) -> torch.Tensor:
    """Prior rows for ``idx``: -1 means the last row (null task / unknown MR), others as given."""
    if bool(((idx < -1) | (idx >= n_rows - 1)).any()):
        raise ValueError(f"{what} indices must lie in -1..{n_rows - 2}, got {idx.tolist()}")
    return torch.where(idx == -1, torch.full_like(idx, n_rows - 1), idx)


class PriorFusion(nn.Module):
    """Selects the requested task tokens and the modality's 10 tokens, then runs the attention
    blocks over (image tokens, prior tokens). Returns the features and the updated priors
    (B, T + 10*M, dim): task tokens first."""

    def __init__(self, dim: int, blocks: int, num_tasks: int = NUM_TASKS, num_modalities: int = NUM_MODALITIES) -> None:
        super().__init__()
        self.task_prior = nn.Parameter(torch.zeros(num_tasks + 1, dim))
        self.modality_prior = nn.Parameter(torch.zeros(num_modalities, MODALITY_TOKENS, dim))
        self.attn_layers = nn.ModuleList(PriorAttentionBlock(dim) for _ in range(blocks))

    def forward(self, x: torch.Tensor, tgt_idx: torch.Tensor, mod_idx: torch.Tensor):
        b, c, d, h, w = x.shape
        tasks = self.task_prior[_rows(tgt_idx, self.task_prior.shape[0], "task")]
        mods = self.modality_prior[_rows(mod_idx, self.modality_prior.shape[0], "modality")]
        priors = torch.cat([tasks, mods.reshape(b, -1, c)], dim=1)
        feats = x.reshape(b, c, -1).transpose(1, 2)
        for layer in self.attn_layers:
            feats, priors = layer(feats, priors)
        return feats.transpose(1, 2).reshape(b, c, d, h, w), priors


class TaskClassifier(nn.Module):
    """Per-task 32-d classifiers from the concatenated task tokens, applied as a 1x1x1 conv."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.classifier_pred = nn.Sequential(Mlp(in_dim, out_dim=out_dim), Mlp(out_dim, out_dim=out_dim))

    def weights(self, priors: list[torch.Tensor]) -> torch.Tensor:
        """(B, T, out_dim) classifier vectors."""
        return self.classifier_pred(self.norm(torch.cat(priors, dim=2)))

    def forward(self, x: torch.Tensor, priors: list[torch.Tensor]) -> torch.Tensor:
        return torch.einsum("bcdhw,btc->btdhw", x, self.weights(priors))


class ModalityClassifier(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.classifier = Mlp(in_dim, out_dim=out_dim)

    def forward(self, priors: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.norm(torch.cat(priors, dim=2)).mean(dim=1))


class HermesUNet(nn.Module):
    """Hermes-R (60,884,998 parameters, 405 tensors, no buffers); see the module docstring."""

    def __init__(self, in_ch: int = 1, base_ch: int = BASE_CH, num_tasks: int = NUM_TASKS,
                 num_modalities: int = NUM_MODALITIES) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = base_ch, 2 * base_ch, 4 * base_ch, 8 * base_ch, 10 * base_ch
        fusion = dict(num_tasks=num_tasks, num_modalities=num_modalities)
        self.inc = InConv(in_ch, c1)
        self.down1 = DownStage(c1, c2)
        self.down2 = DownStage(c2, c3)
        self.prior_init_fuse_2 = PriorFusion(c3, 2, **fusion)
        self.down3 = DownStage(c3, c4)
        self.prior_init_fuse_3 = PriorFusion(c4, 2, **fusion)
        self.down4 = DownStage(c4, c5)
        self.prior_init_fuse_4 = PriorFusion(c5, 4, **fusion)
        self.up1 = UpStage(c5, c4)
        self.prior_fuse_5 = PriorFusion(c4, 2, **fusion)
        self.up2 = UpStage(c4, c3)
        self.prior_fuse_6 = PriorFusion(c3, 2, **fusion)
        self.up3 = UpStage(c3, c2)
        self.up4 = UpStage(c2, c1)
        prior_dim = 2 * c3 + 2 * c4 + c5  # 1088 for base 32
        self.out = TaskClassifier(prior_dim, c1)
        self.mod_out = ModalityClassifier(prior_dim, num_modalities)

    def forward(self, x: torch.Tensor, tgt_idx: torch.Tensor, mod_idx: torch.Tensor):
        n_tasks = tgt_idx.shape[1]
        skips = [self.inc(x)]
        skips.append(self.down1(skips[-1]))
        x3, p2 = self.prior_init_fuse_2(self.down2(skips[-1]), tgt_idx, mod_idx)
        skips.append(x3)
        x4, p3 = self.prior_init_fuse_3(self.down3(x3), tgt_idx, mod_idx)
        del x3
        x5, p4 = self.prior_init_fuse_4(self.down4(x4), tgt_idx, mod_idx)
        out, p5 = self.prior_fuse_5(self.up1(x5, x4), tgt_idx, mod_idx)
        del x4, x5
        out, p6 = self.prior_fuse_6(self.up2(out, skips.pop()), tgt_idx, mod_idx)
        # popping hands each skip to its stage, which frees it after concatenation (memory at 128^3)
        out = self.up3(out, skips.pop())
        out = self.up4(out, skips.pop())
        priors = (p2, p3, p4, p5, p6)
        logits = self.out(out, [p[:, :n_tasks] for p in priors])
        return logits, self.mod_out([p[:, n_tasks:] for p in priors])


def build_hermes_r() -> HermesUNet:
    """Hermes-R with the released hyper-parameters, uninitialised priors (load weights next)."""
    return HermesUNet()


def _diagnose(sd) -> str | None:
    """A sentence naming the model ``sd`` seems to belong to, when it is not Hermes-R."""
    keys = list(sd)
    if any(k.startswith(("swinViT.", "backbone.swinViT.", "module.swinViT.")) for k in keys):
        return "this file holds CLIP-Driven Universal Model weights (SwinUNETR), not Hermes-R's"
    if any(k.startswith(("enc_blocks.", "dec_blocks.")) for k in keys):
        return "this file holds UniverSeg weights, not Hermes-R's"
    if any(k.startswith(("image_encoder.", "sam_mask_decoder.", "mask_decoder.")) for k in keys):
        return "this file holds MedSAM / SAM-family weights, not Hermes-R's"
    inc = sd.get("inc.conv1.weight")
    if inc is not None and tuple(inc.shape) != (BASE_CH, 1, 3, 3, 3):
        return f"the first convolution is {tuple(inc.shape)}, Hermes-R's is {(BASE_CH, 1, 3, 3, 3)}"
    return None


def hermes_state_dict(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The EMA weights of an official Hermes-R checkpoint, strictly validated.

    The released file is ``{'epoch', 'model_state_dict', 'ema_model_state_dict',
    'optimizer_state_dict'}``; evaluation uses ``ema_model_state_dict`` (a plain state dict is
    accepted too). Raises CheckpointError for a missing/truncated/foreign file."""
    from ..checkpoints import check_state_dict, extract_state_dict, load_checkpoint_object, meta_state_dict_shapes

    obj = load_checkpoint_object(checkpoint, model_name=MODEL_NAME)
    source = str(checkpoint)
    if isinstance(obj, dict) and "ema_model_state_dict" in obj:
        obj = obj["ema_model_state_dict"]
    elif isinstance(obj, dict) and "net" in obj:
        raise CheckpointError(f"{source} holds CLIP-Driven Universal Model weights ('net'), not Hermes-R's. "
                              f"Load it as the Universal model, or choose the Hermes-R checkpoint.")
    sd = extract_state_dict(obj, source=source, model_name=MODEL_NAME)
    check_state_dict(sd, meta_state_dict_shapes(build_hermes_r), model_name=MODEL_NAME, source=source,
                     diagnose=_diagnose)
    return sd


def hermes_r(checkpoint: str | os.PathLike) -> HermesUNet:
    """Hermes-R in eval mode on the CPU with the official checkpoint's EMA weights (strict)."""
    model = build_hermes_r()
    model.load_state_dict(hermes_state_dict(checkpoint), strict=True)
    return model.eval()
