"""Encoder stop points of both box engines, on both encoder paths: ``stop()`` is polled before
each encoder block; once it says True the pass ends with EncoderInterrupted at that block, and
the engine (locks, stop state) serves the next pass. Real encoders with random weights; the
MedSAM ViT-B passes are cut after one or two blocks (a whole pass costs seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_gui.models.engine import EncoderInterrupted
from medsam_gui.models.litemedsam import LiteMedSAMEngine
from medsam_gui.models.medsam import MedSAMEngine

import litemedsam_helpers as H
import medsam_fixtures

torch.set_num_threads(2)


class Stop:
    """``stop()`` that counts its polls and turns True at poll ``at`` (never when None)."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.polls = 0

    def __call__(self) -> bool:
        self.polls += 1
        return self.at is not None and self.polls >= self.at


@pytest.fixture(scope="module")
def lite_slice():
    return np.ascontiguousarray(H.golden()["c0_slice_uint8"][100:196, 120:240])


@pytest.mark.parametrize("precision", ["fp32", "fast"])
def test_litemedsam_pass_stops_after_the_first_block_and_the_next_pass_runs(lite_slice, precision):
    eng = LiteMedSAMEngine(H.golden_state_dict(), device="cpu", precision=precision)
    assert eng.fast == (precision == "fast")
    stop = Stop(at=2)  # True after the first block (2 MBConv + 10 TinyViT blocks in all)
    with pytest.raises(EncoderInterrupted):
        eng.embed([lite_slice], stop=stop)
    assert stop.polls == 2 and eng._stop is None and not eng._enc_lock.locked()
    full = Stop(at=None)
    got = eng.embed([lite_slice], stop=full)
    assert full.polls == 12  # every block polled once, on either path
    assert got.shape == (1, 256, 64, 64) and bool(torch.isfinite(got).all()) and got.abs().sum() > 0
    with pytest.raises(EncoderInterrupted):  # embed_slice takes stop too
        eng.embed_slice(lite_slice, stop=Stop(at=1))


def test_medsam_reference_and_fast_passes_stop_between_blocks():
    slice_ = np.ascontiguousarray(medsam_fixtures.hippocampus_golden()["volume_uint8_slice"])
    ref = medsam_fixtures.engine()
    fast = MedSAMEngine(medsam_fixtures.vit_b_state_dict(), device="cpu", precision="fast")
    for eng in (ref, fast):
        stop = Stop(at=2)  # True after the first of 12 blocks
        with pytest.raises(EncoderInterrupted):
            eng.embed([slice_], stop=stop)
        assert stop.polls == 2 and eng._stop is None and not eng._enc_lock.locked()
        again = Stop(at=3)  # the next pass takes the lock and polls from its first block again
        with pytest.raises(EncoderInterrupted):
            eng.embed_slice(slice_, stop=again)
        assert again.polls == 3
