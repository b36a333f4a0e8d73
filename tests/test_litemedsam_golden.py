"""LiteMedSAM reproduces the official inference (tests/golden/litemedsam_seed2024_trim.npz):
preprocessing exactly, embeddings and logits within 1e-4, masks identical except where the
probability is within 1e-4 of 0.5; the fast CPU path matches "fp32" within 1e-4; the CPU's
bfloat16 path keeps the masks at Dice >= 0.99."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_gui.errors import CheckpointError
from medsam_gui.models import litemedsam_transforms as T
from medsam_gui.models.litemedsam import LiteMedSAMEngine, litemedsam_state_dict_shapes, load_litemedsam_state_dict

import litemedsam_helpers as H

torch.set_num_threads(2)
CASES = (0, 1, 2)


def test_golden_weights_rule_and_layout():
    g = H.golden()
    assert str(g["rule"]) == "crc32-randn-v1" and int(g["seed"]) == 2024
    sd = H.golden_state_dict()
    keys = str(g["fingerprint_keys"]).split("\n")
    sums = np.array([sd[k].double().sum().item() for k in keys])
    np.testing.assert_allclose(sums, g["fingerprint_sums"], rtol=0, atol=1e-6)
    # our model's state dict has exactly the official keys and shapes
    assert litemedsam_state_dict_shapes() == dict(H.golden_layout())


@pytest.mark.parametrize("c", CASES)
def test_preprocessing_is_exact(c):
    g = H.golden()
    s = g[f"c{c}_slice_uint8"]
    assert T.resized_hw(s.shape) == tuple(int(v) for v in g[f"c{c}_resized_hw"])
    x = T.preprocess_slice_256(s)
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
    nh, nw = (int(v) for v in g[f"c{c}_resized_hw"])
    ref = g[f"c{c}_input_256_c0_crop"]
    for ch in range(3):
        assert np.array_equal(x[0, ch, :nh, :nw].numpy(), ref)
    assert not x[0, :, nh:].any() and not x[0, :, :, nw:].any()
    box = T.box_to_256(g[f"c{c}_box_xyxy"], s.shape)
    assert np.array_equal(box, g[f"c{c}_box_256"][0])


def test_inter_area_matches_opencv():
    """Our numpy INTER_AREA is OpenCV's (the official preprocessing), on random images."""
    import cv2  # a test dependency only: the app does not need OpenCV

    rng = np.random.default_rng(3)
    for h, w in [(52, 34), (101, 122), (512, 512), (333, 400), (768, 768), (91, 512), (640, 480), (17, 23)]:
        img = rng.integers(0, 256, (h, w)).astype(np.uint8)
        oh, ow = T.resized_hw((h, w))
        ref = cv2.resize(np.dstack([img] * 3), (ow, oh), interpolation=cv2.INTER_AREA)[..., 0]
        assert np.array_equal(T.resize_area_uint8(img, (oh, ow)), ref), (h, w)


def test_inter_area_paths_on_known_values():
    # 2x2 blocks round half up: (1+2+3+4+2)>>2 = 3; (0+0+1+1+2)>>2 = 1
    img = np.array([[1, 2, 0, 0], [3, 4, 1, 1]], np.uint8)
    assert T.resize_area_uint8(img, (1, 2)).tolist() == [[3, 1]]
    # 3x3 blocks: float32 mean rounded half to even
    img = np.zeros((3, 3), np.uint8)
    img[0, :2] = 1  # mean 2/9 -> 0
    assert T.resize_area_uint8(img, (1, 1)).tolist() == [[0]]
    # enlarging a constant image keeps it constant
    assert (T.resize_area_uint8(np.full((5, 7), 200, np.uint8), (11, 256)) == 200).all()


@pytest.fixture(scope="module")
def engines():
    sd = H.golden_state_dict()
    return LiteMedSAMEngine(sd, device="cpu", precision="fp32"), LiteMedSAMEngine(sd, device="cpu", precision="fast")


@pytest.fixture(scope="module")
def embeddings(engines):
    ref, fast = engines
    slices = [H.golden()[f"c{c}_slice_uint8"] for c in CASES]
    return ref.embed(slices), fast.embed(slices)


