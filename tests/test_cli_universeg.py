"""``medsam-gui universeg`` end to end on real scans, with the golden (random-weight) network."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsam_gui.cli import main
from medsam_gui.core.example_sets import load_example_set
from medsam_gui.io import load_volume, save_labels
from medsam_gui.models import incontext as ic
from medsam_gui.models import universeg_v1

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def hippo_paths(data_dir):
    d = data_dir / "msd_hippocampus"
    return d / "hippocampus_003_image.nii.gz", d / "hippocampus_003_label.nii.gz"


@pytest.fixture(scope="module")
def ckpt(golden_dir):
    # the golden file wraps the weights as {"state_dict": ...} (plus the test vectors)
    return golden_dir / "universeg_v1_seed1234_S8.pt"


def _grid(path):
    img = sitk.ReadImage(str(path))
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def _partial(tmp_path, scan_path, label_path, slices):
    vol = load_volume(scan_path)
    lab = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))).astype(np.uint8)
    partial = np.zeros_like(lab)
    partial[slices] = lab[slices]
    path = save_labels(partial, vol, tmp_path / "partial.nii.gz")
    return vol, partial, path


def test_cli_fills_between_user_slices(tmp_path, hippo_paths, ckpt, capsys):
    scan, ref = hippo_paths
    vol, partial, partial_path = _partial(tmp_path, scan, ref, [10, 13])
    out = tmp_path / "out.nii.gz"
    rc = main(["universeg", str(scan), "--support-labels", str(partial_path), "--checkpoint", str(ckpt),
               "--out", str(out), "--support-size", "4", "--device", "cpu", "--window", "500,1000"])
    assert rc == 0, capsys.readouterr().err
    assert _grid(out) == _grid(scan)  # the scan's exact grid
    result = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert result.dtype == np.uint8
    # user slices (and everything outside the targets) untouched bit for bit
    outside = [z for z in range(vol.shape[0]) if z not in (11, 12)]
    assert np.array_equal(result[outside], partial[outside])
    # the same as the scripting API with the same settings
    model = universeg_v1(ckpt)
    multi = ic.segment_rest_multi(vol.array, partial, [1, 2], model=model, bounds=(0.0, 1000.0),
                                  support_size=4, device="cpu")
    expected = partial.copy()
    changed = multi.apply(expected)
    assert np.array_equal(result, expected)
    assert set(changed) <= {11, 12}
    assert "wrote" in capsys.readouterr().err


def test_cli_example_set_round_trip(tmp_path, hippo_paths, ckpt, data_dir, capsys):
    scan, ref = hippo_paths
    _, partial, partial_path = _partial(tmp_path, scan, ref, [6, 9])
    es_path = tmp_path / "anterior.npz"
    rc = main(["universeg", str(scan), "--support-labels", str(partial_path), "--label", "1",
               "--checkpoint", str(ckpt), "--out", str(tmp_path / "a.nii.gz"), "--support-size", "2",
               "--device", "cpu", "--save-example-set", str(es_path), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    es = load_example_set(es_path)
    assert es.indices == (6, 9) and es.label_value == 1 and es.images.shape == (2, 128, 128)
    assert es.source and es.modality == load_volume(scan).modality
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")))
    keep = [z for z in range(a.shape[0]) if z not in (7, 8)]
    assert np.array_equal(a[keep], partial[keep])
    assert np.array_equal(a == 2, partial == 2)  # only label 1 was segmented

    # use the saved set on another scan: only the requested slice range is written
    other = data_dir / "msd_hippocampus" / "hippocampus_001_image.nii.gz"
    out = tmp_path / "other.nii.gz"
    rc = main(["universeg", str(other), "--example-set", str(es_path), "--label", "3", "--z-range", "5,4",
               "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert _grid(out) == _grid(other)
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(b)) <= {0, 3}
    nonzero = np.flatnonzero(b.any(axis=(1, 2))).tolist()
    assert set(nonzero) <= {4, 5}


def test_cli_errors(tmp_path, hippo_paths, ckpt, capsys):
    scan, ref = hippo_paths
    _, _, partial_path = _partial(tmp_path, scan, ref, [10, 13])
    base = ["universeg", str(scan), "--support-labels", str(partial_path), "--device", "cpu"]
    # no checkpoint and none installed (isolated MEDSAM_GUI_HOME)
    assert main(base + ["--out", str(tmp_path / "o.nii.gz")]) == 1
    assert "--checkpoint" in capsys.readouterr().err
    # a wrong checkpoint
    bad = tmp_path / "medsam.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, bad)
    assert main(base + ["--checkpoint", str(bad), "--out", str(tmp_path / "o.nii.gz")]) == 1
    assert "MedSAM" in capsys.readouterr().err
    # a label that is not drawn
    assert main(base + ["--checkpoint", str(ckpt), "--label", "7", "--out", str(tmp_path / "o.nii.gz")]) == 1
    assert "label 7" in capsys.readouterr().err
    # saving an example set needs one label
    assert main(base + ["--checkpoint", str(ckpt), "--save-example-set", str(tmp_path / "e.npz"),
                        "--out", str(tmp_path / "o.nii.gz")]) == 1
    assert "--label" in capsys.readouterr().err
    # a label map on another grid
    other = load_volume(hippo_paths[0].parent / "hippocampus_001_image.nii.gz")
    off = save_labels(np.ones(other.shape, np.uint8), other, tmp_path / "off.nii.gz")
    assert main(["universeg", str(scan), "--support-labels", str(off), "--checkpoint", str(ckpt),
                 "--out", str(tmp_path / "o.nii.gz")]) == 1
    assert "grid" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
    # the output exists already
    (tmp_path / "exists.nii.gz").write_bytes(b"x")
    assert main(base + ["--checkpoint", str(ckpt), "--out", str(tmp_path / "exists.nii.gz")]) == 1
    # both support sources: a usage error
    with pytest.raises(SystemExit) as info:
        main(base + ["--example-set", "x.npz", "--out", "o.nii.gz"])
    assert info.value.code == 2
