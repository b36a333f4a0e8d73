"""GPU out of memory (issue 7): smaller batches, then the CPU, with a message; never a crash.

No GPU here: out-of-memory errors are simulated (torch.cuda.OutOfMemoryError / MPS's
RuntimeError) on CPU tensors, and a "GPU" is simulated by an engine whose ``device`` says cuda
while its tensors stay on the CPU, so the same code paths run as on a real GPU. Results are
compared with the same run without the error. No ViT-B encoder pass (a tiny stand-in encoder).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_gui.errors import MedsamGuiError
from medsam_gui.models import incontext as ic
from medsam_gui.models import universeg_v1
from medsam_gui.models.medsam import MedSAMEngine
from medsam_gui.models.oom import DeviceMemoryError, OomFallback, is_out_of_memory

torch.set_num_threads(2)
CUDA = torch.device("cuda")


def cuda_oom(msg="CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"):
    return torch.cuda.OutOfMemoryError(msg)


def test_is_out_of_memory():
    assert is_out_of_memory(cuda_oom()) and isinstance(cuda_oom(), RuntimeError)
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not torch's
    assert not is_out_of_memory(MemoryError())


def test_fallback_halves_then_moves_to_cpu_and_keeps_order():
    where = {"dev": CUDA}
    calls, notices = [], []

    def run(a, b, size):
        calls.append((where["dev"].type, a, b, size))
        if where["dev"].type == "cuda":
            raise cuda_oom()
        return list(range(a, b))

    fb = OomFallback(lambda: where["dev"], 4, move_to_cpu=lambda: where.update(dev=torch.device("cpu")),
                     on_notice=notices.append, cpu_batch_size=3)
    out = list(fb.run(7, run))
    assert [r for _, _, part in out for r in part] == list(range(7))
    assert [(a, b) for a, b, _ in out] == [(0, 3), (3, 6), (6, 7)]
    assert [c[3] for c in calls[:3]] == [4, 2, 1]  # halved on the GPU, then batch 1 failed too
    assert notices == ["The GPU ran out of memory: continuing with batches of 2",
                       "The GPU ran out of memory: continuing with batches of 1",
                       "The GPU ran out of memory: continuing on the CPU (slower)"]
    assert fb.notices == notices and fb.batch_size == 3


def test_fallback_never_swallows_other_errors_and_gives_up_on_the_cpu():
    moved = []

    def boom(exc):
        def run(a, b, size):
            raise exc
        return run

    for exc in (ValueError("bad input"), RuntimeError("Expected all tensors to be on the same device")):
        fb = OomFallback(CUDA, 8, move_to_cpu=lambda: moved.append(1))
        with pytest.raises(type(exc), match=str(exc)):
            list(fb.run(3, boom(exc)))
        assert fb.batch_size == 8 and not fb.notices and not moved
    fb = OomFallback(torch.device("cpu"), 2, move_to_cpu=lambda: moved.append(1))
    with pytest.raises(DeviceMemoryError, match="ran out of memory even one item at a time") as info:
        list(fb.run(3, boom(cuda_oom())))
    assert isinstance(info.value, MedsamGuiError) and is_out_of_memory(info.value.__cause__)
    assert fb.notices == ["The CPU ran out of memory: continuing with batches of 1"] and not moved
    with pytest.raises(DeviceMemoryError):  # a GPU with nowhere to go (no move_to_cpu)
        OomFallback(CUDA).call(lambda: boom(cuda_oom())(0, 1, 1))


# --------------------------------------------------------------------------- MedSAM engine


class StandInEncoder:
    """(B, 3, 1024, 1024) -> (B, 256, 64, 64): 16x16 average pooling and a fixed per-channel
    affine map (depends on each slice only, exactly, whatever the batch); records batch sizes."""

    def __init__(self, fail_above: int | None = None):
        g = torch.Generator().manual_seed(3)
        self.w = torch.randn(1, 256, 1, 1, generator=g)
        self.b = torch.randn(1, 256, 1, 1, generator=g)
        self.fail_above = fail_above
        self.batches = []

    def __call__(self, x):
        self.batches.append(int(x.shape[0]))
        if self.fail_above is not None and x.shape[0] > self.fail_above:
            raise cuda_oom()
        pooled = torch.nn.functional.avg_pool2d(x[:, :1], 16)
        return pooled * self.w + self.b


@pytest.fixture(scope="module")
def slices(golden_dir):
    img = np.load(golden_dir / "medsam_lung1_ct.npz")["volume_uint8_slice"]
    return [np.ascontiguousarray(img[r:r + 96, c:c + 96]) for r, c in ((100, 100), (200, 150), (250, 300),
                                                                         (150, 250), (300, 200))]


@pytest.fixture
def engine(medsam_state_dict, monkeypatch):
    """A fast-path engine of its own whose encoder is the stand-in (set through monkeypatch)."""
    eng = MedSAMEngine(medsam_state_dict, device="cpu", precision="fast")
    monkeypatch.setattr(eng, "_fast_enc", StandInEncoder())
    return eng


def test_engine_halves_encoder_batches_with_identical_embeddings(engine, slices, monkeypatch):
    expected = engine.embed(slices, batch_size=4)
    notices = []
    engine.on_notice = notices.append
    enc = StandInEncoder(fail_above=1)
    monkeypatch.setattr(engine, "_fast_enc", enc)
    got = engine.embed(slices, batch_size=4)
    assert enc.batches[:3] == [4, 2, 1] and set(enc.batches[3:]) == {1}
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert notices == ["The CPU ran out of memory: continuing with batches of 2",
                       "The CPU ran out of memory: continuing with batches of 1"]
    assert engine.device.type == "cpu"
    with pytest.raises(DeviceMemoryError):  # batch 1 on the CPU fails: a user-facing error
        monkeypatch.setattr(engine, "_fast_enc", StandInEncoder(fail_above=0))
        engine.embed_slice(slices[0])


def test_engine_moves_from_gpu_to_cpu_and_re_resolves_precision(engine, slices, monkeypatch):
    expected = engine.embed(slices, batch_size=1)
    # simulate a CUDA engine on "auto" precision (bf16 there) whose every GPU batch runs out of memory
    engine.device, engine.requested_precision, engine.precision = CUDA, "auto", "bf16"
    real = engine._embed_range
    tried = []

    def embed_range(part, size, stop=None):  # MedSAMEngine._embed_range(slices, batch_size, stop=None)
        tried.append((engine.device.type, len(part), size))
        if engine.device.type != "cpu":
            raise cuda_oom()
        return real(part, size, stop)

    monkeypatch.setattr(engine, "_embed_range", embed_range)
    notices = []
    engine.on_notice = notices.append
    got = list(engine.iter_embed_batch(slices))
    assert tried[:5] == [("cuda", 5, 16), ("cuda", 5, 8), ("cuda", 5, 4), ("cuda", 5, 2), ("cuda", 4, 1)]
    assert tried[5:] == [("cpu", 1, 1)] * 5
    assert [i for i, _ in got] == [0, 1, 2, 3, 4]
    torch.testing.assert_close(torch.cat([e for _, e in got]).float(), expected, rtol=0, atol=0)
    assert notices[-1] == "The GPU ran out of memory: continuing on the CPU (slower)" and len(notices) == 5
    assert engine.device.type == "cpu" and engine.precision == "fast"
    assert all(p.device.type == "cpu" for p in engine.model.parameters())


def test_reference_path_and_decoder_fall_back_to_cpu(engine, slices, monkeypatch):
    box = (20, 25, 70, 80)
    engine.precision = engine.requested_precision = "fp32"  # the reference encoder path

    class Ref(torch.nn.Module):
        def forward(self, x):
            return StandInEncoder()(x)

    monkeypatch.setattr(engine.model, "image_encoder", Ref())
    emb = engine.embed_slice(slices[0])
    mask = engine.decode(emb, box, (96, 96))
    logits = engine.decode_logits(emb, box, (96, 96))
    engine.device = CUDA
    notices = []
    engine.on_notice = notices.append
    real_dec = engine._decode_once

    def decode_once(e, b):
        if engine.device.type != "cpu":
            raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return real_dec(e, b)

    monkeypatch.setattr(engine, "_decode_once", decode_once)
    got = engine.decode(emb, box, (96, 96))
    assert np.array_equal(got, mask) and mask.any()
    assert notices == ["The GPU ran out of memory: continuing on the CPU (slower)"]
    torch.testing.assert_close(engine.decode_logits(emb, box, (96, 96)), logits, rtol=0, atol=0)
    assert engine.device.type == "cpu" and engine.precision == "fp32"
    # the reference encoder (one slice, nothing to halve) goes straight to the CPU
    engine.device = CUDA
    real_enc = engine._encode_once
    monkeypatch.setattr(engine, "_encode_once",
                        lambda x, stop=None: (_ for _ in ()).throw(cuda_oom()) if engine.device.type != "cpu"
                        else real_enc(x, stop))
    torch.testing.assert_close(engine.embed_slice(slices[0]), emb, rtol=0, atol=0)
    assert len(notices) == 2 and engine.device.type == "cpu"
    # an error that is not out of memory is never swallowed
    engine.device = CUDA
    monkeypatch.setattr(engine, "_decode_once", lambda e, b: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine.decode(emb, box, (96, 96))
    assert engine.device == CUDA and len(notices) == 2


# --------------------------------------------------------------------------- UniverSeg


@pytest.fixture(scope="module")
def liver(data_dir):
    import SimpleITK as sitk

    d = data_dir / "totalsegmentator_example_ct"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "example_ct_sm.nii.gz")))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "example_seg.nii.gz")))
    labels = np.zeros(ct.shape, np.uint8)
    labels[[10, 14]] = np.where(seg[[10, 14]] == 5, 5, 0)  # liver on two slices: targets 11, 12, 13
    return ct, labels


class OomModel(torch.nn.Module):
    """Golden UniverSeg behind a fake device: ``to("cuda")`` only records it (tensors stay on the
    CPU); out of memory on the "GPU" always, and on the CPU for batches above ``fail_above``."""

    def __init__(self, inner, fail_above=None):
        super().__init__()
        self.inner, self.fail_above, self.where, self.batches = inner, fail_above, "cpu", []

    def to(self, device):
        self.where = torch.device(device).type
        self.inner.to("cpu")
        return self

    def forward(self, target, support_images, support_labels):
        self.batches.append((self.where, int(target.shape[0])))
        if self.where != "cpu" or (self.fail_above is not None and target.shape[0] > self.fail_above):
            raise cuda_oom()
        return self.inner(target, support_images, support_labels)


@pytest.fixture(scope="module")
def golden_universeg(universeg_state_dict):
    return universeg_v1(universeg_state_dict).eval()


def _run(ct, labels, model, batch_size=2, **kw):
    return ic.segment_rest(ct, labels, 5, model=model, bounds=(-160.0, 240.0), support_size=8,
                           batch_size=batch_size, **kw)


def test_universeg_halves_batches_with_identical_probabilities(liver, golden_universeg):
    ct, labels = liver
    expected = _run(ct, labels, golden_universeg, device="cpu")
    assert expected.indices == [11, 12, 13]
    model, notices = OomModel(golden_universeg, fail_above=1), []
    got = _run(ct, labels, model, device="cpu", on_notice=notices.append)
    assert model.batches == [("cpu", 2), ("cpu", 1), ("cpu", 1), ("cpu", 1)]
    assert notices == ["The CPU ran out of memory: continuing with batches of 1"]
    assert got.indices == [11, 12, 13] and not got.cancelled
    same_batches = _run(ct, labels, golden_universeg, device="cpu", batch_size=1)
    for i in got.indices:  # bit for bit the run without the error at the batch size that fitted
        assert np.array_equal(got.probabilities[i], same_batches.probabilities[i])
        # and the batch-2 run up to float rounding (batch size changes the CPU conv's summation)
        np.testing.assert_allclose(got.probabilities[i].astype(np.float32),
                                   expected.probabilities[i].astype(np.float32), rtol=0, atol=1e-3)
        assert np.array_equal(got.mask(i), expected.mask(i))


def test_universeg_moves_from_gpu_to_cpu(liver, golden_universeg, monkeypatch):
    ct, labels = liver
    expected = _run(ct, labels, golden_universeg, device="cpu")
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):  # the simulated GPU keeps tensors on the CPU
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.device) and args[0].type == "cuda":
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(ic, "resolve_device", lambda d: CUDA)
    monkeypatch.setattr(torch.Tensor, "to", to)
    model, notices = OomModel(golden_universeg), []
    events = list(ic.iter_segment_rest(ct, labels, 5, model=model, bounds=(-160.0, 240.0), support_size=8,
                                       batch_size=2, device="cuda", on_notice=notices.append))
    monkeypatch.undo()
    assert model.batches == [("cuda", 2), ("cuda", 1), ("cpu", 2), ("cpu", 1)]
    assert model.where == "cpu"
    assert notices == ["The GPU ran out of memory: continuing with batches of 1",
                       "The GPU ran out of memory: continuing on the CPU (slower)"]
    assert [e.indices for e in events] == [[11, 12], [13]] and events[-1].done == events[-1].total == 3
    got = np.concatenate([e.probabilities for e in events])
    want = np.stack([expected.probabilities[i] for i in (11, 12, 13)])
    assert np.array_equal(got, want)  # same batches on the CPU as the run without the error


def test_universeg_other_errors_propagate(liver, golden_universeg):
    ct, labels = liver

    class Broken(torch.nn.Module):
        def forward(self, *a):
            raise RuntimeError("weights of another model")

    with pytest.raises(RuntimeError, match="weights of another model"):
        _run(ct, labels, Broken(), device="cpu")


# --------------------------------------------------------------------------- GUI wiring


def test_embedding_service_forwards_engine_notices(qtbot):
    import threading
    from types import SimpleNamespace

    from medsam_gui.gui.embedding_service import EmbeddingService

    sv = EmbeddingService(background=False)
    eng = SimpleNamespace(on_notice=None, checkpoint_id="x", precision="fast")
    sv.set_engine(eng)
    assert eng.on_notice is not None
    with qtbot.waitSignal(sv.notice, timeout=5000) as blocker:
        t = threading.Thread(target=eng.on_notice, args=("The GPU ran out of memory: continuing on the CPU (slower)",))
        t.start()
        t.join()
    assert blocker.args == ["MedSAM: The GPU ran out of memory: continuing on the CPU (slower)"]
    assert sv.last_message == sv.device_notice == blocker.args[0]
    sv.shutdown()
