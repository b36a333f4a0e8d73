"""Official organ post-processing and the way back to the scan's grid (golden masks as input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam_gui.io.readers import load_volume
from medsam_gui.models.universal.postprocess import needed_classes, postprocess, to_scan_grid
from medsam_gui.models.universal.preprocess import preprocess
from universal_helpers import golden, unpack

CT = Path(__file__).parent / "data" / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"
RIGHT_LUNG, LEFT_LUNG = 15, 16


@pytest.fixture(scope="module")
def g():
    return golden()


@pytest.fixture(scope="module")
def masks(g):
    """Class index -> (raw mask, official post-processed mask, official mask on the scan grid)."""
    classes = [int(c) for c in g["post_classes"]]
    hard = unpack(g["hard_packed"], g["post_shape"])
    post = hard ^ unpack(g["post_xor_hard_packed"], g["post_shape"])
    orig = unpack(g["orig_packed"], g["orig_masks_shape"])
    return {c: (hard[i], post[i], orig[i]) for i, c in enumerate(classes)}


@pytest.fixture(scope="module")
def ours(masks):
    return postprocess({c: m[0] for c, m in masks.items()}, list(masks))


def test_inputs_are_the_official_raw_masks(g, masks):
    for c, (hard, _, _) in masks.items():
        assert hard.sum() == g["sw_hard_counts"][c]


def test_rules_read_the_organs_they_need():
    assert needed_classes([9]) == [9, 10]
    assert needed_classes([16]) == [15, 16]
    assert needed_classes([25, 0]) == [0, 1, 2, 25]
    assert needed_classes([26, 31]) == [5, 26, 31]


def test_post_processing_matches_official(g, masks, ours):
    changed = 0
    for c, (hard, post, _) in masks.items():
        limit = 0.005 * post.size
        if c in (RIGHT_LUNG, LEFT_LUNG):  # the two lungs may swap components
            other = RIGHT_LUNG + LEFT_LUNG - c
            diff = min((ours[c] != post).sum(), (ours[other] != post).sum())
        else:
            diff = (ours[c] != post).sum()
            assert ours[c].sum() == pytest.approx(g["sw_post_counts"][c], abs=limit)
        assert diff <= limit, c
        changed += (ours[c] != hard).sum()
    assert changed > 100_000  # the rules did remove voxels (golden: 30,832 for the right kidney alone)


def test_back_on_the_scan_grid_as_official(g, masks, ours):
    volume = load_volume(CT)
    prepared = preprocess(volume)
    for c, (_, post, orig) in masks.items():
        official = to_scan_grid(post, prepared)
        assert official.shape == volume.shape and official.dtype == np.uint8
        assert np.array_equal(official.transpose(2, 1, 0).astype(bool), orig), c
        if c not in (RIGHT_LUNG, LEFT_LUNG):
            mine = to_scan_grid(ours[c], prepared).transpose(2, 1, 0).astype(bool)
            assert (mine != orig).sum() <= 0.005 * orig.size
