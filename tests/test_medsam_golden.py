"""MedSAM engine vs the reference inference goldens (tests/golden/medsam_*.npz)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_gui.core.intensity import default_bounds, volume_to_uint8
from medsam_gui.models.medsam_transforms import (
    box_to_1024,
    normalize_1024,
    postprocess_low_res_logits,
    preprocess_slice,
    resize_to_1024_uint8,
)

from medsam_fixtures import engine as shared_engine

GOLDENS = ["medsam_lung1_ct.npz", "medsam_hippocampus003_mr.npz"]
SCANS = {
    "medsam_lung1_ct.npz": "lung_ct/lung1_image.nrrd",
    "medsam_hippocampus003_mr.npz": "msd_hippocampus/hippocampus_003_image.nii.gz",
}


def _golden(golden_dir, name):
    d = np.load(golden_dir / name)
    return {k: d[k] for k in d.files}


@pytest.mark.parametrize("name", GOLDENS)
def test_slice_from_scan_matches_golden(name, golden_dir, data_dir):
    from medsam_gui.io import load_volume

    g = _golden(golden_dir, name)
    vol = load_volume(data_dir / SCANS[name])
    modality = str(g["modality"])
    bounds = default_bounds(vol.array, modality)
    np.testing.assert_allclose(bounds, g["window_bounds"], rtol=0, atol=1e-4)
    u8 = volume_to_uint8(vol.array, modality, bounds)
    np.testing.assert_array_equal(u8[int(g["slice_index"])], g["volume_uint8_slice"])


@pytest.mark.parametrize("name", GOLDENS)
def test_resize_to_1024_is_exact(name, golden_dir):
    # skimage 0.26 here: bit-exact (0 differing pixels) on both goldens
    g = _golden(golden_dir, name)
    img = resize_to_1024_uint8(g["volume_uint8_slice"])
    assert img.dtype == np.uint8 and img.shape == (1024, 1024)
    np.testing.assert_array_equal(img, g["input_1024_uint8"])
    norm = normalize_1024(img)
    assert norm.min() == g["input_1024_min"] and norm.max() == g["input_1024_max"]


@pytest.mark.parametrize("name", GOLDENS)
def test_box_and_postprocess_are_exact(name, golden_dir):
    g = _golden(golden_dir, name)
    hw = g["volume_uint8_slice"].shape
    np.testing.assert_array_equal(box_to_1024(g["box_xyxy"], hw), g["box_1024"])
    mask = postprocess_low_res_logits(torch.from_numpy(g["low_res_logits"]), hw)
    assert mask.dtype == bool and mask.shape == hw
    np.testing.assert_array_equal(mask.astype(np.uint8), g["expected_mask"])
    # numpy input too
    np.testing.assert_array_equal(postprocess_low_res_logits(g["low_res_logits"], hw), mask)
    # and it is not trivially all/nothing
    assert 0 < g["expected_mask"].sum() < g["expected_mask"].size


def test_preprocess_tensor_is_the_reference_input(golden_dir):
    g = _golden(golden_dir, "medsam_hippocampus003_mr.npz")
    x = preprocess_slice(g["volume_uint8_slice"])
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    ref = g["input_1024_uint8"].astype(np.float64)
    ref = (ref - ref.min()) / np.clip(ref.max() - ref.min(), 1e-8, None)
    for c in range(3):
        np.testing.assert_array_equal(x[0, c].numpy(), ref.astype(np.float32))


class _RecordingEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return torch.full((x.shape[0], 256, 64, 64), 0.25)


def test_engine_feeds_encoder_and_decoder_like_the_reference(golden_dir):
    eng = shared_engine()
    g = _golden(golden_dir, "medsam_lung1_ct.npz")
    sl = g["volume_uint8_slice"]
    hw = sl.shape
    real_encoder = eng.model.image_encoder
    rec = _RecordingEncoder()
    eng.model.image_encoder = rec
    try:
        emb = eng.embed_slice(sl)
    finally:
        eng.model.image_encoder = real_encoder
    assert emb.shape == (1, 256, 64, 64) and emb.dtype == torch.float32
    ref_in = g["input_1024_uint8"].astype(np.float64) / 255.0  # min 0, max 255 on this slice
    assert len(rec.seen) == 1
    np.testing.assert_array_equal(rec.seen[0][0, 1].numpy(), ref_in.astype(np.float32))

    # decoder: the reference call sequence with the golden box_1024
    torch.manual_seed(3)
    emb = torch.randn(1, 256, 64, 64)
    sam = eng.model
    with torch.no_grad():
        box_t = torch.as_tensor(g["box_1024"][None, None, :], dtype=torch.float)
        sparse, dense = sam.prompt_encoder(points=None, boxes=box_t, masks=None)
        ref_logits, _ = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False)
    logits = eng.decode_logits(emb, g["box_xyxy"], hw)
    assert logits.shape == (1, 1, 256, 256)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    mask = eng.decode(emb, g["box_xyxy"], hw)
    np.testing.assert_array_equal(mask, postprocess_low_res_logits(ref_logits, hw))
    # several boxes in one call give one mask each, equal to single calls
    boxes = np.stack([g["box_xyxy"], g["box_xyxy"] + np.array([-20, -20, 20, 20])])
    many = eng.decode(emb, boxes, hw)
    assert many.shape == (2, *hw)
    np.testing.assert_array_equal(many[0], mask)
    # fp16 (cached) embeddings decode to nearly the same mask
    m16 = eng.decode(emb.half(), g["box_xyxy"], hw)
    assert (m16 != mask).mean() < 0.01


def test_decode_is_served_at_the_encoder_stop_points():
    """A box waits for no encoder pass: the pass serves it at its next block boundary (where
    every real block polls ``_poll_stop``)."""
    import threading
    import time

    eng = shared_engine()
    started, release = threading.Event(), threading.Event()

    class SlowEncoder(torch.nn.Module):
        def forward(self, x):
            started.set()
            end = time.monotonic() + 10
            while not release.is_set() and time.monotonic() < end:
                eng._poll_stop()  # a block boundary
                time.sleep(0.001)
            return torch.zeros(x.shape[0], 256, 64, 64)

    real = eng.model.image_encoder
    eng.model.image_encoder = SlowEncoder()
    try:
        t = threading.Thread(target=eng.embed_slice, args=(np.zeros((8, 8), np.uint8),))
        t.start()
        assert started.wait(10)
        t0 = time.perf_counter()
        mask = eng.decode(torch.zeros(1, 256, 64, 64), (1, 1, 5, 5), (8, 8))
        assert time.perf_counter() - t0 < 5 and mask.shape == (8, 8)
        assert t.is_alive()  # the encoder is still "running"
        release.set()
        t.join(10)
    finally:
        release.set()
        eng.model.image_encoder = real


def test_device_and_precision_choice():
    from medsam_gui.errors import MedsamGuiError
    from medsam_gui.models.device import pick_device, resolve_precision

    cpu = pick_device("cpu")
    assert cpu.type == "cpu"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("auto", cpu) == "fast"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    if not torch.cuda.is_available():
        with pytest.raises(MedsamGuiError, match="CUDA was requested but no CUDA GPU"):
            pick_device("cuda")
        assert pick_device("auto").type in ("cpu", "mps")
    with pytest.raises(MedsamGuiError, match="unknown precision"):
        resolve_precision("fp8", cpu)
    with pytest.raises(MedsamGuiError, match="unknown device"):
        pick_device("tpu")
