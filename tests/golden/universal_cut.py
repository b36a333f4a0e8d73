"""Cut ../shared/golden/universal_seed2024.pt (35.5 MB) into universal_seed2024_cut.npz.

Usage (from the repository root): python tests/golden/universal_cut.py GOLDEN.pt HARD_MASKS.npy

HARD_MASKS.npy: the (32, X, Y, Z) bool masks (sigmoid > 0.5, before post-processing) of the
golden ``pre_image``: our UniversalModel with the golden weights (tests/universal_helpers.py,
organ_embedding from the golden file) run on it window by window at ``sw_window_starts`` after
zero padding by ``sw_pad``, blended with medsam_gui.models.universal.sliding_window's
importance_map in float32 (15 windows, about 3 minutes on 2 cores). The golden file stores only
their counts (``sw_hard_counts``: all 32 equal) and the logits at 8192 voxels
(``sw_logits_at_samples``: max difference 9.5e-7), checked before cutting. Every other array is
copied from the golden file (see tests/golden/universal_README.md).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

POST_CLASSES = (1, 2, 5, 9, 10, 15, 16, 25, 26)  # kidneys, liver, PV, pancreas, lungs, tumours


def main(golden_path: str, hard_path: str | None = None) -> None:
    g = torch.load(golden_path, weights_only=True)
    a = {k: g[k].numpy() for k in (
        "fingerprint_sums", "orig_affine", "orig_shape", "spacing_affine", "spacing_shape", "pre_affine",
        "pre_crop_start", "pre_crop_end", "net_window_start", "sw_pad", "net_logits_idx", "net_mask_counts",
        "sw_importance_line", "sw_window_starts", "sw_padded_size", "probe_stats", "probe_at_samples",
        "sw_hard_counts", "sw_post_counts", "orig_mask_counts")}
    for k in ("rule", "source", "source_sha256"):
        a[k] = np.str_(g[k])
    a["seed"] = np.int64(g["seed"])
    a["organ_names"] = np.str_("\n".join(g["organ_names"]))
    a["state_keys"] = np.str_("\n".join(g["state_keys"]))
    a["fingerprint_keys"] = np.str_("\n".join(g["fingerprint_keys"]))
    emb = g["organ_embedding"]
    assert torch.equal(emb.half().float(), emb)
    a["organ_embedding_f16"] = emb.half().numpy()
    z0, z1 = int(g["sw_pad"][2, 0]), 96 - int(g["sw_pad"][2, 1])
    a["net_input_real"] = g["net_input"][0, 0, :, :, z0:z1].numpy()  # the rest is the zero padding
    a["net_logits_3_s2"] = g["net_logits_3"][0, ::2, ::2, ::2].numpy()
    shape = g["net_masks_shape"].tolist()
    masks = np.unpackbits(g["net_masks_packed"].numpy(), count=int(np.prod(shape))).reshape(shape)
    a["net_masks_s2_packed"] = np.packbits(masks[:, ::2, ::2, ::2].ravel())
    a["pre_image_s3"] = g["pre_image"][::3, ::3, ::3].numpy()
    a["pre_image_sum"] = np.float64(g["pre_image"].double().sum())
    a["sw_sample_idx"] = g["sw_sample_idx"].numpy().astype(np.int16)
    if hard_path is not None:
        a.update(post_arrays(g, hard_path))
    np.savez_compressed("tests/golden/universal_seed2024_cut.npz", **a)


def post_arrays(g: dict, hard_path: str) -> dict:
    """Hard masks (input of the post-processing), golden post-processed and original-grid masks."""
    a = {"post_classes": np.asarray(POST_CLASSES)}
    shape = g["sw_masks_shape"].tolist()
    post = np.unpackbits(g["sw_masks_post_packed"].numpy(), count=int(np.prod(shape))).reshape(shape)
    hard = np.load(hard_path)
    assert hard.shape == tuple(shape)
    assert np.array_equal(hard.sum((1, 2, 3)), g["sw_hard_counts"].numpy())
    a["hard_packed"] = np.packbits(hard[list(POST_CLASSES)].ravel())
    # stored as what the post-processing changed: compresses 3x better than the masks
    a["post_xor_hard_packed"] = np.packbits((post[list(POST_CLASSES)] != hard[list(POST_CLASSES)]).ravel())
    a["post_shape"] = np.asarray([len(POST_CLASSES)] + shape[1:])
    shape = g["orig_masks_shape"].tolist()
    orig = np.unpackbits(g["orig_masks_packed"].numpy(), count=int(np.prod(shape))).reshape(shape)
    a["orig_packed"] = np.packbits(orig[list(POST_CLASSES)].ravel())
    a["orig_masks_shape"] = np.asarray([len(POST_CLASSES)] + shape[1:])
    return a


if __name__ == "__main__":
    main(*sys.argv[1:3])
