"""LiteMedSAMEngine plumbing without encoder passes: batching, out-of-memory fallback (simulated
on CPU tensors), decoder fallback, the VolumePredictor contract (stand-in encoders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_gui.models.litemedsam import LiteMedSAMEngine
from medsam_gui.models.oom import DeviceMemoryError

import litemedsam_helpers as H

torch.set_num_threads(2)
CUDA = torch.device("cuda")


def cuda_oom():
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class StandIn:
    """A cheap encoder: (B, C, 256, 256) -> (B, 256, 64, 64) from 4x4 means of channel 0; can
    fail (out of memory) above a batch size. Records the batch sizes it saw."""

    def __init__(self, fail_above: int | None = None) -> None:
        g = torch.Generator().manual_seed(1)
        self.w = torch.randn(1, 256, 1, 1, generator=g)
        self.fail_above = fail_above
        self.batches: list[int] = []

    def __call__(self, x):
        self.batches.append(int(x.shape[0]))
        if self.fail_above is not None and x.shape[0] > self.fail_above:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB (out of memory)")
        return torch.nn.functional.avg_pool2d(x[:, :1].float(), 4) * self.w


@pytest.fixture(scope="module")
def slices():
    img = H.golden()["c0_slice_uint8"]
    return [np.ascontiguousarray(img[r:r + 80, c:c + 120]) for r, c in ((100, 100), (200, 150), (250, 300),
                                                                          (150, 250), (300, 200))]


@pytest.fixture
def engine():
    eng = LiteMedSAMEngine(H.golden_state_dict(), device="cpu", precision="fast")
    eng._fast_enc = StandIn()
    return eng


def test_batches_equal_single_slices(engine, slices):
    one = torch.cat([engine.embed([s]) for s in slices])
    engine._fast_enc = enc = StandIn()
    batched = engine.embed(slices, batch_size=4)
    assert enc.batches == [4, 1] and batched.shape == (5, 256, 64, 64)
    torch.testing.assert_close(batched, one, rtol=0, atol=0)
    assert [i for i, _ in engine.iter_embed_batch(slices, batch_size=2)] == [0, 2, 4]
    assert engine.embed([]).shape == (0, 256, 64, 64)


def test_out_of_memory_halves_batches_then_gives_up_on_cpu(engine, slices):
    expected = engine.embed(slices, batch_size=4)
    notices = []
    engine.on_notice = notices.append
    engine._fast_enc = enc = StandIn(fail_above=1)
    got = engine.embed(slices, batch_size=4)
    assert enc.batches[:3] == [4, 2, 1]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert notices == ["The CPU ran out of memory: continuing with batches of 2",
                       "The CPU ran out of memory: continuing with batches of 1"]
    engine._fast_enc = StandIn(fail_above=0)
    with pytest.raises(DeviceMemoryError):
        engine.embed_slice(slices[0])


def test_gpu_out_of_memory_moves_to_cpu_and_re_resolves_precision(engine, slices, monkeypatch):
    monkeypatch.setattr("medsam_gui.models.litemedsam.cpu_has_native_bf16", lambda: False)
    expected = engine.embed(slices, batch_size=1)
    engine.device, engine.requested_precision, engine.precision = CUDA, "auto", "bf16"
    real = engine._embed_range
    tried = []

    def embed_range(part, size, stop=None):
        tried.append((engine.device.type, len(part), size))
        if engine.device.type != "cpu":
            raise cuda_oom()
        return real(part, size, stop)

    monkeypatch.setattr(engine, "_embed_range", embed_range)
    stand = engine._fast_enc
    monkeypatch.setattr(engine, "_fast_encoder", lambda: stand)
    notices = []
    engine.on_notice = notices.append
    engine.model.to = lambda dev: engine.model  # the tensors stay on the CPU (no GPU here)
    got = list(engine.iter_embed_batch(slices))
    assert [t[2] for t in tried[:5]] == [16, 8, 4, 2, 1] and all(t[0] == "cuda" for t in tried[:5])
    assert tried[5:] == [("cpu", 2, 2), ("cpu", 2, 2), ("cpu", 1, 2)]  # the CPU's batch size for "fast"
    assert [i for i, _ in got] == [0, 2, 4]
    torch.testing.assert_close(torch.cat([e for _, e in got]), expected, rtol=0, atol=0)
    assert notices[-1] == "The GPU ran out of memory: continuing on the CPU (slower)" and len(notices) == 5
    assert engine.device.type == "cpu" and engine.precision == "fast" and engine._fast_enc is None


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_the_cpu_follows_its_bf16_units(native, monkeypatch):
    monkeypatch.setattr("medsam_gui.models.litemedsam.cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert LiteMedSAMEngine._resolve("auto", cpu) == ("bf16" if native else "fast")
    assert [LiteMedSAMEngine._resolve(p, cpu) for p in ("fast", "fp32", "int8", "bf16")] == [
        "fast", "fp32", "fast", "bf16"]
    assert LiteMedSAMEngine._resolve("auto", CUDA) == "bf16"


def test_decoder_falls_back_to_cpu_and_decodes(engine, slices, monkeypatch):
    emb = engine.embed([slices[0]])
    fast_logits = engine.decode_logits(emb, (20, 10, 70, 60), slices[0].shape)  # FastDecoder ("fast")
    engine.precision = engine.requested_precision = "fp32"  # segment-anything's decoder
    torch.testing.assert_close(engine.decode_logits(emb, (20, 10, 70, 60), slices[0].shape), fast_logits,
                               rtol=0, atol=1e-4)
    box = (20, 10, 70, 60)
    hw = slices[0].shape
    mask = engine.decode(emb, box, hw)
    logits = engine.decode_logits(emb, box, hw)
    assert mask.shape == hw and mask.dtype == bool and logits.shape == (1, 1, 256, 256)
    engine.device = CUDA
    engine.model.to = lambda dev: engine.model
    notices = []
    engine.on_notice = notices.append
    real = engine._decode_once

    def decode_once(e, b):
        if engine.device.type != "cpu":
            raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return real(e, b)

    monkeypatch.setattr(engine, "_decode_once", decode_once)
    assert np.array_equal(engine.decode(emb, box, hw), mask)
    assert notices == ["The GPU ran out of memory: continuing on the CPU (slower)"]
    engine.device = CUDA
    monkeypatch.setattr(engine, "_decode_once", lambda e, b: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine.decode(emb, box, hw)


def test_box_and_post_processing_follow_the_reference(engine):
    from medsam_gui.models import litemedsam_transforms as T

    assert T.box_to_256((7, 30, 26, 44), (52, 34)).tolist() == [34.0, 147.0, 128.0, 216.0]
    assert T.box_to_256((511, 0, 511.9, 3), (512, 512)).tolist() == [255.0, 0.0, 255.0, 1.0]
    assert T.resized_hw((101, 122)) == (212, 256) and T.resized_hw((52, 34)) == (256, 167)
    # logits positive only in the padded columns beyond the resized width leave the mask empty
    lg = torch.full((1, 1, 256, 256), -5.0)
    lg[..., 167:] = 5.0
    assert not T.postprocess_logits(lg, (52, 34)).any()
    lg[..., :10, :10] = 5.0
    m = T.postprocess_logits(lg, (52, 34))
    assert m[:2, :1].all() and not m[10:].any()


def test_volume_predictor_serves_litemedsam(engine, slices):
    from medsam_gui.core.volume import Volume
    from medsam_gui.models.embedding_cache import EmbeddingCache
    from medsam_gui.models.volume_predictor import VolumePredictor

    arr = np.stack([s.astype(np.int16) * 2 - 100 for s in slices[:3]])
    vol = Volume(arr, spacing=(1.0, 1.0, 1.0), modality="CT")
    with VolumePredictor(engine, EmbeddingCache(disk_bytes=0), background=False) as p:
        p.set_volume(vol, bounds=(-160.0, 240.0), modality="CT", axis=0, wait=True)
        m = p.segment_box(1, (20, 10, 70, 60))
    assert m.shape == slices[0].shape and m.dtype == bool


def test_box_decodes_while_the_encoder_runs(engine, slices):
    """The encoder pass serves a waiting box at its pause points (on the one CPU thread): the
    box is answered while the slice is still encoding."""
    import threading
    import time

    from medsam_gui.models.cpu_worker import cpu_worker

    emb = engine.embed([slices[0]])
    started, release = threading.Event(), threading.Event()
    inner = engine._fast_enc

    class Slow:  # an encoder pass that pauses until released
        def __call__(self, x):
            started.set()
            end = time.monotonic() + 20
            while not release.is_set() and time.monotonic() < end:
                cpu_worker().serve_urgent()
                time.sleep(0.001)
            return inner(x)

    engine._fast_enc = Slow()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("emb", engine.embed([slices[1]])))
    t.start()
    try:
        assert started.wait(20)
        mask = engine.decode(emb, (20, 10, 70, 60), slices[0].shape)  # encoder still busy
        assert mask.shape == slices[0].shape and t.is_alive()
    finally:
        release.set()
        t.join(20)
    assert out["emb"].shape == (1, 256, 64, 64)
