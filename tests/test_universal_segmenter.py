"""UniversalSegmenter wiring on the real CT with a stand-in network whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsam_gui.errors import MedsamGuiError
from medsam_gui.io.readers import load_volume
from medsam_gui.models.auto_model import AutoSegmentationCancelled
from medsam_gui.models.universal.catalogue import STRUCTURES
from medsam_gui.models.universal.postprocess import clear_below_pancreas, largest_components, to_scan_grid
from medsam_gui.models.universal.preprocess import preprocess
from medsam_gui.models.universal.segmenter import UniversalSegmenter

CT = Path(__file__).parent / "data" / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"
LEVEL = 0.45  # the stand-in's organs: every voxel brighter than this (in 0..1 units)


class BrightVoxels:
    """Stand-in network: logit (x - LEVEL) * 1000 for every class asked for; records them."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def class_logits(self, x: torch.Tensor, classes) -> torch.Tensor:
        self.asked.append(list(classes))
        return ((x - LEVEL) * 1000).repeat(1, len(self.asked[-1]), 1, 1, 1)


@pytest.fixture(scope="module")
def volume():
    return load_volume(CT)


@pytest.fixture(scope="module")
def bright(volume):
    prepared = preprocess(volume)
    return prepared, prepared.image > LEVEL


def test_requested_structures_only_on_the_exact_grid(volume, bright):
    prepared, hard = bright
    net = BrightVoxels()
    segmenter = UniversalSegmenter(net)
    assert (segmenter.name, segmenter.default_overlap, len(segmenter.structures)) == ("universal", 0.5, 32)
    seen = []
    liver, vein = STRUCTURES[5], STRUCTURES[9]
    masks = segmenter.segment(volume, [liver, vein], progress=lambda d, t: seen.append((d, t)))
    assert set(masks) == {"liver", "portal_and_splenic_vein"}
    assert net.asked[0] == [5, 9, 10]  # the vein rule reads the pancreas
    assert seen == [(i, 15) for i in range(1, 16)] and len(net.asked) == 15
    for mask in masks.values():
        assert mask.dtype == np.uint8 and mask.shape == volume.shape
    expected_liver = to_scan_grid(largest_components(hard), prepared)
    expected_vein = to_scan_grid(clear_below_pancreas(hard, largest_components(hard)), prepared)
    assert np.array_equal(masks["liver"], expected_liver)
    assert np.array_equal(masks["portal_and_splenic_vein"], expected_vein)
    assert 0 < masks["liver"].sum() < masks["portal_and_splenic_vein"].sum()


def test_lower_overlap_uses_fewer_windows(volume):
    seen = []
    UniversalSegmenter(BrightVoxels()).segment(volume, [STRUCTURES[0]], overlap=0.25,
                                               progress=lambda d, t: seen.append(t))
    assert seen[-1] == 12  # x starts 0, 72, 144, 145; y 0, 72, 95 (15 at the published 0.5)


def test_refusals_and_cancel(volume):
    net = BrightVoxels()
    segmenter = UniversalSegmenter(net)
    with pytest.raises(MedsamGuiError, match="CT only"):
        segmenter.segment(volume, [STRUCTURES[5]], modality="MR")
    with pytest.raises(MedsamGuiError, match="does not segment"):
        segmenter.segment(volume, ["liver"])
    with pytest.raises(AutoSegmentationCancelled):
        segmenter.segment(volume, [STRUCTURES[5]], stop=lambda: True)
    assert net.asked == []
