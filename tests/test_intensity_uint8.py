"""volume_to_uint8 (MedSAM's whole-volume preprocessing) computed a few slices at a time (or
through a look-up table for integer scans): the same bytes as the one-shot formula on real scans
and on awkward inputs, without the ~1.5 GiB of float64 temporaries a 512 x 512 x 300 CT used to
cost when opened."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.core import intensity


def _one_shot(data, modality, bounds):
    """The reference formula on the whole volume at once."""
    lo, hi = float(bounds[0]), float(bounds[1])
    clipped = np.nan_to_num(np.clip(np.asarray(data).astype(np.float64), lo, hi), nan=lo, posinf=hi, neginf=lo)
    cmin, cmax = float(clipped.min()), float(clipped.max())
    scaled = (clipped - cmin) / (cmax - cmin) * 255.0 if cmax > cmin else np.zeros_like(clipped)
    if modality == "MR":
        scaled[np.asarray(data) == 0] = 0
    return scaled.astype(np.uint8)


@pytest.mark.parametrize("chunk", [1, 7 * 64 * 64, 1 << 22])
def test_chunked_equals_one_shot_on_real_scans(data_dir, monkeypatch, chunk):
    monkeypatch.setattr(intensity, "UINT8_CHUNK_VOXELS", chunk)
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "lung_ct" / "lung1_image.nrrd")))[:, ::8, ::8]
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz")))
    for arr, modality, bounds in ((ct, "CT", (-160, 240)), (ct, "CT", (-1000, 400)),
                                  (mr.astype(np.float32) + 1000, "MR", (0.0, 1500.0))):
        got = intensity.volume_to_uint8(arr, modality, bounds)
        want = _one_shot(arr, modality, bounds)
        assert got.dtype == np.uint8 and got.shape == arr.shape
        assert np.array_equal(got, want)
        assert 0 < got.mean() < 255


def test_chunked_equals_one_shot_on_odd_inputs(monkeypatch):
    monkeypatch.setattr(intensity, "UINT8_CHUNK_VOXELS", 50)
    rng = np.random.default_rng(3)
    a = rng.normal(0, 400, (9, 6, 5)).astype(np.float32)
    a.flat[::11] = np.nan
    a.flat[3::13] = np.inf
    a.flat[5::17] = -np.inf
    a[4] = 0  # MR zeros stay zero
    for modality in ("CT", "MR"):
        for bounds in ((-160, 240), (0, 1), (5, 5)):
            with np.errstate(invalid="ignore"):
                assert np.array_equal(intensity.volume_to_uint8(a, modality, bounds), _one_shot(a, modality, bounds))
    assert not intensity.volume_to_uint8(np.full((3, 4, 4), 7, np.int16), "CT", (-160, 240)).any()
    assert intensity.volume_to_uint8(np.zeros((0, 4, 4), np.int16), "CT", (0, 1)).shape == (0, 4, 4)


def test_integer_scans_take_a_lookup_table_with_the_same_bytes(monkeypatch):
    """8/16-bit scans (most CT and MR files) go through a per-value table; every dtype, sign,
    window and the MR zero rule give the one-shot formula's bytes."""
    monkeypatch.setattr(intensity, "UINT8_CHUNK_VOXELS", 37)
    rng = np.random.default_rng(5)
    for dtype, lo_v, hi_v in ((np.int16, -1024, 3000), (np.uint16, 0, 4095), (np.uint8, 0, 255), (np.int8, -100, 100)):
        a = rng.integers(lo_v, hi_v, (4, 9, 7)).astype(dtype)
        a[1, 2] = 0
        for modality in ("CT", "MR"):
            for bounds in ((-160, 240), (10, 3000), (5000, 6000), (0, 0)):
                assert np.array_equal(intensity.volume_to_uint8(a, modality, bounds), _one_shot(a, modality, bounds))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB on Linux")
def test_memory_of_a_300_slice_ct_stays_small():
    code = (
        "import numpy as np, resource\n"
        "from medsam_gui.core.intensity import volume_to_uint8\n"
        "a = np.empty((300, 512, 512), np.int16)\n"
        "row = (np.arange(512 * 512) % 4000 - 1000).astype(np.int16).reshape(512, 512)\n"
        "for i in range(300):\n"
        "    a[i] = row\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "u = volume_to_uint8(a, 'CT', (-160, 240))\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024, int(u.max()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grew_mib, top = (int(v) for v in out.stdout.split())
    assert top == 255
    # the uint8 result is 75 MiB; float64 copies of the whole scan would be 600 MiB each
    assert grew_mib < 200, grew_mib
