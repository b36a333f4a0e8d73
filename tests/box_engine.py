"""A BoxPromptEngine stand-in for predictor, API and CLI tests: the 'embedding' is the slice
itself and the mask is the part of the box (inclusive pixels) where the slice is bright."""

from __future__ import annotations

import threading

import numpy as np
import torch

from medsam_gui.models.embedding_cache import embedding_key


class BrightBoxEngine:
    name = "brightbox"
    input_size = 0
    embedding_shape = (1, 0, 0)  # (1, H, W): the slice itself
    embedding_dtype = "float32"
    checkpoint_id = "0" * 64
    precision = "fp32"
    device = "cpu"
    on_notice = None

    def __init__(self, threshold: int = 128) -> None:
        self.threshold = threshold
        self.embedded: list[np.ndarray] = []
        self.decoded: list[tuple] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def cache_key(self, fingerprint, axis, index, bounds) -> str:
        return embedding_key(fingerprint, axis, index, bounds, self.checkpoint_id, self.precision, engine=self.name)

    def embed(self, slices, stop=None):
        with self._lock:
            self.embedded.extend(np.array(s) for s in slices)
            self.threads.add(threading.current_thread().name)
        return torch.from_numpy(np.stack(slices).astype(np.float32))

    def decode_logits(self, embedding, box_xyxy, hw):
        raise NotImplementedError

    def decode(self, embedding, box_xyxy, hw) -> np.ndarray:
        img = torch.as_tensor(embedding).float().reshape(hw).numpy()
        x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
        self.decoded.append((x0, y0, x1, y1))
        mask = np.zeros(hw, bool)
        mask[y0:y1 + 1, x0:x1 + 1] = img[y0:y1 + 1, x0:x1 + 1] >= self.threshold
        return mask

    def prepare_decoder(self, embedding) -> bool:
        return False
