"""UniverSeg's fast forward (the default) against the block-by-block reference evaluation.

``forward_fast`` rewrites the network exactly (level-1 support terms computed once per support
set and cached, only the support mean for the decoder's last block, strided max-pool); these
tests hold it to the golden logits and to ``forward_reference`` on real slices, and check that
its cache never serves terms of another support set or of other weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_gui.core.support_set import resize_images, resize_masks, window_unit
from medsam_gui.models import incontext as ic
from medsam_gui.models.universeg import _conv_sum, _maxpool2, _up2, universeg_v1

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return torch.load(golden_dir / "universeg_v1_seed1234_S8.pt", map_location="cpu", weights_only=True)


@pytest.fixture()
def model(golden):
    return universeg_v1(golden["state_dict"])


@pytest.fixture(scope="module")
def lung_slices(data_dir):
    """Real lung CT slices windowed 40/400 at 128 x 128 (float32 in [0, 1]) and tumour-or-bone
    masks (non-empty on every slice)."""
    import SimpleITK as sitk

    d = data_dir / "lung_ct"
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "lung1_image.nrrd"))).astype(np.float32)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "lung1_label.nrrd"))) > 0
    idx = np.linspace(0, img.shape[0] - 1, 14).round().astype(int)
    images = resize_images(window_unit(img[idx], (-160.0, 240.0)))
    masks = resize_masks(lab[idx] | (img[idx] > 300))
    return torch.from_numpy(images), torch.from_numpy(masks.astype(np.float32))


def test_fast_is_the_default_and_matches_the_golden_logits(golden, model):
    assert model.fast
    with torch.inference_mode():
        fast = model(golden["target_image"], golden["support_images"], golden["support_labels"])
        ref = model.forward_reference(golden["target_image"], golden["support_images"], golden["support_labels"])
    assert (fast - golden["expected_logits"]).abs().max().item() < 1e-4
    assert (fast - ref).abs().max().item() < 2e-5


def test_fast_equals_reference_on_real_slices_shared_and_per_target_supports(model, lung_slices):
    images, masks = lung_slices
    S = 10
    si, sl = images[:S, None][None], masks[:S, None][None]  # (1, S, 1, 128, 128)
    t = images[S:, None]  # 4 targets
    B = t.shape[0]
    with torch.inference_mode():
        ref = model.forward_reference(t, si.expand(B, -1, -1, -1, -1), sl.expand(B, -1, -1, -1, -1))
        fast = model.forward_fast(t, si.expand(B, -1, -1, -1, -1), sl.expand(B, -1, -1, -1, -1))
        again = model.forward_fast(t, si.expand(B, -1, -1, -1, -1), sl.expand(B, -1, -1, -1, -1))  # cached
        # a different support set per target (no sharing, no cache)
        perm = torch.stack([torch.roll(torch.arange(S), k) for k in range(B)])
        si_b, sl_b = si[0][perm], sl[0][perm]
        sl_b[1] = 1 - sl_b[1]
        ref_b = model.forward_reference(t, si_b, sl_b)
        fast_b = model.forward_fast(t, si_b, sl_b)
    assert ref.abs().max() > 0.1 and ref.std() > 0.01
    assert (fast - ref).abs().max().item() < 1e-4
    assert torch.equal(fast, again)
    assert (fast_b - ref_b).abs().max().item() < 1e-4
    assert (fast_b[1] - fast[1]).abs().max().item() > 1e-2  # the inverted support labels mattered
    # masks agree exactly (no logit sits within 1e-4 of the threshold here)
    assert torch.equal(fast > 0, ref > 0) and torch.equal(fast_b > 0, ref_b > 0)


def test_non_square_input_and_single_support(model, lung_slices):
    images, masks = lung_slices
    t = images[:2, None, :, 16:112]  # (2, 1, 128, 96)
    si = images[2:3, None, :, 16:112][None].expand(2, -1, -1, -1, -1)
    sl = masks[2:3, None, :, 16:112][None].expand(2, -1, -1, -1, -1)
    with torch.inference_mode():
        ref = model.forward_reference(t, si, sl)
        fast = model.forward_fast(t, si, sl)
    assert fast.shape == (2, 1, 128, 96)
    assert (fast - ref).abs().max().item() < 1e-4


def test_support_cache_follows_the_support_tensors_and_the_weights(golden, model, lung_slices):
    images, masks = lung_slices
    si, sl = images[:6, None][None].clone(), masks[:6, None][None].clone()
    t = images[8:9, None]
    with torch.inference_mode():
        first = model(t, si, sl)
    assert model.__dict__.get("_support_cache") is not None
    # the same tensors changed in place: the cache must not be used
    sl[0, 0] = 1 - sl[0, 0]
    with torch.inference_mode():
        changed = model(t, si, sl)
        expected = model.forward_reference(t, si, sl)
    assert (changed - first).abs().max().item() > 1e-3
    assert (changed - expected).abs().max().item() < 1e-4
    # new weights loaded into the same model: the cache must not be used
    sd = {k: v.clone() for k, v in golden["state_dict"].items()}
    sd["enc_blocks.0.cross.cross_conv.weight"] *= 0.5
    sd["enc_blocks.0.support.vmapped.conv.weight"] *= 1.5
    model.load_state_dict(sd)
    with torch.inference_mode():
        new_w = model(t, si, sl)
        expected = model.forward_reference(t, si, sl)
    assert (new_w - changed).abs().max().item() > 1e-3
    assert (new_w - expected).abs().max().item() < 1e-4
    model.clear_support_cache()
    assert model.__dict__.get("_support_cache") is None


def test_segment_rest_fast_equals_reference_and_frees_the_cache(model, data_dir):
    import SimpleITK as sitk

    d = data_dir / "totalsegmentator_example_ct"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "example_ct_sm.nii.gz"))).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "example_seg.nii.gz")))
    labels = np.where(seg == 5, 5, 0).astype(np.uint8)  # liver
    z = [i for i in range(ct.shape[0]) if (labels[i] == 5).any()]
    sparse = np.zeros_like(labels)
    for i in z[::4]:
        sparse[i] = labels[i]
    targets = [i for i in z if not sparse[i].any()][:4]
    out = {}
    for fast in (False, True):
        model.fast = fast
        out[fast] = ic.segment_rest(ct, sparse, 5, model=model, bounds=(-160.0, 240.0), support_size=8,
                                    targets=targets, device="cpu")
    assert out[True].indices == out[False].indices == targets and len(targets) == 4
    for i in out[True].indices:
        a = out[True].probabilities[i].astype(np.float32)
        b = out[False].probabilities[i].astype(np.float32)
        assert np.abs(a - b).max() < 2e-3  # float16 probabilities
    assert model.__dict__.get("_support_cache") is None


def test_strided_maxpool_equals_max_pool2d():
    x = torch.randn(3, 2, 5, 8, 6)
    ref = torch.nn.functional.max_pool2d(x.reshape(30, 8, 6), 2).reshape(3, 2, 5, 4, 3)
    assert torch.equal(_maxpool2(x), ref)


@pytest.mark.parametrize("shape", [(3, 4, 16, 16), (2, 3, 5, 8, 6), (1, 2, 1, 7)])
def test_matrix_upsampling_equals_interpolate_align_corners(shape):
    x = torch.randn(*shape)
    flat = x.reshape(-1, 1, *shape[-2:])
    ref = torch.nn.functional.interpolate(flat, scale_factor=2, mode="bilinear", align_corners=True)
    y = _up2(x)
    assert y.shape == (*shape[:-2], 2 * shape[-2], 2 * shape[-1])
    assert (y.reshape(ref.shape) - ref).abs().max().item() < 1e-5
    # inside inference mode too, and the cached matrices stay usable with autograd afterwards
    with torch.inference_mode():
        assert (_up2(x).reshape(ref.shape) - ref).abs().max().item() < 1e-5
    xg = x.clone().requires_grad_(True)
    _up2(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


def test_conv_of_parts_equals_conv_of_concatenation():
    parts = (torch.randn(2, 3, 9, 7), torch.randn(2, 5, 9, 7), torch.randn(2, 1, 9, 7))
    w, b = torch.randn(4, 9, 3, 3), torch.randn(4)
    ref = torch.nn.functional.conv2d(torch.cat(parts, dim=1), w, b, padding=1)
    assert (_conv_sum(parts, w, b) - ref).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="channels"):
        _conv_sum(parts[:2], w, b)