def test_engine_attributes(engines):
    ref, fast = engines
    assert ref.name == "litemedsam" and ref.input_size == 256 and ref.embedding_shape == (256, 64, 64)
    assert ref.precision == "fp32" and fast.precision == "fast" and fast.fast and not ref.fast
    assert ref.checkpoint_id.startswith("sd-") and ref.checkpoint_id == fast.checkpoint_id
    k1 = ref.cache_key("vol", 0, 3, (-160, 240))
    assert k1 != fast.cache_key("vol", 0, 3, (-160, 240)) and k1 != ref.cache_key("vol", 0, 4, (-160, 240))
    from medsam_gui.models.embedding_cache import embedding_key

    assert k1 != embedding_key("vol", 0, 3, (-160, 240), ref.checkpoint_id, "fp32", engine="medsam")
    from medsam_gui.models.engine import BoxPromptEngine

    assert isinstance(ref, BoxPromptEngine)
    assert ref.prepare_decoder(torch.zeros(1, 256, 64, 64)) is False


@pytest.mark.parametrize("c", CASES)
def test_embedding_logits_and_mask_match_golden(engines, embeddings, c):
    g = H.golden()
    ref = engines[0]
    emb = embeddings[0][c:c + 1]
    step = int(g["embedding_channel_step"])
    gold_emb = g[f"c{c}_embedding_ch_every8"]
    assert np.abs(emb[0, ::step].numpy() - gold_emb).max() <= 1e-4
    s = g[f"c{c}_slice_uint8"]
    hw = s.shape
    logits, iou = ref.decode_with_iou(emb, g[f"c{c}_box_xyxy"], hw)
    nh, nw = (int(v) for v in g[f"c{c}_resized_hw"])
    assert logits.shape == (1, 1, 256, 256)
    assert np.abs(logits[0, 0, :nh, :nw].numpy() - g[f"c{c}_low_res_logits_crop"]).max() <= 1e-4
    assert abs(float(iou[0, 0]) - float(g[f"c{c}_iou_pred"][0, 0])) <= 1e-4
    mask = ref.decode(emb, g[f"c{c}_box_xyxy"], hw)
    gold = g[f"c{c}_mask"].astype(bool)
    assert mask.shape == hw and mask.dtype == bool
    prob = torch.sigmoid(torch.nn.functional.interpolate(logits[..., :nh, :nw], size=hw, mode="bilinear",
                                                         align_corners=False))[0, 0].numpy()
    differ = mask != gold
    assert not (differ & (np.abs(prob - 0.5) >= 1e-4)).any()
    assert gold.any() and (~gold).any()  # a real test: the golden mask is neither empty nor full


@pytest.mark.parametrize("c", CASES)
def test_fast_path_matches_fp32(embeddings, c):
    ref, fast = embeddings
    assert fast.shape == (3, 256, 64, 64) and fast.dtype == torch.float32
    assert (fast[c] - ref[c]).abs().max().item() <= 1e-4


def test_segment_and_batched_boxes(engines, embeddings):
    g = H.golden()
    ref = engines[0]
    s = g["c2_slice_uint8"]
    box = g["c2_box_xyxy"]
    emb = embeddings[0][2:3]
    one = ref.decode(emb, box, s.shape)
    two = ref.decode(emb, np.stack([box, box]), s.shape)
    assert two.shape == (2,) + s.shape and (two[0] == one).all() and (two[1] == one).all()


def test_wrong_and_broken_checkpoints_are_refused(tmp_path):
    import medsam_fixtures

    vit_b = medsam_fixtures.vit_b_checkpoint()
    with pytest.raises(CheckpointError, match=r"is a MedSAM / SAM ViT-B checkpoint, not LiteMedSAM"):
        load_litemedsam_state_dict(vit_b)
    full = H.golden_checkpoint()
    cut = tmp_path / "lite_medsam.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_litemedsam_state_dict(cut)
    evil = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"image_encoder.x": Boom()}, evil)
    with pytest.raises(CheckpointError, match="refused: the file contains code"):
        load_litemedsam_state_dict(evil)
    partial = tmp_path / "partial.pth"
    sd = dict(H.golden_state_dict())
    sd.pop("image_encoder.neck.0.weight")
    sd["image_encoder.neck.1.weight"] = torch.zeros(128)
    torch.save(sd, partial)
    with pytest.raises(CheckpointError, match=r"wrong shape: image_encoder.neck.1.weight.*missing: image_encoder.neck.0.weight"):
        load_litemedsam_state_dict(partial)
    assert len(load_litemedsam_state_dict(full)) == 435


