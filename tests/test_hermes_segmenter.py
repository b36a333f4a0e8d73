"""HermesSegmenter end to end on a real CT crop (64^3 windows to stay fast): masks on the scan's
own grid equal the network's thresholded output mapped back; prompts, modality, cancellation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hermes_helpers as H
from medsam_gui.core.volume import Volume
from medsam_gui.errors import MedsamGuiError
from medsam_gui.models.auto_model import AutoSegmentationCancelled
from medsam_gui.models.hermes.catalogue import STRUCTURES
from medsam_gui.models.hermes.preprocess import prepare, to_source_grid
from medsam_gui.models.hermes.segmenter import HermesSegmenter, modality_id

BY_KEY = {s.key: s for s in STRUCTURES}
CHOSEN = [BY_KEY["liver_bcv"], BY_KEY["right_kidney_amos"], BY_KEY["kidney_tumour_kits"]]


@pytest.fixture(scope="module")
def crop():
    """15 x 20 x 20 voxels of the demo CT (3 mm, direction diag(-1, -1, 1)) on their own grid."""
    ct, _ = H.prepared()
    start = (10, 40, 50)
    return Volume(ct.array[10:25, 40:60, 50:70].copy(), spacing=ct.spacing, origin=tuple(ct.index_to_physical(start)),
                  direction=ct.direction, modality="CT")


@pytest.fixture(scope="module")
def segmenter():
    return HermesSegmenter(H.network(), device="cpu", window=64)


def test_masks_are_the_thresholded_network_output_on_the_source_grid(crop, segmenter):
    seen, calls = [], []
    hook = segmenter.network.register_forward_hook(lambda m, args, out: calls.append((args, out[0])))
    try:
        masks = segmenter.segment(crop, CHOSEN, progress=lambda d, t: seen.append((d, t)))
    finally:
        hook.remove()
    assert seen == [(1, 1)] and len(calls) == 1
    (x, tgt, mod), logits = calls[0]
    assert tgt.tolist() == [[24, 5, 3, -1]] and mod.tolist() == [[0]]
    assert list(masks) == [s.key for s in CHOSEN]
    prep = prepare(crop, "CT", 64)
    assert prep.volume.shape == (64, 64, 64)
    assert torch.equal(x[0, 0], torch.from_numpy(prep.volume))
    inner = tuple(slice(b, n - a) for (b, a), n in zip(prep.pad, prep.volume.shape))
    for c, s in enumerate(CHOSEN):
        expected = to_source_grid((logits[0, c].numpy() >= 0)[inner], prep, crop)
        assert masks[s.key].shape == crop.shape and masks[s.key].dtype == np.uint8
        assert np.array_equal(masks[s.key], expected)
    assert 0 < masks["liver_bcv"].mean() < 1


def test_modality_prompts_and_choices(crop, segmenter):
    assert [modality_id(m) for m in ("CT", "pet", "T1", "T2", "cine", "MR")] == [0, 1, 2, 3, 4, -1]
    with pytest.raises(MedsamGuiError, match="modality 'US'"):
        segmenter.segment(crop, CHOSEN, modality="US")
    unknown = Volume(crop.array, spacing=crop.spacing, origin=crop.origin, direction=crop.direction)
    with pytest.raises(MedsamGuiError, match="modality is unknown"):
        segmenter.segment(unknown, [BY_KEY["liver_amos"]])
    assert segmenter._modality(unknown, [BY_KEY["lesion_autopet"]], None) == "PET"


def test_stop_cancels_before_any_window(crop, segmenter):
    with pytest.raises(AutoSegmentationCancelled):
        segmenter.segment(crop, CHOSEN, stop=lambda: True)


def test_bad_requests_are_user_errors(crop, segmenter):
    with pytest.raises(MedsamGuiError, match="at least one"):
        segmenter.segment(crop, [])
    with pytest.raises(MedsamGuiError, match="twice"):
        segmenter.segment(crop, [CHOSEN[0], CHOSEN[0]])
    with pytest.raises(MedsamGuiError, match="overlap"):
        segmenter.segment(crop, CHOSEN, overlap=1.0)
