"""SAM2.1 prompt encoder and mask decoder (``sam_prompt_encoder.*``, ``sam_mask_decoder.*``).

They differ from segment-anything's: the decoder has an object-score token (first output
token) with a 3-layer MLP head, high-resolution skip features (``conv_s0``/``conv_s1``
applied to the 128x128 and 64x64 FPN levels and added inside the upscaling), sigmoid IoU
head and, for single-mask requests, the dynamic stability fallback (delta 0.05,
threshold 0.98). Prompts for MedSAM2 come in as points (a box = two points labelled 2, 3).

Shapes at image size 512: image embedding (B, 256, 32, 32); mask logits (B, M, 128, 128).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import MLP, LayerNorm2d
from .position import RandomFourierEncoding
from .transformer import TwoWayTransformer


class PromptEncoder(nn.Module):
    def __init__(self, dim: int = 256, embed_hw=(32, 32), image_hw=(512, 512), mask_chans: int = 16) -> None:
        super().__init__()
        self.embed_hw = tuple(embed_hw)
        self.image_hw = tuple(image_hw)
        self.pe_layer = RandomFourierEncoding(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_input_size = (4 * embed_hw[0], 4 * embed_hw[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_chans // 4, 2, stride=2), LayerNorm2d(mask_chans // 4), nn.GELU(),
            nn.Conv2d(mask_chans // 4, mask_chans, 2, stride=2), LayerNorm2d(mask_chans), nn.GELU(),
            nn.Conv2d(mask_chans, dim, 1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self) -> torch.Tensor:
        return self.pe_layer.grid(*self.embed_hw).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """coords (B, N, 2) in model pixels, labels (B, N) int (-1 pad, 0/1 click, 2/3 box
        corners); a pad point is appended -> (B, N+1, dim)."""
        b = coords.shape[0]
        coords = torch.cat([coords.float() + 0.5, torch.zeros(b, 1, 2, device=coords.device)], dim=1)
        labels = torch.cat([labels, -torch.ones(b, 1, dtype=labels.dtype, device=labels.device)], dim=1)
        emb = self.pe_layer.points(coords, self.image_hw)
        pad = (labels == -1)[..., None]
        emb = torch.where(pad, self.not_a_point_embed.weight.expand_as(emb), emb)
        for lab in range(4):
            emb = emb + (labels == lab)[..., None].float() * self.point_embeddings[lab].weight
        return emb

    def forward(self, coords, labels, masks=None):
        sparse = self.embed_points(coords, labels)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                coords.shape[0], -1, self.embed_hw[0], self.embed_hw[1])
        return sparse, dense


class MaskDecoder(nn.Module):
    def __init__(self, dim: int = 256, num_multimask: int = 3, stability_delta: float = 0.05,
                 stability_thresh: float = 0.98) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(2, dim, 8, 2048)
        self.num_mask_tokens = num_multimask + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2), nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(dim, dim // 8, 1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, 1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def predict_all(self, image, image_pe, sparse, dense, high_res):
        """All four mask tokens: (masks (B,4,128,128), ious (B,4), mask tokens (B,4,dim),
        object score logits (B,1))."""
        b = sparse.shape[0]
        out_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], 0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = image + dense
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_tok = hs[:, 1]
        mask_toks = hs[:, 2: 2 + self.num_mask_tokens]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res
        up = act1(ln1(dc1(src) + feat_s1))
        up = act2(dc2(up) + feat_s0)
        hyper = torch.stack([m(mask_toks[:, i]) for i, m in enumerate(self.output_hypernetworks_mlps)], 1)
        bb, cc, hh, ww = up.shape
        masks = (hyper @ up.view(bb, cc, hh * ww)).view(bb, -1, hh, ww)
        ious = self.iou_prediction_head(iou_tok)
        obj = self.pred_obj_score_head(hs[:, 0])
        return masks, ious, mask_toks, obj

    def stability(self, logits: torch.Tensor) -> torch.Tensor:
        flat = logits.flatten(-2)
        inter = (flat > self.stability_delta).sum(-1).float()
        union = (flat > -self.stability_delta).sum(-1).float()
        return torch.where(union > 0, inter / union, torch.ones_like(inter))

    def select(self, masks, ious, mask_toks, multimask: bool):
        """SAM2 output selection. multimask: tokens 1-3 (and their tokens for the pointer).
        Single mask: token 0 unless its stability < threshold, then the best of 1-3 by IoU;
        the pointer token is token 0 either way."""
        if multimask:
            return masks[:, 1:], ious[:, 1:], mask_toks[:, 1:]
        best = torch.argmax(ious[:, 1:], dim=-1)
        bi = torch.arange(masks.shape[0], device=masks.device)
        best_masks = masks[:, 1:][bi, best].unsqueeze(1)
        best_ious = ious[:, 1:][bi, best].unsqueeze(1)
        stable = self.stability(masks[:, 0:1]) >= self.stability_thresh
        out_m = torch.where(stable[..., None, None], masks[:, 0:1], best_masks)
        out_i = torch.where(stable, ious[:, 0:1], best_ious)
        return out_m, out_i, mask_toks[:, 0:1]
