"""`medsam-gui segment` and `medsam-gui weights` end to end (in-process CLI calls)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsam_gui import api
from medsam_gui.cli import main
from medsam_gui.core.intensity import WINDOW_PRESETS, volume_to_uint8, window_bounds
from medsam_gui.io import load_volume
from medsam_gui.models.embedding_cache import embedding_key

import medsam_fixtures

HIPPO = "msd_hippocampus/hippocampus_003_image.nii.gz"
LUNG = "lung_ct/lung1_image.nrrd"


class BoxEngine:
    """Stand-in for MedSAMEngine: the 'embedding' is the slice; the mask is the box itself
    (inclusive pixel indices, x = column, y = row)."""

    name = "box"
    device = "cpu"
    precision = "fp32"
    on_notice = None

    def __init__(self):
        self.embedded = []
        self.decoded = []

    def cache_key(self, fingerprint, axis, index, bounds):
        return embedding_key(fingerprint, axis, index, bounds, "0" * 64, engine=self.name)

    def embed(self, slices, stop=None):
        self.embedded.extend(np.array(sl) for sl in slices)
        return torch.from_numpy(np.stack(slices).astype(np.float32))

    def prepare_decoder(self, emb):
        return False

    def decode(self, emb, box, hw):
        self.decoded.append(tuple(float(v) for v in box))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        m = np.zeros(hw, bool)
        m[y0:y1 + 1, x0:x1 + 1] = True
        return m


@pytest.fixture
def fake_engine(monkeypatch, tmp_path):
    eng = BoxEngine()
    monkeypatch.setattr(api, "load_engine", lambda name, ckpt, device, precision: eng)
    ckpt = tmp_path / "dummy.pth"
    ckpt.write_bytes(b"x")  # never loaded by the stand-in
    eng.ckpt = ckpt
    return eng


def _read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def test_box_lands_on_the_exact_grid(fake_engine, data_dir, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    rc = main(["segment", str(data_dir / LUNG), "--box", "33,206,347,229,368", "--label", "3",
               "--checkpoint", str(fake_engine.ckpt), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    src = sitk.ReadImage(str(data_dir / LUNG))
    img, arr = _read(out)
    assert img.GetSize() == src.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), src.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), src.GetDirection(), atol=1e-6)
    expected = np.zeros(arr.shape, np.uint8)
    expected[33, 347:369, 206:230] = 3  # rows y0..y1, columns x0..x1
    np.testing.assert_array_equal(arr, expected)
    assert arr.dtype == np.uint8
    # the slice given to the model is MedSAM's whole-volume CT window (soft tissue)
    g = np.load(medsam_fixtures.GOLDEN / "medsam_lung1_ct.npz")
    np.testing.assert_array_equal(fake_engine.embedded[0], g["volume_uint8_slice"])
    assert "528 voxels" in capsys.readouterr().out


def test_recist_window_preset_and_two_boxes(fake_engine, data_dir, tmp_path):
    out = tmp_path / "seg.nrrd"
    rc = main(["segment", str(data_dir / LUNG), "--recist", "20,100,100,120,100", "--margin", "4",
               "--box", "21,10,10,12,14", "--window-preset", "lung",
               "--checkpoint", str(fake_engine.ckpt), "--out", str(out)])
    assert rc == 0
    # --box first, then the RECIST line: length 20, centre (110, 100), side 20 + 2 * 4
    assert fake_engine.decoded == [(10.0, 10.0, 12.0, 14.0), (96.0, 86.0, 124.0, 114.0)]
    vol = load_volume(data_dir / LUNG)
    u8 = volume_to_uint8(vol.array, "CT", window_bounds(*WINDOW_PRESETS["lung"]))
    np.testing.assert_array_equal(fake_engine.embedded[1], u8[20])
    np.testing.assert_array_equal(fake_engine.embedded[0], u8[21])
    _, arr = _read(out)
    assert sorted(np.unique(np.nonzero(arr)[0])) == [20, 21]


def test_propagate_within_z_range(fake_engine, data_dir, tmp_path):
    out = tmp_path / "seg.nii.gz"
    rc = main(["segment", str(data_dir / HIPPO), "--box", "11,7,30,26,44", "--propagate",
               "--z-range", "8,14", "--margin", "0", "--checkpoint", str(fake_engine.ckpt), "--out", str(out)])
    assert rc == 0
    _, arr = _read(out)
    zs = sorted(set(np.nonzero(arr)[0].tolist()))
    assert zs == list(range(8, 15))
    assert (arr[11, 30:45, 7:27] == 1).all() and arr[11].sum() == 15 * 20


@pytest.mark.parametrize(
    "args, message",
    [
        (["--box", "99,1,1,5,5"], "slice 99 is outside the scan"),
        (["--box", "11,100,100,120,120"], "lies outside slice 11"),
        ([], "give at least one --box"),
        (["--box", "11,1,1,5,5", "--z-range", "1,3"], "--z-range only applies with --propagate"),
    ],
)
def test_user_errors_exit_1(fake_engine, data_dir, tmp_path, capsys, args, message):
    rc = main(["segment", str(data_dir / HIPPO), *args, "--checkpoint", str(fake_engine.ckpt),
               "--out", str(tmp_path / "o.nii.gz")])
    assert rc == 1
    assert message in capsys.readouterr().err


def test_existing_output_and_missing_weights(fake_engine, data_dir, tmp_path, capsys):
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"keep me")
    rc = main(["segment", str(data_dir / HIPPO), "--box", "11,1,1,5,5", "--checkpoint", str(fake_engine.ckpt),
               "--out", str(out)])
    assert rc == 1 and "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    rc = main(["segment", str(data_dir / HIPPO), "--box", "11,1,1,5,5", "--out", str(tmp_path / "n.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 1 and "no MedSAM ViT-B weights installed" in err and "weights download medsam_vit_b" in err


def test_bad_box_syntax_is_usage_error(data_dir, tmp_path):
    with pytest.raises(SystemExit) as ei:
        main(["segment", str(data_dir / HIPPO), "--box", "11,1,1,5", "--out", str(tmp_path / "o.nii.gz")])
    assert ei.value.code == 2


def test_real_engine_end_to_end(monkeypatch, data_dir, tmp_path, capsys):
    """The CLI loads the real (random-weight) checkpoint from the model manager and runs the
    real decoder; the encoder output is the memoised embedding of the same slice (the encoder
    pass itself is covered by test_scheduler) — checked to be given the golden slice."""
    ckpt = medsam_fixtures.vit_b_checkpoint()
    assert main(["weights", "import", "medsam_vit_b", str(ckpt), "--no-copy"]) == 0
    g = medsam_fixtures.hippocampus_golden()
    memo = medsam_fixtures.hippocampus_embedding()
    built = []
    real_load = api.load_engine

    def load(name, path, device, precision):
        eng = real_load(name, path, device=device, precision=precision)
        built.append((path, eng))

        def embed(slices, stop=None):
            np.testing.assert_array_equal(slices[0], g["volume_uint8_slice"])
            return memo

        monkeypatch.setattr(eng, "embed", embed)
        return eng

    monkeypatch.setattr(api, "load_engine", load)
    x0, y0, x1, y1 = (int(v) for v in g["box_xyxy"])
    out = tmp_path / "real.nii.gz"
    rc = main(["segment", str(data_dir / HIPPO), "--box", f"11,{x0},{y0},{x1},{y1}", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert built[0][0] == ckpt.resolve()
    expected = medsam_fixtures.engine().decode(memo, g["box_xyxy"], g["volume_uint8_slice"].shape)
    _, arr = _read(out)
    np.testing.assert_array_equal(arr[11], expected.astype(np.uint8))
    assert arr.sum() == expected.sum() and arr[:11].sum() == 0 and arr[12:].sum() == 0


def test_weights_cli(tmp_path, golden_dir, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "medsam_vit_b" in out and "not installed" in out and "zenodo.org" in out
    g = torch.load(golden_dir / "universeg_v1_seed1234_S8.pt", map_location="cpu", weights_only=True)
    p = tmp_path / "u.pt"
    torch.save(g["state_dict"], p)
    assert main(["weights", "import", "universeg", str(p)]) == 0
    assert "universeg_v1_nf64_ss64_STA.pt" in capsys.readouterr().out
    assert main(["weights", "import", "medsam_vit_b", str(p)]) == 1
    assert "UniverSeg" in capsys.readouterr().err
    rc = main(["weights", "download", "sam_vit_b", "--url", "http://127.0.0.1:9/sam.pth"])
    err = capsys.readouterr().err
    assert rc == 1 and "you seem to be offline" in err and "weights import sam_vit_b FILE" in err
