"""The decoder warm-up: the slice on screen gets its box-independent decoder work done ahead of
the first box (``MedSAMEngine.prepare_decoder`` -> ``FastDecoder.prepare``), on the decoder
thread of :class:`~medsam_gui.gui.embedding_service.EmbeddingService`.

Random SAM ViT-B weights (the medsam_state_dict fixture, tests/gui_fixtures.py) and a random embedding put into the
service's cache under the slice's real key: no encoder pass is run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsam_gui.models.medsam import MedSAMEngine

DATA = Path(__file__).resolve().parent / "data"
LUNG = DATA / "lung_ct" / "lung1_image.nrrd"


@pytest.fixture(scope="module")
def engines(medsam_state_dict):
    torch.set_num_threads(2)
    sd = medsam_state_dict
    fp32 = MedSAMEngine(sd, device="cpu", precision="fp32")
    fast = MedSAMEngine(sd, device="cpu", precision="fast")
    return fp32, fast


def _embedding(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(1, 256, 64, 64, generator=g) * 0.5 + torch.randn(1, 256, 1, 1, generator=g) * 0.2
    return e.to(torch.float16)


def test_prepare_decoder_makes_the_first_box_a_cache_hit_with_the_same_mask(engines):
    fp32, fast = engines
    emb, box, hw = _embedding(3), (100.0, 120.0, 300.0, 330.0), (512, 512)
    fd = fast.fast_decoder
    fd.clear_cache()
    assert fast.prepare_decoder(emb) is True
    assert fast.prepare_decoder(emb) is False  # already prepared
    info = fd.cache_info()
    got = fast.decode_logits(emb, box, hw)
    after = fd.cache_info()
    assert after["hits"] == info["hits"] + 1 and after["misses"] == info["misses"]
    ref = fp32.decode_logits(emb.float(), box, hw)
    assert (got - ref).abs().max().item() < 1e-4
    # fp32 decodes with segment-anything's own decoder: nothing to prepare, nothing built
    assert fp32.prepare_decoder(emb) is False
    assert "_fast_decoder_obj" not in fp32.__dict__


@pytest.mark.gui
def test_service_prepares_the_focus_slice_and_its_first_box_hits_the_cache(engines, qtbot):
    from medsam_gui.gui.layers import display_orientation
    from medsam_gui.gui import embedding_service as es
    from medsam_gui.io import load_volume
    from medsam_gui.models.embedding_cache import EmbeddingCache

    fp32, fast = engines
    vol = load_volume(LUNG)
    orient = display_orientation(vol)
    sv = es.EmbeddingService(EmbeddingCache(disk_bytes=0), neighbours=0, background=False)
    try:
        sv.set_engine(fast)
        with qtbot.waitSignal(sv.ready, timeout=60_000):
            sv.configure(vol, orient, (-160.0, 240.0), 0, modality="CT")
        z, other = 20, 21
        emb = _embedding(5)
        sv.cache.put(sv.key(z), emb)
        sv.cache.put(sv.key(other), _embedding(6))
        fd = fast.fast_decoder
        fd.clear_cache()
        # slider moves over slice 21 (no time to prepare it) and stops on 20
        sv.set_focus(other)
        sv.set_focus(z)
        qtbot.waitUntil(lambda: sv.prepared[-1:] == [z], timeout=10_000)
        assert other not in sv.prepared  # coalesced: only the slice the user stopped on
        hits, misses = fd.cache_info()["hits"], fd.cache_info()["misses"]
        box = (200.0, 180.0, 320.0, 300.0)
        with qtbot.waitSignal(sv.mask_ready, timeout=30_000) as sig:
            sv.segment_async("box", z, box)
        token, index, got_box, mask, _ms, _gen = sig.args
        assert (token, index) == ("box", z)
        assert fd.cache_info()["hits"] == hits + 1 and fd.cache_info()["misses"] == misses
        hw = sv.slice_hw()
        expected = fp32.decode(sv.cached(z).float(), box, hw)
        assert mask.shape == hw and mask.sum() > 0
        # float rounding may flip pixels whose probability is within ~1e-7 of 0.5 (random weights)
        assert (mask != expected).sum() <= 20
        # the scan is configured again (e.g. reopened) with the slice's embedding in the cache:
        # the focus slice is prepared as soon as the service is ready, without a slider move
        fd.clear_cache()
        n = len(sv.prepared)
        sv.configure(load_volume(LUNG), orient, (-160.0, 240.0), 0, modality="CT")  # same voxels: same keys
        qtbot.waitUntil(lambda: len(sv.prepared) > n, timeout=60_000)
        assert sv.prepared[-1] == z
        # an fp32 engine: nothing is prepared
        sv.set_engine(fp32)
        qtbot.waitUntil(lambda: sv.is_ready, timeout=60_000)
        n = len(sv.prepared)
        sv.cache.put(sv.key(z), emb)
        sv.set_focus(z)
        qtbot.wait(400)
        assert len(sv.prepared) == n
    finally:
        sv.shutdown()


@pytest.mark.gui
def test_a_box_decoded_ahead_is_taken_on_release_and_not_decoded_again(engines, qtbot):
    from medsam_gui.gui import embedding_service as es
    from medsam_gui.gui.layers import display_orientation
    from medsam_gui.io import load_volume
    from medsam_gui.models.embedding_cache import EmbeddingCache

    _fp32, fast = engines
    vol = load_volume(LUNG)
    sv = es.EmbeddingService(EmbeddingCache(disk_bytes=0), neighbours=0, background=False)
    try:
        sv.set_engine(fast)
        with qtbot.waitSignal(sv.ready, timeout=60_000):
            sv.configure(vol, display_orientation(vol), (-160.0, 240.0), 0, modality="CT")
        z, unembedded = 20, 25
        sv.cache.put(sv.key(z), _embedding(7))
        fd = fast.fast_decoder
        fd.clear_cache()
        box = (190.0, 170.0, 330.0, 310.0)
        # the box being drawn, moved twice: the newest is decoded ahead
        sv.speculate(z, (190.0, 170.0, 300.0, 280.0))
        sv.speculate(z, box)
        qtbot.waitUntil(lambda: sv.decoded_ahead[-1:] == [(z, box)], timeout=30_000)
        # released there: the real box takes the mask decoded ahead, without decoding it again
        before = fd.cache_info()
        with qtbot.waitSignal(sv.mask_ready, timeout=30_000) as sig:
            gen = sv.segment_async(1, z, box)
        mask, decode_ms = sig.args[3], sig.args[4]
        assert fd.cache_info() == before and decode_ms == 0.0  # the decoder was not called
        assert sv.is_latest(1, gen)
        fd.clear_cache()
        np.testing.assert_array_equal(mask, fast.decode(sv.cached(z), box, sv.slice_hw()))
        assert mask.sum() > 0
        # another box, or another window (other embeddings): decoded
        for window in ((-160.0, 240.0), (-100.0, 200.0)):
            if window != (-160.0, 240.0):
                sv.configure(vol, display_orientation(vol), window, 0, modality="CT")
                qtbot.waitUntil(lambda: sv.is_ready, timeout=60_000)
                sv.cache.put(sv.key(z), _embedding(7))
            other = box if window != (-160.0, 240.0) else (190.0, 170.0, 300.0, 280.0)
            with qtbot.waitSignal(sv.mask_ready, timeout=30_000) as sig:
                sv.segment_async(1, z, other)
            assert sig.args[4] > 0.0
        # a slice without an embedding is not embedded for a box being drawn
        n = len(sv.decoded_ahead)
        sv.speculate(unembedded, box)
        qtbot.wait(500)
        assert len(sv.decoded_ahead) == n and not sv.has_embedding(unembedded)
    finally:
        sv.shutdown()
