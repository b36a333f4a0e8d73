"""Fast MedSAM paths (medsam_gui.models.fast_encoder) against the reference path.

Two full ViT-B encoder passes at most: the shared fp32 embedding of the hippocampus golden
slice (medsam_fixtures, reused by other test modules) and one int8 pass. Everything else runs
on a tiny ImageEncoderViT (same code, 2 blocks, 48 channels) or without an encoder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from medsam_fixtures import engine as shared_engine
from medsam_fixtures import hippocampus_embedding, hippocampus_golden, vit_b_state_dict

from medsam_gui.models import agreement
from medsam_gui.models import fast_encoder as fe
from medsam_gui.models import medsam_transforms as mt
from medsam_gui.models.device import resolve_precision
from medsam_gui.models.medsam import MedSAMEngine
from medsam_gui.models.medsam_transforms import preprocess_slice, resize_to_1024_uint8

GOLDENS = ["medsam_lung1_ct.npz", "medsam_hippocampus003_mr.npz"]


def _golden(golden_dir, name):
    d = np.load(golden_dir / name)
    return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def lung_slices(data_dir):
    from medsam_gui.core.intensity import default_bounds, volume_to_uint8
    from medsam_gui.io import load_volume

    vol = load_volume(data_dir / "lung_ct/lung1_image.nrrd")
    u8 = volume_to_uint8(vol.array, "CT", default_bounds(vol.array, "CT"))
    # three real slices; cropped so skimage's reference resize stays fast
    return [u8[z, 96:416, 64:448].copy() for z in (5, 24, 40)]


# ----------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name", GOLDENS)
def test_matrix_resize_reproduces_golden_reference_input(name, golden_dir):
    g = _golden(golden_dir, name)
    fast = mt.resize_to_1024_fast(g["volume_uint8_slice"])
    ref = g["input_1024_uint8"]
    diff = np.abs(fast.astype(int) - ref.astype(int))
    # stated tolerance: at most 1 grey level on at most 0.1 % of the pixels (0 measured here)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3
    # the batched torch version (the GPU preprocessing, run on the CPU) gives the same input
    x = mt.preprocess_batch(torch.from_numpy(g["volume_uint8_slice"])[None], "spline")
    r = preprocess_slice(g["volume_uint8_slice"])
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    assert float((x - r).abs().max()) <= 1.0 / 255 + 1e-6
    assert float(((x - r).abs() > 1e-6).float().mean()) <= 1e-3


def test_gpu_preprocessing_batch_on_real_ct_slices(lung_slices):
    batch = mt.preprocess_batch(torch.from_numpy(np.stack(lung_slices)), "spline")
    for i, s in enumerate(lung_slices):
        ref = preprocess_slice(s)
        d = (batch[i:i + 1] - ref).abs()
        assert float(d.max()) <= 1.0 / 255 + 1e-6 and float((d > 1e-6).float().mean()) <= 1e-3
        np.testing.assert_array_equal(mt.resize_to_1024_fast(s), resize_to_1024_uint8(s))
    # torch's bicubic is a different kernel (Keys, not B-spline): measurably off, so it is not
    # the default; this also shows the tolerance above can fail
    bic = mt.preprocess_batch(torch.from_numpy(lung_slices[1])[None], "bicubic")
    assert float((bic - preprocess_slice(lung_slices[1])).abs().max()) > 2.0 / 255


def test_resize_matrix_rejects_non_2d():
    with pytest.raises(ValueError, match="2D slice"):
        mt.resize_to_1024_fast(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="B, H, W"):
        mt.preprocess_batch(torch.zeros(3, 4, dtype=torch.uint8))


# ----------------------------------------------------------------------- tiny encoder


def _tiny_encoder():
    from functools import partial

    from medsam_gui.models.sam_loader import sam_modeling

    m = sam_modeling()
    g = torch.Generator().manual_seed(7)
    enc = m.ImageEncoderViT(img_size=1024, patch_size=16, in_chans=3, embed_dim=48, depth=2,
                            num_heads=2, mlp_ratio=4, out_chans=256, qkv_bias=True,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                            window_size=14, global_attn_indexes=(1,))
    with torch.no_grad():
        for p in enc.parameters():  # rel-pos tables are zero-initialised: make them matter
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return enc.eval()


@pytest.fixture(scope="module")
def tiny():
    return _tiny_encoder()


def test_fast_encoder_matches_reference_encoder(tiny, golden_dir):
    g = _golden(golden_dir, "medsam_lung1_ct.npz")
    x = preprocess_slice(g["volume_uint8_slice"])
    with torch.inference_mode():
        ref = tiny(x)
        fast = fe.FastImageEncoder(tiny, chunk=1024)(x)
        whole = fe.FastImageEncoder(tiny, chunk=1 << 20)(x)  # one attention call, no chunks
        q = fe.FastImageEncoder(tiny, quantize=True)(x)
    assert fast.shape == ref.shape == (1, 256, 64, 64)
    # SDPA + additive rel-pos bias: the same function up to float32 summation order
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(whole, fast, rtol=1e-5, atol=1e-5)
    cos, rel = agreement.cosine_and_relerr(q, ref)
    assert cos > 0.99 and rel < 0.15 and rel > 1e-4  # int8 really differs, but little


def test_batched_embedder_equals_single_slices(tiny, lung_slices):
    enc = fe.FastImageEncoder(tiny)
    cpu = torch.device("cpu")
    batched = fe.BatchedEmbedder(enc, cpu, "fp32", batch_size=2).embed(lung_slices)
    single = torch.cat([fe.BatchedEmbedder(enc, cpu, "fp32", batch_size=1).embed([s]) for s in lung_slices])
    assert batched.shape == (3, 256, 64, 64)
    torch.testing.assert_close(batched, single, rtol=0, atol=2e-3)  # float16 outputs
    starts = [s for s, _ in fe.BatchedEmbedder(enc, cpu, "fp32", batch_size=2).iter_embed(lung_slices)]
    assert starts == [0, 2]
    with pytest.raises(ValueError, match="share a shape"):
        fe.BatchedEmbedder(enc, cpu, batch_size=2).embed([lung_slices[0], lung_slices[0][:10]])


def test_engine_embed_batch_equals_per_slice_embed(tiny, lung_slices):
    eng = MedSAMEngine(vit_b_state_dict(), device="cpu", precision="int8")
    assert eng.precision == "int8" and eng.fast
    eng._fast_enc = fe.FastImageEncoder(tiny)  # the engine's batching logic on a cheap encoder
    batch = eng.embed(lung_slices, batch_size=2)
    per = torch.cat([eng.embed_slice(s) for s in lung_slices])
    assert batch.dtype == torch.float32 and batch.shape == (3, 256, 64, 64)
    torch.testing.assert_close(batch, per, rtol=0, atol=2e-3)
    assert [i for i, _ in eng.iter_embed_batch(lung_slices, batch_size=2)] == [0, 2]
    assert eng.embed([]).shape == (0, 256, 64, 64)


def test_fp32_engine_stays_on_the_reference_path(golden_dir):
    eng = shared_engine()
    assert eng.precision == "fp32" and not eng.fast
    seen = []

    class Rec(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.full((x.shape[0], 256, 64, 64), 0.5)

    real = eng.model.image_encoder
    eng.model.image_encoder = Rec()
    try:
        g = _golden(golden_dir, "medsam_hippocampus003_mr.npz")
        out = eng.embed([g["volume_uint8_slice"]] * 2)
    finally:
        eng.model.image_encoder = real
    assert out.shape == (2, 256, 64, 64) and len(seen) == 2 and seen[0].shape[0] == 1
    # the exact reference input (skimage preprocessing), not the matrix resize
    torch.testing.assert_close(seen[0], preprocess_slice(g["volume_uint8_slice"]), rtol=0, atol=0)
    assert eng._fast_enc is None


def test_precision_modes():
    from medsam_gui.errors import MedsamGuiError

    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_precision("int8", cpu) == "int8" and resolve_precision("int8", cuda) == "bf16"
    assert resolve_precision("fp16", cuda) == "fp16" and resolve_precision("fp16", cpu) == "fp32"
    assert resolve_precision("int8", mps) == "fp32" and resolve_precision("auto", cpu) == "fast"
    assert resolve_precision("fast", cpu) == "fast" == resolve_precision("FAST", cuda)
    eng = MedSAMEngine(vit_b_state_dict(), device="cpu", precision="fast")
    assert eng.fast and not eng._fast_encoder().quantize
    with pytest.raises(MedsamGuiError, match="unknown precision"):
        resolve_precision("int4", cpu)


# ----------------------------------------------------------------------- real ViT-B, int8


def test_int8_cpu_path_agrees_with_fp32_on_a_real_slice():
    """Random-weight ViT-B (seed 0), hippocampus MR golden slice and its label box: the int8
    embedding against the reference fp32 one, and the masks decoded from both."""
    g = hippocampus_golden()
    sl, box = g["volume_uint8_slice"], g["box_xyxy"]
    ref_eng = shared_engine()
    ref_emb = hippocampus_embedding()  # fp32 reference pass (shared with other modules)
    eng = MedSAMEngine(vit_b_state_dict(), device="cpu", precision="int8")
    emb = eng.embed_slice(sl)
    cos, rel = agreement.cosine_and_relerr(emb, ref_emb)
    assert cos >= 0.998 and rel <= 0.07, (cos, rel)
    m_ref = ref_eng.decode(ref_emb, box, sl.shape)
    m_fast = eng.decode(emb, box, sl.shape)
    # random weights: the mask is noisy but not empty nor full, so the Dice means something
    assert 0.02 < m_ref.mean() < 0.98
    assert agreement.dice(m_fast, m_ref) >= 0.98
