"""FPN neck of SAM2.1 (``image_encoder.neck.*``) and the image encoder wrapper.

Lateral 1x1 convs (``convs.{i}.conv``; convs[0] takes the coarsest 768-channel map) to 256
channels; top-down nearest 2x upsampling added only at levels 2 and 3 (the 32x32 and 16x16
maps); each level gets a sine position map. ``scalp=1`` drops the coarsest (16x16) level.

``ImageEncoder(x)`` with x (B, 3, 512, 512) returns ``backbone_fpn`` [256@128, 256@64,
256@32] and ``vision_pos_enc`` (same shapes); ``vision_features`` is the 32x32 level.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .hiera import Hiera
from .position import SinePositionEncoding


class FpnNeck(nn.Module):
    def __init__(self, d_model: int = 256, channels=(768, 384, 192, 96), top_down=(2, 3)) -> None:
        super().__init__()
        self.position_encoding = SinePositionEncoding(d_model)
        self.convs = nn.ModuleList()
        for c in channels:
            seq = nn.Sequential()
            seq.add_module("conv", nn.Conv2d(c, d_model, kernel_size=1))
            self.convs.append(seq)
        self.top_down = set(top_down)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n = len(self.convs) - 1
        out: list = [None] * (n + 1)
        pos: list = [None] * (n + 1)
        prev = None
        for i in range(n, -1, -1):
            lat = self.convs[n - i](xs[i])
            if i in self.top_down and prev is not None:
                prev = lat + F.interpolate(prev.float(), scale_factor=2.0, mode="nearest")
            else:
                prev = lat
            out[i] = prev
            pos[i] = self.position_encoding(prev).to(prev.dtype)
        return out, pos


class ImageEncoder(nn.Module):
    def __init__(self, scalp: int = 1) -> None:
        super().__init__()
        self.trunk = Hiera()
        self.neck = FpnNeck()
        self.scalp = scalp

    def forward(self, x: torch.Tensor) -> dict:
        feats, pos = self.neck(self.trunk(x))
        if self.scalp:
            feats, pos = feats[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": feats[-1], "vision_pos_enc": pos, "backbone_fpn": feats}
