"""The MedSAM2 network (SAM2.1 Hiera-tiny, 512 x 512) under the official key names.

:class:`MedSAM2Model` owns every tensor of the official checkpoint (471 keys, no prefix):
``image_encoder.*``, ``sam_prompt_encoder.*``, ``sam_mask_decoder.*``,
``memory_attention.*``, ``memory_encoder.*``, ``mask_downsample.*``, ``obj_ptr_proj.*``,
``obj_ptr_tpos_proj.*``, ``maskmem_tpos_enc`` (7,1,1,64), ``no_mem_embed`` / ``no_mem_pos_enc``
(1,1,256), ``no_obj_ptr`` (1,256), ``no_obj_embed_spatial`` (1,64).

It offers the per-frame steps; the video state machine (which memories and pointers a frame
sees) is :mod:`.propagator`. All tensors are float32, batch B (=1 in the app):

* :meth:`encode_image` (B,3,512,512) -> :class:`Features` (high-res 32@128 and 64@64 maps
  after ``conv_s0``/``conv_s1``, vision features 256@32, its sine position map).
* :meth:`sam_heads` prompt encoder + mask decoder + object pointer on a 256@32 map.
* :meth:`mask_as_output` a binary mask prompt used directly as the output (RECIST flow).
* :meth:`condition` memory attention of the current features over memories and pointers.
* :meth:`encode_memory` memory encoder on a (B,1,512,512) logit mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from .layers import MLP
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .neck import ImageEncoder
from .position import sine_1d
from .sam_heads import MaskDecoder, PromptEncoder

NO_OBJ_SCORE = -1024.0
IMAGE_SIZE = 512
NUM_MASKMEM = 7
MAX_OBJ_PTRS = 16
SIGMOID_SCALE, SIGMOID_BIAS = 20.0, -10.0


@dataclass
class Features:
    """Encoder output of one slice: ``high_res`` [(B,32,128,128), (B,64,64,64)],
    ``vision`` (B,256,32,32), ``vision_pos`` (B,256,32,32)."""

    high_res: list
    vision: torch.Tensor
    vision_pos: torch.Tensor


@dataclass
class HeadOutput:
    """One decoder call. ``all_masks`` (B,4,128,128) raw logits of the four tokens,
    ``all_ious`` (B,4); ``multimasks`` (B,M,128,128) after object gating (-1024 where the
    object score <= 0), ``ious`` (B,M); ``low_res`` (B,1,128,128) the chosen mask,
    ``high_res`` (B,1,512,512) its bilinear upsampling; ``obj_ptr`` (B,256);
    ``object_score`` (B,1); ``stability`` (B,1) of token 0 (single-mask calls)."""

    all_masks: torch.Tensor | None
    all_ious: torch.Tensor | None
    multimasks: torch.Tensor
    ious: torch.Tensor
    low_res: torch.Tensor
    high_res: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor
    stability: torch.Tensor | None = None


class MedSAM2Model(nn.Module):
    image_size = IMAGE_SIZE
    hidden_dim = 256
    mem_dim = 64
    num_maskmem = NUM_MASKMEM

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder()
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention()
        self.memory_encoder = MemoryEncoder()
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(NUM_MASKMEM, 1, 1, self.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, self.mem_dim))
        side = IMAGE_SIZE // 16
        self.sam_prompt_encoder = PromptEncoder(self.hidden_dim, (side, side), (IMAGE_SIZE, IMAGE_SIZE))
        self.sam_mask_decoder = MaskDecoder(self.hidden_dim)
        self.obj_ptr_proj = MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
        self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)

    # ------------------------------------------------------------------ image
    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> Features:
        out = self.image_encoder(image)
        fpn = out["backbone_fpn"]
        s0 = self.sam_mask_decoder.conv_s0(fpn[0])
        s1 = self.sam_mask_decoder.conv_s1(fpn[1])
        return Features([s0, s1], fpn[2], out["vision_pos_enc"][2])

    # ------------------------------------------------------------------ SAM heads
    def _gate_ptr(self, ptr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        lam = present.float()
        return lam * ptr + (1 - lam) * self.no_obj_ptr

    @torch.no_grad()
    def sam_heads(self, pix_feat: torch.Tensor, high_res: list, coords=None, labels=None,
                  mask_input=None, multimask: bool = False) -> HeadOutput:
        """``coords`` (B,N,2) model pixels and ``labels`` (B,N) int32, or None (one pad
        point); ``mask_input`` (B,1,128,128) or None."""
        b = pix_feat.shape[0]
        if coords is None:
            coords = torch.zeros(b, 1, 2, device=pix_feat.device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=pix_feat.device)
        if mask_input is not None and tuple(mask_input.shape[-2:]) != self.sam_prompt_encoder.mask_input_size:
            mask_input = F.interpolate(mask_input.float(), size=self.sam_prompt_encoder.mask_input_size,
                                       mode="bilinear", align_corners=False, antialias=True)
        sparse, dense = self.sam_prompt_encoder(coords, labels, mask_input)
        dec = self.sam_mask_decoder
        all_masks, all_ious, toks, obj = dec.predict_all(
            pix_feat, self.sam_prompt_encoder.dense_pe(), sparse, dense, high_res)
        masks, ious, sam_toks = dec.select(all_masks, all_ious, toks, multimask)
        stability = None if multimask else dec.stability(all_masks[:, 0:1])
        present = obj > 0
        masks = torch.where(present[:, :, None, None], masks, torch.full_like(masks, NO_OBJ_SCORE)).float()
        high = F.interpolate(masks, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        tok = sam_toks[:, 0]
        if multimask:
            best = torch.argmax(ious, dim=-1)
            bi = torch.arange(b, device=masks.device)
            low_sel, high_sel = masks[bi, best].unsqueeze(1), high[bi, best].unsqueeze(1)
            tok = sam_toks[bi, best]
        else:
            low_sel, high_sel = masks, high
        ptr = self._gate_ptr(self.obj_ptr_proj(tok), present)
        return HeadOutput(all_masks, all_ious, masks, ious, low_sel, high_sel, ptr, obj, stability)

    @torch.no_grad()
    def mask_as_output(self, feats: Features, mask512: torch.Tensor) -> HeadOutput:
        """A binary mask (B,1,512,512) float as the frame's output: logits 20*m-10, low-res
        by antialiased bilinear downsampling, object score +10 if any pixel is set, else -10;
        the pointer comes from the decoder run on the raw features with the mask (reduced by
        ``mask_downsample``) as mask prompt."""
        m = mask512.float()
        high = m * SIGMOID_SCALE + SIGMOID_BIAS
        low = F.interpolate(high, size=(high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear",
                            align_corners=False, antialias=True)
        heads = self.sam_heads(feats.vision, feats.high_res, mask_input=self.mask_downsample(m))
        present = torch.any(m.flatten(1) > 0, dim=1)[:, None]
        obj = SIGMOID_SCALE * present.float() + SIGMOID_BIAS
        ptr = present.float() * heads.obj_ptr
        ptr = ptr + (1 - present.float()) * self.no_obj_ptr
        ious = m.new_ones(m.shape[0], 1)
        return HeadOutput(None, None, low, ious, low, high, ptr, obj)

    # ------------------------------------------------------------------ memory
    @torch.no_grad()
    def condition(self, feats: Features, memories: list, pointers: list, num_frames: int,
                  trace: dict | None = None) -> torch.Tensor:
        """Memory-conditioned 256@32 features for a tracked frame.

        ``memories``: [(t_pos, features (B,64,32,32) any float dtype, pos (B,64,32,32))],
        t_pos 0 for conditioning frames, 1..6 for the previous frames (6 = adjacent);
        ``pointers``: [(signed frame distance, obj_ptr (B,256))]. Empty lists on an initial
        conditioning frame: then ``no_mem_embed`` is added directly.
        """
        b, c, h, w = feats.vision.shape
        curr = feats.vision.flatten(2).permute(2, 0, 1)
        if not memories and not pointers:
            return (curr + self.no_mem_embed).permute(1, 2, 0).view(b, c, h, w)
        mem, mem_pos = [], []
        for t_pos, f, pos in memories:
            mem.append(f.float().flatten(2).permute(2, 0, 1))
            mem_pos.append(pos.flatten(2).permute(2, 0, 1) + self.maskmem_tpos_enc[NUM_MASKMEM - t_pos - 1])
        n_ptr_tokens = 0
        if pointers:
            t_max = max(min(num_frames, MAX_OBJ_PTRS) - 1, 1)
            dist = torch.tensor([float(p) for p, _ in pointers], device=curr.device)
            ptrs = torch.stack([p for _, p in pointers], dim=0)  # (N, B, 256)
            pos = self.obj_ptr_tpos_proj(sine_1d(dist / t_max, self.hidden_dim))
            pos = pos.unsqueeze(1).expand(-1, b, self.mem_dim)
            split = c // self.mem_dim
            ptrs = ptrs.reshape(-1, b, split, self.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            pos = pos.repeat_interleave(split, dim=0)
            mem.append(ptrs)
            mem_pos.append(pos)
            n_ptr_tokens = ptrs.shape[0]
        memory = torch.cat(mem, dim=0)
        memory_pos = torch.cat(mem_pos, dim=0)
        curr_pos = feats.vision_pos.flatten(2).permute(2, 0, 1)
        if trace is not None:
            trace.update(memory_tokens=int(memory.shape[0]), ptr_tokens=n_ptr_tokens)
        out = self.memory_attention(curr, memory, curr_pos, memory_pos, n_ptr_tokens)
        return out.permute(1, 2, 0).view(b, c, h, w)

    @torch.no_grad()
    def encode_memory(self, feats: Features, high_res_logits: torch.Tensor, object_score: torch.Tensor,
                      binarize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory (B,64,32,32) float32 and its position map from a (B,1,512,512) logit mask:
        binarised (> 0) for prompted frames, sigmoid otherwise; then x20-10;
        ``no_obj_embed_spatial`` is added where the object score is <= 0."""
        prob = (high_res_logits > 0).float() if binarize else torch.sigmoid(high_res_logits)
        prob = prob * SIGMOID_SCALE + SIGMOID_BIAS
        f, pos = self.memory_encoder(feats.vision, prob)
        absent = 1.0 - (object_score > 0).float()
        f = f + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return f, pos