def test_fast_path_fallbacks_match(engines, embeddings):
    """Without oneDNN's fused kernels and channels-last, and in one piece instead of cache-sized
    bands, the fast path gives the same embedding (what other torch builds and devices run)."""
    from medsam_gui.models.tiny_vit_fast import FastTinyViT
    from medsam_gui.models.tiny_vit_kernels import onednn_fusions_available

    ref = engines[0]
    x = T.preprocess_slice_256(H.golden()["c1_slice_uint8"])
    plain = FastTinyViT(ref.model.image_encoder, fused=False, channels_last=False)
    assert not plain.fused and engines[1]._fast_encoder().fused == onednn_fusions_available()
    whole = FastTinyViT(ref.model.image_encoder, tiled=False)
    with torch.inference_mode():
        got = plain(x[:, :1])
        got3 = plain(x)  # the 3-channel input is accepted too
        got_whole = whole(x[:, :1])
    for g in (got, got3, got_whole):
        assert (g - embeddings[0][1:2]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("c", CASES)
def test_fast_decoder_matches_reference_decoder(engines, embeddings, c):
    g = H.golden()
    ref, fast = engines
    emb = embeddings[1][c:c + 1]
    hw = g[f"c{c}_slice_uint8"].shape
    box = g[f"c{c}_box_xyxy"]
    want = ref.decode_logits(emb, box, hw)
    assert fast.prepare_decoder(emb) is True and fast.prepare_decoder(emb) is False
    got = fast.decode_logits(emb, box, hw)
    assert got.shape == (1, 1, 256, 256) and (got - want).abs().max().item() <= 1e-4
    prob = torch.sigmoid(torch.nn.functional.interpolate(want[..., :T.resized_hw(hw)[0], :T.resized_hw(hw)[1]],
                                                         size=hw, mode="bilinear", align_corners=False))[0, 0]
    differ = fast.decode(emb, box, hw) != ref.decode(emb, box, hw)
    assert not (differ & (np.abs(prob.numpy() - 0.5) >= 1e-4)).any()


def test_cpu_bf16_path_keeps_the_masks(engines, embeddings):
    """The CPU's bfloat16 encoder ("auto" on CPUs with bf16 units) against the official fp32
    computation on the three real golden slices: embeddings within 3 % (relative L2), masks of
    the golden box and of four shifted boxes at Dice >= 0.99."""
    from medsam_gui.models.agreement import dice

    ref = engines[0]
    eng = LiteMedSAMEngine(H.golden_state_dict(), device="cpu", precision="bf16")
    assert eng.precision == "bf16" and eng._fast_encoder().dtype == torch.bfloat16
    g = H.golden()
    rng = np.random.default_rng(5)
    for c in CASES:
        s = g[f"c{c}_slice_uint8"]
        want = embeddings[0][c:c + 1]
        got = eng.embed_slice(s)
        assert got.dtype == torch.float32 and got.shape == want.shape
        rel = ((got - want).norm() / want.norm()).item()
        assert 1e-4 < rel <= 0.03  # really bfloat16, and close
        box = np.asarray(g[f"c{c}_box_xyxy"], float).reshape(4)
        for shift in [np.zeros(4)] + [rng.integers(-3, 4, 4) for _ in range(4)]:
            m_ref = ref.decode(want, box + shift, s.shape)
            m_bf16 = eng.decode(got, box + shift, s.shape)
            assert m_ref.any() and dice(m_bf16, m_ref) >= 0.99, (c, shift)


class _Bf16DecoderEngine(LiteMedSAMEngine):
    """The exact fast encoder with the decoder's bfloat16 products (on any CPU; the app uses
    them with the "bf16" precision where the CPU has bf16 units)."""

    def decoder_dtype(self):
        return torch.bfloat16


def test_bf16_decoder_keeps_the_masks(engines, embeddings):
    """The FastDecoder's bfloat16 image-token products against the official float32 decoder, on
    the official embeddings of the three real golden slices: the golden box and six shifted
    boxes per slice (first box: light cache entry; next ones: the completed entry) at Dice >=
    0.99, and really computed in bfloat16 (logits differ by more than float32 rounding)."""
    from medsam_gui.models.agreement import dice

    ref = engines[0]
    eng = _Bf16DecoderEngine(H.golden_state_dict(), device="cpu", precision="fast")
    g = H.golden()
    rng = np.random.default_rng(11)
    for c in CASES:
        s = g[f"c{c}_slice_uint8"]
        emb = embeddings[0][c:c + 1]
        box = np.asarray(g[f"c{c}_box_xyxy"], float).reshape(4)
        for shift in [np.zeros(4)] + [rng.integers(-4, 5, 4) for _ in range(6)]:
            want = ref.decode_logits(emb, box + shift, s.shape)
            got = eng.decode_logits(emb, box + shift, s.shape)
            assert got.dtype == torch.float32 and 1e-4 < float((got - want).abs().max()) < 0.5
            m_ref = ref.decode(emb, box + shift, s.shape)
            assert m_ref.any() and dice(eng.decode(emb, box + shift, s.shape), m_ref) >= 0.99, (c, shift)
