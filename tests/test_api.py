"""medsam_gui.api on real scans: MedSAM boxes, RECIST lines, 3D propagation, UniverSeg, measures,
and README's API example run as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from box_engine import BrightBoxEngine

from medsam_gui import api
from medsam_gui.core.intensity import volume_to_uint8, window_bounds
from medsam_gui.core.measurements import measure_labels
from medsam_gui.errors import CheckpointError, MedsamGuiError
from medsam_gui.models.medsam import MedSAMEngine

import medsam_fixtures

ROOT = Path(__file__).resolve().parents[1]
TUMOUR_BOX = (206, 347, 229, 368)


@pytest.fixture(scope="module")
def lung(data_dir):
    return api.load_volume(data_dir / "lung_ct" / "lung1_image.nrrd")


def test_segment_box_with_the_real_engine(data_dir, monkeypatch):
    eng = medsam_fixtures.engine()
    g = medsam_fixtures.hippocampus_golden()
    memo = medsam_fixtures.hippocampus_embedding()
    monkeypatch.setattr(eng, "embed", lambda slices, stop=None: memo)
    vol = api.load_volume(data_dir / "msd_hippocampus" / "hippocampus_003_image.nii.gz")
    z = int(g["slice_index"])
    mask = api.segment_box(vol, z, g["box_xyxy"], engine=eng, window=tuple(g["window_bounds"]))
    assert mask.shape == vol.shape[1:] and mask.dtype == bool
    np.testing.assert_array_equal(mask, eng.decode(memo, g["box_xyxy"], mask.shape))


def test_recist_and_default_window(lung):
    eng = BrightBoxEngine(threshold=100)
    mask = api.segment_recist(lung, 33, (207, 357), (228, 357), engine=eng)
    u8 = volume_to_uint8(lung.array, "CT", window_bounds(40, 400))  # CT default: soft tissue
    np.testing.assert_array_equal(eng.embedded[0], u8[33])
    assert mask.any() and not mask[:, :190].any()


def test_propagate_returns_the_lesion_on_the_scan_grid(lung, tmp_path):
    seen = []
    lesion = api.propagate(lung, {33: TUMOUR_BOX}, z_range=(31, 36), engine=BrightBoxEngine(threshold=100),
                           on_slice=lambda r: seen.append(r.index))
    assert lesion.shape == lung.shape and lesion.dtype == bool
    zs = np.flatnonzero(lesion.reshape(lesion.shape[0], -1).any(axis=1))
    assert 33 in zs and zs.min() >= 31 and zs.max() <= 36 and sorted(seen) == sorted(set(seen))
    path = api.save_labels(lesion.astype(np.uint8), like=lung, path=tmp_path / "lesion.nrrd")
    img, src = sitk.ReadImage(str(path)), sitk.ReadImage(str(lung.path))
    assert img.GetSize() == src.GetSize() and img.GetSpacing() == src.GetSpacing()
    assert img.GetOrigin() == src.GetOrigin() and img.GetDirection() == src.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), lesion.astype(np.uint8))


def test_clear_errors_before_any_model_loads(lung, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        api.segment_box(lung, 3, TUMOUR_BOX, checkpoint=tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="weights download medsam_vit_b"):
        api.load_engine("medsam")
    with pytest.raises(MedsamGuiError, match="unknown engine"):
        api.load_engine("sam3")
    with pytest.raises(MedsamGuiError, match="outside the scan"):
        api.segment_box(lung, 48, TUMOUR_BOX, engine=BrightBoxEngine())
    with pytest.raises(MedsamGuiError, match="z-range"):
        api.propagate(lung, {33: TUMOUR_BOX}, z_range=(30, 60), engine=BrightBoxEngine())


def test_measure_matches_the_core(lung, data_dir):
    labels = api.load_volume(data_dir / "lung_ct" / "lung1_label.nrrd").array.astype(np.uint8)
    got = api.measure(lung, labels)
    want = measure_labels(labels, lung.spacing)
    assert [(m.value, m.voxels, m.volume_ml, m.long_axis_mm) for m in got] == \
        [(m.value, m.voxels, m.volume_ml, m.long_axis_mm) for m in want]
    assert got[0].volume_ml > 0 and got[0].long_axis_mm > 5
    with pytest.raises(MedsamGuiError, match="shape"):
        api.measure(lung, labels[:-1])


def test_segment_rest_fills_between_the_drawn_slices(data_dir, golden_dir):
    d = data_dir / "msd_hippocampus"
    vol = api.load_volume(d / "hippocampus_003_image.nii.gz")
    ref = np.rint(api.load_volume(d / "hippocampus_003_label.nii.gz").array).astype(np.uint8)
    partial = np.zeros_like(ref)
    partial[[10, 13]] = ref[[10, 13]]
    out = api.segment_rest(vol, partial, checkpoint=golden_dir / "universeg_v1_seed1234_S8.pt", label=1,
                           window=(0.0, 1000.0), device="cpu", support_size=2)
    assert out.shape == vol.shape
    untouched = [z for z in range(vol.shape[0]) if z not in (11, 12)]
    np.testing.assert_array_equal(out[untouched], partial[untouched])
    assert set(np.unique(out[11:13])) <= {0, 1, 2}


def _readme_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "from medsam_gui import api" in b)


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    """README's example, unchanged, in a folder holding the demo CT and MedSAM weights in the
    official layout (random weights; the encoder is replaced by the memoised embedding)."""
    shutil.copy(ROOT / "resources" / "demo" / "example_ct_sm.nii.gz", tmp_path)
    shutil.copy(medsam_fixtures.vit_b_checkpoint(), tmp_path / "medsam_vit_b.pth")
    memo = medsam_fixtures.hippocampus_embedding()
    monkeypatch.setattr(MedSAMEngine, "embed", lambda self, slices, stop=None: memo.expand(len(slices), -1, -1, -1))
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_api_example(), "README.md", "exec"), {})
    out = tmp_path / "lesion.nii.gz"
    assert out.is_file()
    assert sitk.ReadImage(str(out)).GetSize() == sitk.ReadImage(str(tmp_path / "example_ct_sm.nii.gz")).GetSize()
    assert "mL" in capsys.readouterr().out
