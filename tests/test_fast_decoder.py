"""FastDecoder (medsam_gui.models.fast_encoder) against segment-anything's own MaskDecoder.

The reference is ``MedSAMEngine.decode_logits`` / ``decode`` (segment-anything's PromptEncoder
and MaskDecoder called as MedSAM does: one box, no mask input, ``multimask_output=False``).
Random SAM ViT-B weights (seed 0, the medsam_state_dict fixture of tests/gui_fixtures.py) and random (1, 256, 64, 64)
embeddings: the decoder never needs the image encoder here, so no encoder pass is run.

Random decoder weights give logits of only +-0.2, so float32 rounding (~2e-7) can flip a pixel
whose interpolated probability is within ~1e-7 of 0.5. The "identical masks" test therefore
also runs an engine whose hypernetwork output layer is scaled by 64 (a power of two), which
gives logits of the size the real MedSAM produces (+-10).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from medsam_gui.models import fast_decoder as fe
from medsam_gui.models import fast_decoder_ops as ops
from medsam_gui.models.medsam import MedSAMEngine
from medsam_gui.models.medsam_transforms import postprocess_low_res_logits

HW = (96, 128)  # (H, W): not square, so the box scaling to 1024 differs per axis
BOXES = [
    (30, 20, 90, 70),  # inside
    (0, 0, 127, 95),  # the whole slice, touching every edge
    (0, 40, 25, 95),  # on the left and bottom edges
    (110, 0, 127, 12),  # top-right corner
    (64, 48, 65, 49),  # tiny: 2 x 2 pixels
    (10, 80, 10, 80),  # degenerate: one point
]
HYPER_OUT = "mask_decoder.output_hypernetworks_mlps.0.layers.2."


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def engine(medsam_state_dict):
    return MedSAMEngine(medsam_state_dict, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def sharp_engine(medsam_state_dict):
    """Same weights, hypernetwork output x64: realistic logit magnitudes (only new tensors are
    made; the shared state dict is not modified)."""
    sd = dict(medsam_state_dict)
    for k in ("weight", "bias"):
        sd[HYPER_OUT + k] = sd[HYPER_OUT + k] * 64.0
    return MedSAMEngine(sd, device="cpu", precision="fp32")


def _embedding(seed: int, offset: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(1, 256, 64, 64, generator=g) * 0.5
    e += torch.randn(1, 256, 1, 1, generator=g) * 0.2 + offset  # per-channel offsets, like real embeddings
    return e.to(dtype)


def _bbox(mask: np.ndarray):
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_logits_match_segment_anything_mask_decoder(engine, offset):
    """offset 5: every token has a mean 10x its spread (the layer-norm folding must not lose
    precision by cancellation)."""
    emb = _embedding(1, offset)
    fd = fe.FastDecoder(engine)
    worst = 0.0
    for box in BOXES:
        ref = engine.decode_logits(emb, box, HW)
        ours = fd.decode_logits(emb, box, HW)
        assert ours.shape == ref.shape == (1, 1, 256, 256) and ours.dtype == torch.float32
        assert ours.device.type == "cpu"
        worst = max(worst, float((ours - ref).abs().max()))
    assert worst <= 1e-4, worst
    assert fd.cache_info()["misses"] == 1 and fd.cache_info()["hits"] == len(BOXES) - 1


def test_folded_upscaling_equals_the_direct_product(engine):
    """The rank-(heads x tokens) assembly of the first transposed convolution equals running it
    on the final image tokens."""
    fd = fe.FastDecoder(engine)
    emb = _embedding(2)
    boxes = torch.tensor([[100.0, 200.0, 700.0, 900.0], [0.0, 0.0, 1024.0, 1024.0]])[:, None]
    _, pos = fd._pe_pair()
    with torch.inference_mode():
        sparse, _ = engine.model.prompt_encoder(points=None, boxes=boxes, masks=None)
        entry, _ = fd._entry(emb, engine.device, full=True)
        assert entry.full and entry.k0z is not None
        a = ops.decode_boxes(engine.model.mask_decoder, entry, pos, sparse, fold=True)
        b = ops.decode_boxes(engine.model.mask_decoder, entry, pos, sparse, fold=False)
    assert float((a - b).abs().max()) <= 1e-5


def test_masks_identical_to_reference_with_realistic_logits(sharp_engine):
    fd = fe.FastDecoder(sharp_engine)
    emb = _embedding(3)
    for i, box in enumerate(BOXES):
        ref_logits = sharp_engine.decode_logits(emb, box, HW)
        assert float(ref_logits.abs().max()) > 5  # the logits really are large
        ref = postprocess_low_res_logits(ref_logits, HW)  # == sharp_engine.decode(emb, box, HW)
        logits = fd.decode_logits(emb, box, HW)
        assert float((logits - ref_logits).abs().max()) <= 64 * 1e-4
        mask, bbox = fd.postprocess(logits, HW)
        assert mask.dtype == bool and mask.shape == HW
        np.testing.assert_array_equal(mask, ref)
        assert bbox == _bbox(ref)
        if i == 0:
            np.testing.assert_array_equal(fd.decode(emb, box, HW), sharp_engine.decode(emb, box, HW))


def test_masks_differ_only_within_rounding_of_the_threshold(engine):
    """Random weights: logits within +-0.2 of 0, so a pixel may flip only where the reference's
    interpolated probability is within float rounding of 0.5."""
    import torch.nn.functional as F

    fd = fe.FastDecoder(engine)
    emb = _embedding(5)
    flipped = 0
    for box in BOXES:
        ref_logits = engine.decode_logits(emb, box, HW)
        ref = postprocess_low_res_logits(ref_logits, HW)
        ours = fd.postprocess(fd.decode_logits(emb, box, HW), HW)[0]
        diff = ours != ref
        if diff.any():
            prob = F.interpolate(torch.sigmoid(ref_logits), size=HW, mode="bilinear", align_corners=False)[0, 0]
            assert float(np.abs(prob.numpy()[diff] - 0.5).max()) < 1e-6
            flipped += int(diff.sum())
    assert flipped <= 10  # of 6 x 12288 pixels


def test_cache_hit_same_embedding_miss_when_changed(engine):
    fd = fe.FastDecoder(engine, cache_size=2)
    emb = _embedding(6, dtype=torch.float16)
    box1, box2 = BOXES[0], BOXES[2]
    first = fd.decode_logits(emb, box1, HW)  # first box: a light entry (image tokens only)
    assert fd.cache_info() == {"hits": 0, "misses": 1, "size": 1, "max": 2}
    assert not fd._cache[0].full
    fd.decode_logits(emb, box2, HW)  # second box on the same slice: cached, and completed
    assert fd.cache_info()["hits"] == 1 and fd.cache_info()["misses"] == 1
    assert fd._cache[0].full and fd._cache[0].keys0 is not None
    again = fd.decode_logits(emb, box1, HW)  # the full entry's path gives the light one's logits
    assert float((again - first).abs().max()) <= 1e-5
    fd.decode_logits(emb.clone(), box2, HW)  # the same numbers in another tensor: cached too
    assert fd.cache_info()["hits"] == 3 and fd.cache_info()["misses"] == 1

    other = _embedding(7, dtype=torch.float16)
    got = fd.decode_logits(other, box1, HW)  # a different embedding: not reused
    assert fd.cache_info()["misses"] == 2
    assert float((got - engine.decode_logits(other.float(), box1, HW)).abs().max()) <= 1e-4

    emb[0, :, 10:30, 10:30] += 1.0  # modified in place: the cached work is stale
    assert fd.prepare(emb) is True  # prepare() does the work now: it was not cached
    assert fd.prepare(emb) is False
    got = fd.decode_logits(emb, box1, HW)
    assert float((got - engine.decode_logits(emb.float(), box1, HW)).abs().max()) <= 1e-4
    assert fd.cache_info()["size"] == 2  # LRU bounded by cache_size

    arr = _embedding(8).numpy()  # numpy embeddings (no version counter) are matched by content
    fd.decode_logits(arr, box1, HW)
    misses = fd.cache_info()["misses"]
    arr[0, 5, 3, 3] += 0.5
    got = fd.decode_logits(arr, box1, HW)
    assert fd.cache_info()["misses"] == misses + 1
    assert float((got - engine.decode_logits(torch.from_numpy(arr), box1, HW)).abs().max()) <= 1e-4
    fd.clear_cache()
    assert fd.cache_info()["size"] == 0


def test_float16_embedding_is_decoded_like_its_float32_value(engine):
    fd = fe.FastDecoder(engine)
    e16 = _embedding(9, dtype=torch.float16)
    assert fd.prepare(e16) and fd.prepare(e16.float())  # both full entries: the same path
    a = fd.decode_logits(e16, BOXES[0], HW)
    b = fd.decode_logits(e16.float(), BOXES[0], HW)
    assert torch.equal(a, b)
    assert float((a - engine.decode_logits(e16.float(), BOXES[0], HW)).abs().max()) <= 1e-4
    a3 = fd.decode_logits(e16[0], BOXES[0], HW)  # (256, 64, 64) is accepted too
    assert torch.equal(a3, a)


def test_batch_of_boxes_equals_boxes_one_by_one(engine):
    fd = fe.FastDecoder(engine)
    emb = _embedding(10)
    boxes = np.array(BOXES[:4], dtype=np.float64)
    batch = fd.decode_logits(emb, boxes, HW)
    assert batch.shape == (4, 1, 256, 256)
    for i, box in enumerate(boxes):
        one = fd.decode_logits(emb, box, HW)
        assert float((batch[i:i + 1] - one).abs().max()) <= 1e-5
    ref = engine.decode_logits(emb, boxes, HW)  # the reference decoder batched the same way
    assert float((batch - ref).abs().max()) <= 1e-4


def test_thread_safe_while_another_thread_decodes(engine):
    fd = fe.FastDecoder(engine, cache_size=1)  # the threads also evict each other's entries
    embs = [_embedding(11), _embedding(12)]
    expected = [fd.decode_logits(e, BOXES[0], HW) for e in embs]
    errors: list = []

    def work(i):
        try:
            for _ in range(3):  # light or full entries as the threads evict each other's: 1e-5
                got = fd.decode_logits(embs[i], BOXES[0], HW)
                assert float((got - expected[i]).abs().max()) <= 1e-5
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_api_shapes_and_errors(engine):
    fd = fe.FastDecoder(engine)
    pe = fd.image_pe()
    assert pe.shape == (1, 256, 64, 64) and pe.dtype == torch.float32
    torch.testing.assert_close(pe, engine.model.prompt_encoder.get_dense_pe(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="embedding"):
        fd.decode_logits(torch.zeros(2, 256, 64, 64), BOXES[0], HW)
    fd.record_stages = True
    fd.decode_logits(_embedding(13), BOXES[0], HW)
    assert {"prompt", "cache", "layer0", "layer1", "final", "upscale", "to_cpu"} <= set(fd.last_stages)
    assert all(v >= 0 for v in fd.last_stages.values())


def test_autocast_precision_uses_the_direct_path(medsam_state_dict):
    """An engine running the decoder under bf16 autocast (CPU here; CUDA in the app) decodes
    without the float32-only folding and stays close to the reference under the same autocast."""
    eng = MedSAMEngine(medsam_state_dict, device="cpu", precision="bf16")
    assert eng.precision == "bf16"
    fd = fe.FastDecoder(eng)
    emb = _embedding(14)
    ours = fd.decode_logits(emb, BOXES[0], HW)
    ref = eng.decode_logits(emb, BOXES[0], HW)
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    spread = float(ref.abs().max())
    assert float((ours - ref).abs().max()) <= 0.1 * spread


def test_replaced_weights_are_not_served_from_the_cache(medsam_state_dict):
    """Derived weights and cached per-embedding work name the tensors they came from: after the
    model's upscaling weight is replaced (as moving the model does), nothing stale is used."""
    eng = MedSAMEngine(medsam_state_dict, device="cpu", precision="fp32")
    fd = fe.FastDecoder(eng)
    emb = _embedding(15)
    fd.decode_logits(emb, BOXES[0], HW)
    ct1 = eng.model.mask_decoder.output_upscaling[0]
    ct1.weight.data = ct1.weight.data * 2.0  # new storage; the shared state dict is untouched
    got = fd.decode_logits(emb, BOXES[0], HW)
    assert fd.cache_info()["misses"] == 2
    assert float((got - eng.decode_logits(emb, BOXES[0], HW)).abs().max()) <= 1e-4


def test_engine_decode_uses_the_fast_decoder_except_in_fp32(engine):
    """MedSAMEngine.decode (what the viewer, propagation and the CLI call) runs FastDecoder for the
    fast precisions and segment-anything's own decoder for fp32; the logits agree."""
    from medsam_gui.models.medsam import MedSAMEngine

    fast = MedSAMEngine(engine.model.state_dict(), device="cpu", precision="fast")
    assert engine.precision == "fp32"
    emb = _embedding(11)
    box, hw = (120.0, 140.0, 260.0, 300.0), (512, 512)
    before = fast.fast_decoder.cache_info()["misses"]
    got = fast.decode_logits(emb, box, hw)
    assert fast.fast_decoder.cache_info()["misses"] == before + 1
    ref = engine.decode_logits(emb, box, hw)
    assert "_fast_decoder_obj" not in engine.__dict__  # fp32 never builds it
    assert got.shape == ref.shape == (1, 1, 256, 256)
    assert (got - ref).abs().max().item() < 1e-4
    fast.decode_logits(emb, box, hw)
    assert fast.fast_decoder.cache_info()["hits"] >= 1
