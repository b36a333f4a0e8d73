"""``medsam-gui auto`` and ``api.auto_segment`` with the stand-in segmenter on the demo CT: the
label map on the scan's grid (values in the order given, the smaller structure wins), the
ITK-SNAP label file, the printed volumes, and every argument checked before the model loads."""

from __future__ import annotations

import numpy as np
import pytest

from auto_stand_in import RULES, StandInSegmenter, spec
from medsam_gui import api, cli
from medsam_gui.errors import CheckpointError, MedsamGuiError
from medsam_gui.io import load_volume, read_label_description
from medsam_gui.io.writers import load_labels
from medsam_gui.models import auto_models
from medsam_gui.models.auto_model import AutoSegmentationCancelled


@pytest.fixture
def made():
    """The segmenters the stand-in "hermes" and "universal" loaded during the test."""
    loaded: list = []
    with auto_models.registered(spec("hermes", made=loaded)), auto_models.registered(spec("universal", made=loaded)):
        yield loaded


@pytest.fixture(scope="module")
def demo(demo_scan):
    return load_volume(demo_scan)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "hermes_r.pth"
    path.write_bytes(b"stand-in weights")
    return path


def _expected(vol, key):
    _, _, _, lo, hi = RULES[key]
    return (vol.array >= lo) & (vol.array < hi)


def test_cli_writes_label_map_and_names(made, demo, demo_scan, ckpt, tmp_path, capsys):
    out = tmp_path / "auto.nii.gz"
    code = cli.main(["auto", str(demo_scan), "--model", "hermes", "--structures", "bone,Dense bone,11",
                     "--overlap", "0.25", "--checkpoint", str(ckpt), "--out", str(out)])
    assert code == 0
    labels = load_labels(out, demo)  # on the scan's exact grid, or this raises
    bone, dense, soft = (_expected(demo, k) for k in ("bone", "dense_bone", "soft_tissue"))
    assert dense.sum() < bone.sum() and dense.any()
    np.testing.assert_array_equal(labels == 2, dense)  # dense bone lies inside bone: the smaller wins
    np.testing.assert_array_equal(labels == 1, bone & ~dense)
    np.testing.assert_array_equal(labels == 3, soft)
    table = read_label_description(tmp_path / "auto.label")
    assert [(i.value, i.name) for i in table] == [(1, "Bone"), (2, "Dense bone"), (3, "Soft tissue")]
    assert len({i.color for i in table}) == 3
    printed = capsys.readouterr().out
    ml = (labels == 3).sum() * demo.voxel_volume_mm3 / 1000.0
    assert f"Soft tissue: {(labels == 3).sum()} voxels, {ml:.2f} mL" in printed
    (seg,) = made
    assert seg.checkpoint == ckpt and seg.calls[0]["overlap"] == 0.25 and seg.calls[0]["modality"] == "CT"


@pytest.mark.parametrize("args, message", [
    (["--structures", "bone", "--out", "{tmp}/x.png"], "use a name ending in"),
    (["--structures", "bone", "--out", "{tmp}/missing/x.nii.gz"], "does not exist; create it first"),
    (["--structures", "bnoe,liverr,body", "--out", "{tmp}/x.nii.gz"], "'bnoe' \\(did you mean bone\\?\\); 'liverr'"),
    (["--structures", "bone", "--overlap", "1", "--out", "{tmp}/x.nii.gz"], "--overlap must be"),
    (["--structures", "bone", "--out", "{tmp}/x.nii.gz", "--checkpoint", "{tmp}/nope.pth"], "nope.pth does not exist"),
    (["--structures", "bone", "--out", "{tmp}/x.nii.gz", "--text-embedding", "{ckpt}"], "takes no text embedding"),
])
def test_cli_refuses_before_loading(made, demo_scan, ckpt, tmp_path, capsys, args, message):
    argv = ["auto", str(demo_scan), "--model", "hermes", "--checkpoint", str(ckpt)]
    argv += [a.format(tmp=tmp_path, ckpt=ckpt) for a in args]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    import re

    assert re.search(message, err), err
    assert made == []  # nothing was loaded


def test_cli_existing_output_and_installed_weights(made, demo_scan, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    out.write_bytes(b"")
    assert cli.main(["auto", str(demo_scan), "--model", "universal", "--structures", "body", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    out.unlink()
    assert cli.main(["auto", str(demo_scan), "--model", "universal", "--structures", "body", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no CLIP-Driven Universal Model (Swin UNETR) file" in err and "weights download universal_model" in err
    assert made == [] and not out.exists()


def test_list_structures(made, capsys):
    assert cli.main(["auto", "--model", "universal", "--list-structures"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == len(RULES) and rows[2].split()[:2] == ["12", "bone"]


def test_api_auto_segment(made, demo, ckpt, tmp_path):
    text = tmp_path / "txt_encoding.pth"
    text.write_bytes(b"stand-in")
    events = []
    masks = api.auto_segment(demo, "universal", ["body", 13], ckpt, text_embedding=text,
                             progress=lambda d, t: events.append((d, t)))
    assert list(masks) == ["body", "dense_bone"]
    for key, mask in masks.items():
        assert mask.dtype == np.uint8 and mask.shape == demo.shape
        np.testing.assert_array_equal(mask.astype(bool), _expected(demo, key))
    nz = demo.shape[0]
    assert events[-1] == (len(StandInSegmenter().window_starts(nz, 0.5)),) * 2
    assert made[0].text_embedding == text
    with pytest.raises(CheckpointError, match="no CLIP-Driven Universal Model"):
        api.auto_segment(demo, "universal", ["body"], None)
    with pytest.raises(MedsamGuiError, match="unknown modality 'XR'"):
        api.auto_segment(demo, "hermes", ["body"], ckpt, modality="XR")


def test_api_loaded_segmenter_and_stop(demo):
    seg = StandInSegmenter("hermes")
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(AutoSegmentationCancelled, match="after 2 of"):
        api.auto_segment(demo, seg, ["body"], stop=stop)
    masks = api.auto_segment(demo, seg, ["Body"], modality="mr", overlap=0.0)
    assert seg.calls[-1] == {"keys": ["body"], "modality": "MR", "overlap": 0.0}
    assert masks["body"].sum() == _expected(demo, "body").sum()
