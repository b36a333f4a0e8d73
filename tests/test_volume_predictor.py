"""VolumePredictor: one engine on one real scan (Qt-free), with a stand-in engine and, once,
the real random-weight MedSAM engine (its memoised embedding: no extra encoder pass)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from box_engine import BrightBoxEngine

from medsam_gui.core.intensity import volume_to_uint8, window_bounds
from medsam_gui.core.orientation import DisplayOrientation
from medsam_gui.io import load_volume
from medsam_gui.models.embedding_cache import EmbeddingCache
from medsam_gui.models.engine import BoxPromptEngine
from medsam_gui.models.volume_predictor import EmbeddingCancelled, PredictorListener, VolumePredictor

import medsam_fixtures

CT_WINDOW = window_bounds(40, 400)
TUMOUR_BOX = (206, 347, 229, 368)  # x0, y0, x1, y1 on slice 33 of lung1


@pytest.fixture(scope="module")
def lung(data_dir):
    return load_volume(data_dir / "lung_ct" / "lung1_image.nrrd")


@pytest.fixture
def predictor():
    made = []

    def make(engine=None, **kw):
        p = VolumePredictor(engine or BrightBoxEngine(), EmbeddingCache(disk_bytes=0), **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.shutdown()


def _medsam_threads(before=frozenset()) -> list[str]:
    """Names of the medsam threads alive now that were not in ``before``."""
    return [t.name for t in threading.enumerate() if t.name.startswith("medsam-") and t not in before]


def test_engines_follow_the_protocol():
    assert isinstance(BrightBoxEngine(), BoxPromptEngine)
    eng = medsam_fixtures.engine()
    assert isinstance(eng, BoxPromptEngine)
    assert (eng.name, eng.input_size, eng.embedding_shape) == ("medsam", 1024, (256, 64, 64))
    keys = {eng.cache_key("fp", 0, 3, CT_WINDOW), BrightBoxEngine().cache_key("fp", 0, 3, CT_WINDOW),
            eng.cache_key("fp", 0, 4, CT_WINDOW), eng.cache_key("fp", 0, 3, (0, 1))}
    assert len(keys) == 4  # engine, slice and window all enter the key


def test_segment_box_embeds_the_windowed_slice_once(predictor, lung):
    eng = BrightBoxEngine(threshold=100)
    p = predictor(eng, background=False)
    p.set_volume(lung, bounds=CT_WINDOW)
    assert p.is_ready and p.slice_hw() == (512, 512) and p.n_slices == 48
    mask = p.segment_box(33, TUMOUR_BOX)
    u8 = volume_to_uint8(lung.array, "CT", CT_WINDOW)
    np.testing.assert_array_equal(eng.embedded[0], u8[33])
    x0, y0, x1, y1 = TUMOUR_BOX
    expected = np.zeros((512, 512), bool)
    expected[y0:y1 + 1, x0:x1 + 1] = u8[33, y0:y1 + 1, x0:x1 + 1] >= 100
    np.testing.assert_array_equal(mask, expected)
    assert 100 < mask.sum() < expected.size
    p.segment_box(33, (200, 340, 235, 375))  # a second box on the slice reuses its embedding
    assert len(eng.embedded) == 1
    assert eng.threads == {"medsam-embedding-scheduler"}  # never on the caller's thread


def test_recist_line_becomes_the_square_box(predictor, lung):
    eng = BrightBoxEngine(threshold=100)
    p = predictor(eng, background=False)
    p.set_volume(lung, bounds=CT_WINDOW)
    mask, box = p.segment_recist(33, (207, 357), (228, 357), margin=5)
    x0, y0, x1, y1 = box
    assert x1 - x0 == pytest.approx(y1 - y0) and x0 < 207 and x1 > 228
    assert eng.decoded[-1] == tuple(int(round(v)) for v in box) and mask.any()


def test_display_order_slices(predictor, data_dir):
    vol = load_volume(data_dir / "msd_hippocampus" / "hippocampus_003_image.nii.gz")
    orient = DisplayOrientation.from_direction(vol.direction)
    eng = BrightBoxEngine()
    p = predictor(eng, background=False)
    p.set_volume(vol, bounds=(0.0, 200.0), orientation=orient, axis=1, modality="MR")
    disp = orient.to_display(volume_to_uint8(vol.array, "MR", (0.0, 200.0)))
    p.embedding(5)
    np.testing.assert_array_equal(eng.embedded[0], np.take(disp, 5, axis=1))
    assert p.slice_hw() == (disp.shape[0], disp.shape[2])


def test_propagation_stays_in_limits_and_embeds_ahead(predictor, lung):
    eng = BrightBoxEngine(threshold=100)
    p = predictor(eng, background=False)
    p.set_volume(lung, bounds=CT_WINDOW)
    results = list(p.propagate({33: TUMOUR_BOX}, limits=(32, 40)))
    idx = sorted(r.index for r in results)
    assert idx[0] >= 32 and idx[-1] <= 40 and 33 in idx
    assert all(r.mask.shape == (512, 512) for r in results)
    embedded = {int(np.flatnonzero([np.array_equal(e, s) for s in
                                    volume_to_uint8(lung.array, "CT", CT_WINDOW)])[0]) for e in eng.embedded}
    assert embedded <= set(range(30, 43))  # only slices the propagation reached or looked ahead to


def test_cancel_stops_propagation_and_waits(predictor, lung):
    p = predictor(BrightBoxEngine(threshold=100), background=False)
    p.set_volume(lung, bounds=CT_WINDOW)
    stop = threading.Event()
    gen = p.propagate({33: TUMOUR_BOX}, cancel=stop.is_set)
    first = next(gen)
    stop.set()
    assert first.index == 33 and list(gen) == []


def test_waiting_for_an_embedding_can_be_cancelled(predictor, lung):
    release = threading.Event()

    class SlowEngine(BrightBoxEngine):
        def embed(self, slices, stop=None):
            release.wait(30)
            return super().embed(slices)

    p = predictor(SlowEngine(), background=False)
    p.set_volume(lung, bounds=CT_WINDOW)
    t0 = time.monotonic()
    with pytest.raises(EmbeddingCancelled):
        p.embedding(7, cancel=lambda: time.monotonic() - t0 > 0.3)
    release.set()
    assert p.embedding(7).shape == (1, 512, 512)


def test_async_boxes_reach_the_listener(predictor, lung):
    got, waited = [], []
    done = threading.Event()

    class Listener(PredictorListener):
        def waiting(self, token, index):
            waited.append(index)

        def mask_ready(self, token, index, box, mask, decode_ms, gen):
            got.append((token, index, box, int(mask.sum())))
            done.set()

    p = predictor(BrightBoxEngine(threshold=100), background=False, listener=Listener())
    p.set_volume(lung, bounds=CT_WINDOW)
    gen = p.segment_async("a", 33, TUMOUR_BOX)
    assert done.wait(30)
    assert waited == [33] and got[0][:3] == ("a", 33, tuple(float(v) for v in TUMOUR_BOX)) and got[0][3] > 100
    assert p.is_latest("a", gen)


def test_background_prefetch_goes_outward_from_the_focus(predictor, lung):
    eng = BrightBoxEngine()
    p = predictor(eng, neighbours=2)
    p.set_focus(20)
    p.set_volume(lung, bounds=CT_WINDOW)
    deadline = time.monotonic() + 30
    while len(eng.embedded) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    u8 = volume_to_uint8(lung.array, "CT", CT_WINDOW)
    order = [next(i for i in range(48) if np.array_equal(e, u8[i])) for e in eng.embedded]
    assert order == [20, 21, 19, 22, 18]


def test_shutdown_joins_every_thread(predictor, lung):
    before = frozenset(threading.enumerate())  # e.g. a finished GUI test's measuring thread
    p = predictor(BrightBoxEngine(), neighbours=4)
    p.set_volume(lung, bounds=CT_WINDOW, wait=False)
    p.set_focus(10)
    p.segment_async("t", 10, TUMOUR_BOX)
    p.shutdown()
    assert _medsam_threads(before) == []
    p.warm_decoder(3)  # nothing starts again once shut down
    assert _medsam_threads(before) == []


def test_real_medsam_decodes_like_the_engine(predictor, data_dir, monkeypatch):
    """fp32: the predictor's mask is the engine's reference decode of the same embedding."""
    eng = medsam_fixtures.engine()
    g = medsam_fixtures.hippocampus_golden()
    memo = medsam_fixtures.hippocampus_embedding()
    seen = []

    def embed(slices, stop=None):
        seen.append(np.array(slices[0]))
        return memo

    monkeypatch.setattr(eng, "embed", embed)
    vol = load_volume(data_dir / "msd_hippocampus" / "hippocampus_003_image.nii.gz")
    p = predictor(eng, background=False)
    p.set_volume(vol, bounds=tuple(g["window_bounds"]), modality="MR")
    z = int(g["slice_index"])
    mask = p.segment_box(z, g["box_xyxy"])
    np.testing.assert_array_equal(seen[0], g["volume_uint8_slice"])
    np.testing.assert_array_equal(mask, eng.decode(memo, g["box_xyxy"], mask.shape))
    assert p.cached(z).dtype == torch.float32  # the float32 embedding, not the cache's float16


@pytest.mark.slow
def test_closing_abandons_an_encoder_pass_and_the_engine_still_works(predictor, lung):
    """The app closes during a (real, random-weight) ViT-B encoder pass: the pass stops at its
    next block, every thread ends within seconds, and the next pass on the engine runs."""
    eng = medsam_fixtures.engine()
    started = threading.Event()

    class Listener(PredictorListener):
        def embedding_started(self, index):
            started.set()

    before = frozenset(threading.enumerate())
    p = predictor(eng, background=False, listener=Listener())
    p.set_volume(lung, bounds=CT_WINDOW)
    p.request(20)
    assert started.wait(30)
    time.sleep(0.5)  # inside the encoder now
    t0 = time.monotonic()
    p.shutdown()
    assert time.monotonic() - t0 < 8 and _medsam_threads(before) == []
    assert eng.embed([np.zeros((8, 8), np.uint8)]).shape == (1, 256, 64, 64)
