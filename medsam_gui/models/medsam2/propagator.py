"""Volume propagation state machine of MedSAM2 (the official ``SAM2VideoPredictorNPZ`` flow
for one object), slices playing the role of video frames.

Usage (frames are the slices handed in, index 0..num_frames-1)::

    p = VolumePropagator(model, num_frames, load_image, video_hw=(H, W))
    p.add_box(k, box_xyxy)          # or p.add_mask(k, mask_hw)
    for out in p.propagate():       # k, k+1, ..., num_frames-1
        ...
    p.reset(); p.add_box(k, box_xyxy)
    for out in p.propagate(reverse=True):   # k, k-1, ..., 0
        ...

Rules reproduced (SAM2.1 with MedSAM2's builder options):

* A prompted frame is an *initial conditioning frame*: its features get ``no_mem_embed``
  added (no memory attention); a box is two points labelled 2/3 plus a pad point; the
  decoder is asked for one mask (stability fallback to the best multimask token).
* When propagation starts, the conditioning frame's memory is encoded from its low-res
  logits upsampled to 512 and *binarised*; tracked frames use sigmoid(logits); both x20-10.
  Memory features are stored rounded to bfloat16 (and used as float32).
* A tracked frame attends to all conditioning frames (t_pos 0) and to the up to 6 previous
  tracked frames in the direction of travel (t_pos 6 = adjacent), plus object pointers:
  conditioning frames on the travelled side with signed distance, and tracked frames up to
  min(num_frames, 16)-1 away; distances are divided by min(num_frames, 16)-1.
* Tracked frames decode 3 masks (no prompt) and keep the one with the best predicted IoU;
  where the object score is <= 0 the logits are -1024 and the pointer is ``no_obj_ptr``.
* Hole filling (CUDA-only in the official code) is not applied.

Encoder features are cached in a small :class:`FeatureCache` (prompted frames pinned).
``trace`` (a list, optional) receives one dict per tracked frame / memory encoding.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .model import IMAGE_SIZE, MAX_OBJ_PTRS, NUM_MASKMEM, Features, HeadOutput, MedSAM2Model
from .preprocessing import box_to_model


@dataclass
class FrameOutput:
    """One frame's stored output: ``low_res`` (1,1,128,128) float32 logits,
    ``object_score`` (1,1), ``obj_ptr`` (1,256), ``maskmem`` (1,64,32,32) bfloat16 (None
    before propagation starts), ``maskmem_pos`` (1,64,32,32), ``is_cond``."""

    frame: int
    low_res: torch.Tensor
    object_score: torch.Tensor
    obj_ptr: torch.Tensor
    maskmem: torch.Tensor | None = None
    maskmem_pos: torch.Tensor | None = None
    is_cond: bool = False


class FeatureCache:
    """Encoder features by frame, least recently used dropped beyond ``capacity``
    (None = unlimited); pinned frames are never dropped."""

    def __init__(self, capacity: int | None = 3) -> None:
        self.capacity = capacity
        self._items: OrderedDict[int, Features] = OrderedDict()
        self.pinned: set[int] = set()

    def get(self, i: int) -> Features | None:
        f = self._items.get(i)
        if f is not None:
            self._items.move_to_end(i)
        return f

    def put(self, i: int, f: Features) -> None:
        self._items[i] = f
        self._items.move_to_end(i)
        if self.capacity is not None:
            for k in list(self._items):
                if len(self._items) <= self.capacity:
                    break
                if k not in self.pinned and k != i:
                    del self._items[k]


class VolumePropagator:
    def __init__(self, model: MedSAM2Model, num_frames: int, load_image: Callable[[int], torch.Tensor],
                 video_hw: tuple[int, int], *, cache: FeatureCache | None = None,
                 device=None, trace: list | None = None, on_encode: Callable[[int, float], None] | None = None) -> None:
        self.model = model
        self.num_frames = int(num_frames)
        self.load_image = load_image
        self.video_hw = (int(video_hw[0]), int(video_hw[1]))
        self.cache = cache if cache is not None else FeatureCache()
        self.device = device if device is not None else next(model.parameters()).device
        self.trace = trace
        self.on_encode = on_encode
        self.last_head: HeadOutput | None = None
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget prompts and results (the image features stay cached)."""
        self.temp_cond: dict[int, FrameOutput] = {}
        self.cond: dict[int, FrameOutput] = {}
        self.non_cond: dict[int, FrameOutput] = {}
        self.tracked: dict[int, bool] = {}
        self.started = False

    def features(self, i: int) -> Features:
        f = self.cache.get(i)
        if f is None:
            t0 = time.perf_counter()
            img = self.load_image(i).to(self.device).float().unsqueeze(0)
            f = self.model.encode_image(img)
            self.cache.put(i, f)
            if self.on_encode is not None:
                self.on_encode(i, time.perf_counter() - t0)
        return f

    def _check_frame(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} outside 0..{self.num_frames - 1}")
        return i

    # ---------------------------------------------------------------- prompts
    @torch.no_grad()
    def add_box(self, frame: int, box_xyxy) -> torch.Tensor:
        """Box (x0,y0,x1,y1) in slice pixels on ``frame``; returns its logits (H,W) float32
        at slice resolution."""
        frame = self._check_frame(frame)
        self.cache.pinned.add(frame)
        feats = self.features(frame)
        coords, labels = box_to_model(box_xyxy, self.video_hw)
        pix = self.model.condition(feats, [], [], self.num_frames)
        head = self.model.sam_heads(pix, feats.high_res, coords.to(self.device), labels.to(self.device),
                                    multimask=False)
        self._prompted(frame, head)
        return self.video_res(head.low_res)

    def _prompted(self, frame: int, head: HeadOutput, mask512=None) -> None:
        self.last_head = head
        self.temp_cond[frame] = FrameOutput(frame, head.low_res, head.object_score, head.obj_ptr, is_cond=True)
        if self.trace is not None:
            self.trace.append({"kind": "prompt", "frame": frame, "head": head, "mask512": mask512})

    @torch.no_grad()
    def add_mask(self, frame: int, mask) -> torch.Tensor:
        """Binary mask (H,W) on ``frame`` used as that frame's output (RECIST flow);
        returns its logits (H,W) float32 at slice resolution."""
        frame = self._check_frame(frame)
        self.cache.pinned.add(frame)
        feats = self.features(frame)
        m = torch.as_tensor(mask).bool()[None, None].float().to(self.device)
        if tuple(m.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            m = F.interpolate(m, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
            m = (m >= 0.5).float()
        head = self.model.mask_as_output(feats, m)
        self._prompted(frame, head, m)
        return self.video_res(head.low_res)

    def video_res(self, low_res: torch.Tensor) -> torch.Tensor:
        """(1,1,128,128) -> (H,W) float32 logits (bilinear, align_corners=False)."""
        if tuple(low_res.shape[-2:]) == self.video_hw:
            return low_res[0, 0]
        return F.interpolate(low_res, size=self.video_hw, mode="bilinear", align_corners=False)[0, 0]

    # ---------------------------------------------------------------- memory
    def _store_memory(self, out: FrameOutput, feats: Features, high_res: torch.Tensor, binarize: bool) -> None:
        f, pos = self.model.encode_memory(feats, high_res, out.object_score, binarize)
        if self.trace is not None:
            self.trace.append({"kind": "memenc", "frame": out.frame, "binarized": binarize, "f32": f.clone()})
        out.maskmem = f.to(torch.bfloat16)
        out.maskmem_pos = pos

    def _preflight(self) -> None:
        self.started = True
        for frame, out in sorted(self.temp_cond.items()):
            high = F.interpolate(out.low_res, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
            self._store_memory(out, self.features(frame), high, binarize=True)
            self.cond[frame] = out
            self.non_cond.pop(frame, None)
        self.temp_cond.clear()

    def memory_plan(self, frame: int, reverse: bool):
        """(memories [(t_pos, FrameOutput)], pointers [(signed distance, FrameOutput)])."""
        memories = [(0, out) for _, out in sorted(self.cond.items())]
        for t_pos in range(1, NUM_MASKMEM):
            t_rel = NUM_MASKMEM - t_pos
            prev = frame + t_rel if reverse else frame - t_rel
            out = self.non_cond.get(prev)
            if out is not None:
                memories.append((t_pos, out))
        sign = -1 if reverse else 1
        pointers = [((frame - t) * sign, out) for t, out in sorted(self.cond.items())
                    if (t >= frame if reverse else t <= frame)]
        for d in range(1, min(self.num_frames, MAX_OBJ_PTRS)):
            t = frame + d if reverse else frame - d
            if t < 0 or t >= self.num_frames:
                break
            out = self.non_cond.get(t)
            if out is not None:
                pointers.append((d, out))
        return memories, pointers

    @torch.no_grad()
    def _track(self, frame: int, reverse: bool) -> FrameOutput:
        feats = self.features(frame)
        memories, pointers = self.memory_plan(frame, reverse)
        info: dict = {}
        pix = self.model.condition(
            feats, [(t, o.maskmem, o.maskmem_pos) for t, o in memories],
            [(d, o.obj_ptr) for d, o in pointers], self.num_frames, trace=info)
        head = self.model.sam_heads(pix, feats.high_res, multimask=True)
        out = FrameOutput(frame, head.low_res, head.object_score, head.obj_ptr)
        if self.trace is not None:
            info.update(kind="track", frame=frame, reverse=reverse, multimasks=head.multimasks.clone(),
                        ious=head.ious.clone(),
                        memories=[(t, o.frame) for t, o in memories],
                        pointers=[(d, o.frame) for d, o in pointers])
            self.trace.append(info)
        self._store_memory(out, feats, head.high_res, binarize=False)
        return out

    def propagate(self, reverse: bool = False, start: int | None = None) -> Iterator[FrameOutput]:
        """Yield each frame's output from ``start`` (default: the first prompted frame) to
        the end (or to 0 when ``reverse``), the prompted frame first."""
        self._preflight()
        if not self.cond:
            raise RuntimeError("add a box or a mask before propagating")
        start = min(self.cond) if start is None else self._check_frame(start)
        if reverse:
            order = range(start, -1, -1) if start > 0 else range(0)
        else:
            order = range(start, self.num_frames)
        for frame in order:
            if frame in self.cond:
                out = self.cond[frame]
            elif frame in self.non_cond:
                out = self.non_cond[frame]
            else:
                out = self._track(frame, reverse)
                self.non_cond[frame] = out
            self.tracked[frame] = reverse
            if self.trace is not None:
                self.trace.append({"kind": "output", "frame": frame, "reverse": reverse, "out": out})
            yield out
