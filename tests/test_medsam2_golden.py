"""MedSAM2 (models/medsam2) against the official MedSAM2 inference (commit 332f30d) on a real
lung CT: tests/golden/medsam2_seed2024_reduced.pt (see tests/golden/README.md), golden
weights rebuilt with the crc32-randn-v1 rule. One engine and one run per flow are shared by
all assertions (module-scoped fixtures); the 7-slice crop is encoded once."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from medsam_gui.models.medsam2.engine import MedSAM2Engine
from medsam_gui.models.medsam2.preprocessing import largest_component, slice_to_input, window_to_uint8
from weight_rule import rule_tensor

GOLD_NAME = "medsam2_seed2024_reduced.pt"
OBJ_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"


def rule_weights(keys, shapes, seed: int) -> dict:
    """The crc32-randn-v1 golden-weight rule (shared/golden/README.md)."""
    out = {}
    for key, shape in zip(keys, shapes):
        shape = tuple(shape)
        out[key] = rule_tensor(seed, key, shape)
    return out


def unpack(g, name) -> np.ndarray:
    shape = g[f"{name}_shape"]
    return np.unpackbits(g[f"{name}_packbits"].numpy(), count=math.prod(shape)).reshape(shape).astype(bool)


def maxdiff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


def assert_masks_close(mine: np.ndarray, ref: np.ndarray, logits: np.ndarray | None = None) -> None:
    diff = mine != ref
    assert int(diff.sum()) <= 10, f"{int(diff.sum())} pixels differ"
    if logits is not None and diff.any():
        assert np.abs(logits[diff]).max() < 1e-2


@pytest.fixture(scope="module")
def gold(golden_dir):
    return torch.load(golden_dir / GOLD_NAME, weights_only=True)


@pytest.fixture(scope="module")
def rule_sd(gold):
    return rule_weights(gold["state_keys"], gold["state_shapes"], gold["weights"]["seed"])


@pytest.fixture(scope="module")
def volume_u8(gold, data_dir):
    """The whole lung1 CT windowed as the official script does ((Z,Y,X) uint8, 48 slices)."""
    import SimpleITK as sitk

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "lung_ct" / "lung1_image.nrrd")))
    return window_to_uint8(hu, tuple(gold["window"].tolist()))


@pytest.fixture(scope="module")
def engine(gold, rule_sd):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    sd = dict(rule_sd)
    for key, ov in gold["weight_overrides"].items():
        sd[key] = sd[key] + ov["added"]
    return MedSAM2Engine(sd, device="cpu", precision="fp32", cache_slices=None)


def _z_range(gold):
    z0, z1 = gold["z_crop"].tolist()
    return z0, z1 - 1


def _collect(trace):
    out = {"prompt": [e for e in trace if e["kind"] == "prompt"],
           "track": [e for e in trace if e["kind"] == "track"],
           "memenc": [e for e in trace if e["kind"] == "memenc"]}
    for direction, rev in (("fwd", False), ("rev", True)):
        outs = [e["out"] for e in trace if e["kind"] == "output" and e["reverse"] == rev]
        out[direction] = {
            "frames": [o.frame for o in outs],
            "low_res_logits": torch.cat([o.low_res for o in outs]),
            "object_score_logits": torch.cat([o.object_score for o in outs]),
            "obj_ptr": torch.cat([o.obj_ptr for o in outs]),
            "maskmem_features": torch.cat([o.maskmem for o in outs]),
        }
    return out


@pytest.fixture(scope="module")
def box_run(gold, engine, volume_u8):
    trace, updates = [], []
    job = engine.segmentation(volume_u8, int(gold["key_slice_index_volume"]), gold["box_xyxy_pixels"].numpy(),
                              z_range=_z_range(gold), trace=trace)
    job.run(updates.append)
    return job, _collect(trace), updates


@pytest.fixture(scope="module")
def recist_run(gold, engine, volume_u8, box_run):
    trace = []
    job = engine.segmentation(volume_u8, int(gold["key_slice_index_volume"]), mask=box_run[0].key_mask,
                              z_range=_z_range(gold), trace=trace)
    job.run()
    return job, _collect(trace)


@pytest.fixture(scope="module")
def nobj_run(gold, engine, volume_u8, box_run, recist_run):
    """The same box with the object-score bias of ``nobj_*`` (rule value - 1)."""
    ov = gold["weight_overrides"][OBJ_BIAS]
    bias = engine.model.sam_mask_decoder.pred_obj_score_head.layers[2].bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.copy_(ov["rule_value"] + ov["added_for_nobj"])
    try:
        trace = []
        job = engine.segmentation(volume_u8, int(gold["key_slice_index_volume"]), gold["box_xyxy_pixels"].numpy(),
                                  z_range=_z_range(gold), trace=trace)
        job.run()
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    return job, _collect(trace)


# ---------------------------------------------------------------- weights and input

def test_rule_weights_fingerprints_and_strict_layout(gold, rule_sd):
    sums = torch.tensor([float(rule_sd[k].double().sum()) for k in gold["fingerprint_keys"]], dtype=torch.float64)
    assert torch.allclose(sums, gold["fingerprint_sums"], rtol=0, atol=1e-6)
    from medsam_gui.models.medsam2.engine import expected_shapes

    shapes = expected_shapes()
    assert len(shapes) == 471 == len(gold["state_keys"])
    assert shapes == {k: tuple(s) for k, s in zip(gold["state_keys"], gold["state_shapes"])}
    ov = gold["weight_overrides"][OBJ_BIAS]
    assert torch.equal(rule_sd[OBJ_BIAS], ov["rule_value"])


def test_input_volume_and_key_input(gold, volume_u8):
    z0, z1 = gold["z_crop"].tolist()
    crop = np.ascontiguousarray(volume_u8[z0:z1])
    assert crop.shape == (gold["num_frames"], 512, 512)
    assert hashlib.sha256(crop.tobytes()).hexdigest() == gold["volume_uint8_crop_sha256"]
    x = slice_to_input(crop[gold["key_frame"]])
    assert x.dtype == torch.float32 and x.shape == (3, 512, 512)
    assert maxdiff(x[:, ::4, ::4], gold["input_key_s4"]) <= 1e-6
    assert abs(float(x.double().sum()) - float(gold["input_key_sum"])) < 1e-2
    assert not torch.equal(x[0], x[1])  # ImageNet mean/std per channel


# ---------------------------------------------------------------- encoder and key decoder

def test_encoder_levels(gold, engine, box_run):
    cache = engine._features[3]
    f = cache.get(int(gold["key_frame"]))
    assert [tuple(t.shape) for t in f.high_res] == [(1, 32, 128, 128), (1, 64, 64, 64)]
    assert maxdiff(f.high_res[0][:, ::4], gold["enc_conv_s0_c4"]) <= 1e-2  # stored as float16
    assert maxdiff(f.high_res[1][:, ::4], gold["enc_conv_s1_c4"]) <= 1e-3
    assert maxdiff(f.vision[:, ::4], gold["enc_vision_features_c4"]) <= 1e-3
    assert maxdiff(f.vision_pos[:, ::8], gold["enc_vision_pos_enc_level2_c8"]) <= 1e-5


def test_key_slice_decoder(gold, engine, box_run):
    _, tr, _ = box_run
    head = tr["prompt"][0]["head"]
    coords = gold["key_prompt_coords"]
    from medsam_gui.models.medsam2.preprocessing import box_to_model

    pts, labels = box_to_model(gold["box_xyxy_pixels"].numpy(), (512, 512))
    assert torch.equal(pts, coords) and torch.equal(labels, gold["key_prompt_labels"])
    with torch.no_grad():
        sparse = engine.model.sam_prompt_encoder.embed_points(pts, labels)
    assert maxdiff(sparse, gold["key_sparse_embeddings"]) <= 1e-4
    assert maxdiff(head.all_masks, gold["key_decoder_all_mask_logits"]) <= 5e-3
    assert maxdiff(head.all_ious, gold["key_decoder_all_ious"]) <= 1e-3
    assert maxdiff(head.stability, gold["key_decoder_stability_token0"]) <= 1e-3
    used_single = bool(head.stability.item() >= 0.98)
    assert used_single == bool(gold["key_decoder_used_singlemask"]) is True
    assert maxdiff(head.low_res, gold["key_low_res_logits"]) <= 5e-3
    assert maxdiff(head.object_score, gold["key_object_score_logits"]) <= 1e-3
    assert maxdiff(head.obj_ptr, gold["key_obj_ptr"]) <= 1e-3
    video = torch.nn.functional.interpolate(head.low_res, size=(512, 512), mode="bilinear", align_corners=False)
    assert maxdiff(video[0, 0, ::2, ::2], gold["key_video_res_logits_s2"]) <= 1e-2


# ---------------------------------------------------------------- propagation

def _assert_memory(mine: torch.Tensor, ref_bf16: torch.Tensor) -> None:
    assert mine.dtype == torch.bfloat16
    assert maxdiff(mine, ref_bf16) <= 0.07
    assert float((mine.float() == ref_bf16.float()).float().mean()) >= 0.999


@pytest.mark.parametrize("direction", ["fwd", "rev"])
def test_propagation_passes(gold, box_run, direction):
    _, tr, _ = box_run
    mine = tr[direction]
    assert mine["frames"] == gold[f"{direction}_frames"].tolist()
    assert maxdiff(mine["low_res_logits"], gold[f"{direction}_low_res_logits"]) <= 5e-3
    assert maxdiff(mine["object_score_logits"], gold[f"{direction}_object_score_logits"]) <= 1e-3
    assert maxdiff(mine["obj_ptr"], gold[f"{direction}_obj_ptr"]) <= 1e-3
    _assert_memory(mine["maskmem_features"], gold[f"{direction}_maskmem_features_bf16"])


def test_memory_encoding_and_plan(gold, box_run):
    _, tr, _ = box_run
    calls = [{"frame": e["frame"], "is_mask_from_pts": e["binarized"]} for e in tr["memenc"]]
    assert calls == gold["memenc_calls"]
    assert maxdiff(tr["memenc"][0]["f32"][:, ::2], gold["key_maskmem_features_f32_c2"]) <= 1e-3
    track = tr["track"]
    assert [e["frame"] for e in track] == gold["tracked_frames"].tolist()
    assert ["rev" if e["reverse"] else "fwd" for e in track] == gold["tracked_direction"]
    mm = torch.cat([e["multimasks"] for e in track])
    assert maxdiff(mm[:, :, ::2, ::2], gold["tracked_multimask_logits_s2"]) <= 5e-3
    ious = torch.cat([e["ious"] for e in track])
    assert maxdiff(ious, gold["tracked_ious"]) <= 1e-3
    assert torch.equal(ious.argmax(1), gold["tracked_ious"].argmax(1))
    assert [e["memory_tokens"] for e in track] == gold["tracked_memory_tokens"].tolist()
    assert [e["ptr_tokens"] for e in track] == gold["tracked_memory_ptr_tokens"].tolist()
    for e, plan in zip(track, gold["tracked_memory_plan"]):
        assert e["frame"] == plan["frame"] and e["reverse"] == plan["reverse"]
        assert e["memories"] == [tuple(x) for x in plan["memories_tpos_frame"]]
        assert e["pointers"] == [tuple(x) for x in plan["ptrs_pos_frame"]]
        assert plan["ptr_pos_divisor"] == min(gold["num_frames"], 16) - 1


def test_memory_attention_example(gold, engine):
    ex = gold["memattn"]
    model = engine.model
    pos = model.image_encoder.neck.position_encoding(torch.zeros(1, 256, 32, 32))
    curr_pos = pos.flatten(2).permute(2, 0, 1)
    memory = torch.cat([ex["memory_spatial_bf16"].float(), ex["memory_ptr"]], dim=0)
    with torch.no_grad():
        out = model.memory_attention(ex["curr"], memory, curr_pos, ex["memory_pos"], ex["num_obj_ptr_tokens"])
    out = out.permute(1, 2, 0).reshape(1, 256, 32, 32)
    assert maxdiff(out[:, ::4], ex["output_c4"]) <= 1e-3


def test_mask_union_and_largest_component(gold, box_run, volume_u8):
    job, tr, updates = box_run
    z0, z1 = _z_range(gold)
    assert job.result.shape == volume_u8.shape and job.result.dtype == bool
    assert not job.result[:z0].any() and not job.result[z1 + 1:].any()  # nothing outside z_range
    union, final = unpack(gold, "mask_union"), unpack(gold, "mask_final")
    logits = {}
    for direction in ("fwd", "rev"):
        for f, lr in zip(tr[direction]["frames"], tr[direction]["low_res_logits"]):
            up = torch.nn.functional.interpolate(lr[None], size=(512, 512), mode="bilinear", align_corners=False)
            logits.setdefault(f, []).append(up[0, 0].numpy())
    near0 = np.stack([np.min(np.abs(np.stack(logits[f])), axis=0) for f in range(gold["num_frames"])])
    assert_masks_close(job.union[z0:z1 + 1], union, near0)
    assert_masks_close(job.result[z0:z1 + 1], final, near0)
    assert np.array_equal(largest_component(job.union), job.result)
    # per-slice updates: forward then backward, key first each time, volume indices
    key = int(gold["key_slice_index_volume"])
    assert [u.index for u in updates] == [key + f - gold["key_frame"] for f in
                                          gold["fwd_frames"].tolist() + gold["rev_frames"].tolist()]
    assert [u.direction for u in updates][:2] == ["key", "forward"] and updates[4].direction == "key"
    fg = {"fwd": gold["mask_fg_pixels_fwd"], "rev": gold["mask_fg_pixels_rev"]}
    for u in updates:
        f = u.index - z0
        ref = int(fg["rev" if u.direction == "backward" else "fwd"][f])
        assert abs(u.area - ref) <= 10 and u.present


def test_recist_mask_prompt_flow(gold, box_run, recist_run):
    job_box = box_run[0]
    job, tr = recist_run
    prompt = unpack(gold, "recist_mask_prompt")
    assert np.array_equal(job_box.key_mask, prompt)
    assert np.array_equal(tr["prompt"][0]["mask512"][0, 0].numpy().astype(bool), unpack(gold, "recist_mask_input_512"))
    for direction, key in (("fwd", "recist_fwd"), ("rev", "recist_rev")):
        mine = tr[direction]
        assert mine["frames"] == gold[f"{key}_frames"].tolist()
        assert maxdiff(mine["low_res_logits"], gold[f"{key}_low_res_logits"]) <= 5e-3
        assert maxdiff(mine["object_score_logits"], gold[f"{key}_object_score_logits"]) <= 1e-3
        assert maxdiff(mine["obj_ptr"], gold[f"{key}_obj_ptr"]) <= 1e-3
    assert float(tr["fwd"]["object_score_logits"][0]) == 10.0
    z0, z1 = _z_range(gold)
    assert_masks_close(job.result[z0:z1 + 1], unpack(gold, "recist_mask_final"))
    assert np.array_equal(job.result, job.union)  # no component step in the RECIST flow


def test_no_object_path(gold, engine, nobj_run):
    job, tr = nobj_run
    assert maxdiff(tr["prompt"][0]["head"].object_score, gold["nobj_key_object_score_logits"]) <= 1e-3
    no_ptr = engine.model.no_obj_ptr.detach()
    for direction in ("fwd", "rev"):
        mine = tr[direction]
        key = f"nobj_{direction}"
        assert mine["frames"] == gold[f"{key}_frames"].tolist()
        assert maxdiff(mine["object_score_logits"], gold[f"{key}_object_score_logits"]) <= 1e-3
        assert (mine["object_score_logits"] < 0).all()
        assert maxdiff(mine["obj_ptr"], gold[f"{key}_obj_ptr"]) <= 1e-3
        assert torch.equal(mine["obj_ptr"], no_ptr.expand_as(mine["obj_ptr"]))
        assert bool(gold[f"{key}_all_low_res_is_no_obj"])
        assert bool((mine["low_res_logits"] == -1024.0).all())
        _assert_memory(mine["maskmem_features"], gold[f"{key}_maskmem_features_bf16"])
    assert int(job.result.sum()) == int(gold["nobj_mask_final_fg_pixels"]) == 0


# ---------------------------------------------------------------- engine behaviour (cached features)

def test_cancel_keeps_finished_slices(gold, engine, volume_u8, box_run):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    job = engine.segmentation(volume_u8, int(gold["key_slice_index_volume"]), gold["box_xyxy_pixels"].numpy(),
                              z_range=_z_range(gold), cancel=cancel)
    got = [u.index for u in job]
    key = int(gold["key_slice_index_volume"])
    assert got == [key, key + 1] and job.cancelled
    assert set(np.nonzero(job.result.any(axis=(1, 2)))[0]) <= {key, key + 1}
    assert np.array_equal(job.result[key], box_run[0].union[key])


def test_other_slice_sizes_and_z_range(gold, engine, volume_u8):
    """Slices that are not 512x512 (resized for the model, results at slice size); only the
    z-range is handed in and written. A one-slice range: the key slice alone (no pointer
    distances to scale; no backward pass from frame 0, as officially)."""
    small = np.ascontiguousarray(volume_u8[31:35, 20::2, ::2])  # (4, 246, 256)
    box = (gold["box_xyxy_pixels"].numpy() - [0, 20, 0, 20]) / 2
    updates = []
    res = engine.segment_volume(small, 2, box, z_range=(2, 2), on_slice=updates.append)
    assert res.shape == small.shape and res.dtype == bool
    assert not res[[0, 1, 3]].any()
    assert [(u.index, u.direction) for u in updates] == [(2, "key")]
    assert updates[0].mask.shape == (246, 256) and updates[0].present and updates[0].area > 0
    assert res[2].any() and not (res[2] & ~updates[0].mask).any()  # largest component of the key mask
