"""Provenance of tests/golden/medsam2_seed2024_reduced.pt (run once; not a test).

    python3 tests/golden/medsam2_reduce.py /path/to/shared/golden/medsam2_seed2024.pt

Keeps only what tests/test_medsam2_golden.py compares, in its original values: small
tensors whole, large float maps subsampled by fixed strides (noted in the key name),
bfloat16-valued memory features stored as bfloat16 (lossless), masks bit-packed
(np.packbits of the C-order bool array). The input volume is not stored: the test rebuilds
it from tests/data/lung_ct and checks its sha256.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch


def packbits(t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(t.numpy().astype(bool).ravel()))


def bf16_exact(t: torch.Tensor) -> torch.Tensor:
    b = t.to(torch.bfloat16)
    assert torch.equal(b.float(), t.float()), "not bfloat16-valued"
    return b


def main(src: str) -> None:
    g = torch.load(src, weights_only=True)
    r: dict = {"format": "medsam2-golden-v1-reduced", "reduced_from": Path(src).name,
               "reduced_from_sha256": hashlib.sha256(Path(src).read_bytes()).hexdigest()}
    for k in ("source", "label_source", "label_id", "official_repo", "official_commit", "official_path",
              "torch_version", "threads", "n_params", "volume_shape_dhw", "key_slice_index_volume", "z_crop",
              "num_frames", "key_frame", "label_area_per_slice_crop", "window", "window_effective_minmax",
              "img_mean", "img_std", "image_size", "box_xyxy_pixels", "box_model_coords", "box_point_labels",
              "key_prompt_coords", "key_prompt_labels", "key_sparse_embeddings",
              "key_decoder_all_mask_logits", "key_decoder_all_ious", "key_decoder_stability_token0",
              "key_decoder_used_singlemask", "key_low_res_logits", "key_object_score_logits", "key_obj_ptr",
              "tracked_frames", "tracked_direction", "tracked_ious", "tracked_memory_tokens",
              "tracked_memory_ptr_tokens", "tracked_memory_plan", "memenc_calls", "mask_fg_pixels_fwd",
              "mask_fg_pixels_rev", "nobj_fwd_all_low_res_is_no_obj", "nobj_rev_all_low_res_is_no_obj",
              "nobj_key_object_score_logits", "nobj_mask_final_fg_pixels"):
        r[k] = g[k]
    w = g["weights"]
    r["weights"] = {"rule": w["rule"], "seed": w["seed"]}
    for k in ("state_keys", "state_shapes", "state_dtypes", "fingerprint_keys", "fingerprint_sums"):
        r[k] = g[k]
    r["weight_overrides"] = {k: {"added": v["added"], "added_for_nobj": v["added_for_nobj"],
                                 "rule_value": v["rule_value"]} for k, v in g["weight_overrides"].items()}
    r["volume_uint8_crop_sha256"] = hashlib.sha256(g["volume_uint8_crop"].numpy().tobytes()).hexdigest()
    r["input_key_s4"] = g["input_key"][:, ::4, ::4].clone()
    r["input_key_sum"] = g["input_key"].double().sum()
    fpn = g["enc_backbone_fpn"]
    r["enc_conv_s0_c4"] = fpn[0][:, ::4].clone()          # float16 as stored
    r["enc_conv_s1_c4"] = fpn[1][:, ::4].clone()
    r["enc_vision_features_c4"] = g["enc_vision_features"][:, ::4].clone()
    r["enc_vision_pos_enc_level2_c8"] = g["enc_vision_pos_enc_level2"][:, ::8].clone()
    r["key_video_res_logits_s2"] = g["key_video_res_logits"][::2, ::2].clone()
    r["key_maskmem_features_f32_c2"] = g["key_maskmem_features_f32"][:, ::2].clone()
    r["maskmem_pos_enc_c8"] = g["maskmem_pos_enc"][:, ::8].clone()
    r["tracked_multimask_logits_s2"] = g["tracked_multimask_logits"][:, :, ::2, ::2].clone()
    for p in ("fwd", "rev"):
        for k in ("frames", "low_res_logits", "object_score_logits", "obj_ptr"):
            r[f"{p}_{k}"] = g[f"{p}_{k}"]
        r[f"{p}_maskmem_features_bf16"] = bf16_exact(g[f"{p}_maskmem_features"])
    for p in ("recist_fwd", "recist_rev"):
        for k in ("frames", "low_res_logits", "object_score_logits", "obj_ptr"):
            r[f"{p}_{k}"] = g[f"{p}_{k}"]
    for p in ("nobj_fwd", "nobj_rev"):
        for k in ("frames", "object_score_logits", "obj_ptr"):
            r[f"{p}_{k}"] = g[f"{p}_{k}"]
        r[f"{p}_maskmem_features_bf16"] = bf16_exact(g[f"{p}_maskmem_features"])
    for k in ("mask_union", "mask_final", "recist_mask_prompt", "recist_mask_input_512", "recist_mask_final"):
        r[f"{k}_packbits"] = packbits(g[k])
        r[f"{k}_shape"] = list(g[k].shape)
    ex = g["memory_attention_example"]
    n_ptr = int(ex["num_obj_ptr_tokens"])
    r["memattn"] = {
        "frame": ex["frame"], "num_obj_ptr_tokens": n_ptr, "curr": ex["curr"],
        "memory_spatial_bf16": bf16_exact(ex["memory"][:-n_ptr]), "memory_ptr": ex["memory"][-n_ptr:].clone(),
        "memory_pos": ex["memory_pos"], "output_c4": ex["output_pix_feat_with_mem"][:, ::4].clone(),
    }
    dst = Path(__file__).with_name("medsam2_seed2024_reduced.pt")
    torch.save(r, dst)
    print(dst, dst.stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1])
