"""MedSAM2 outside the viewer (issue 14): the model manager's five official checkpoints
(download from a local HTTP server on 127.0.0.1 with files in the official layout
{"model": state_dict}, import, refusals, `medsam-gui weights`), the API
(``api.segment_lesion_3d``, ``api.propagate(engine=...)``) with the golden-rule weights on the
real lung CT, and ``medsam-gui segment --engine medsam2`` (output on the scan's exact grid)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import medsam2_helpers as m2
from medsam_gui import api, config
from medsam_gui.cli import main
from medsam_gui.errors import CheckpointError, MedsamGuiError, WeightsDownloadError
from medsam_gui.models import weights as manager
from weights_server import serve_files

KEY, BOX = 33, (206, 347, 229, 368)
NAMES = ["medsam2_latest", "medsam2_ctlesion", "medsam2_mri_liverlesion", "medsam2_us_heart", "medsam2_2411"]
FILES = ["MedSAM2_latest.pt", "MedSAM2_CTLesion.pt", "MedSAM2_MRI_LiverLesion.pt", "MedSAM2_US_Heart.pt",
         "MedSAM2_2411.pt"]


# ---------------------------------------------------------------- model manager

@pytest.fixture(scope="module")
def server():
    with serve_files() as served:
        yield served


@pytest.fixture(scope="module")
def official_bytes(tmp_path_factory):
    """A MedSAM2 checkpoint in the official layout ({"model": state_dict}, 471 keys; float16
    zeros keep it at ~75 MiB)."""
    from medsam_gui.models.medsam2.engine import expected_shapes

    p = tmp_path_factory.mktemp("m2official") / "MedSAM2_latest.pt"
    torch.save({"model": {k: torch.zeros(s, dtype=torch.float16) for k, s in expected_shapes().items()}}, p)
    return p.read_bytes()


def test_the_five_official_checkpoints_are_known():
    for name, file in zip(NAMES, FILES):
        m = manager.get_model(name)
        assert m.filename == file and m.kind == "medsam2"
        assert m.url == f"https://huggingface.co/wanglab/MedSAM2/resolve/main/{file}"
        assert m.sha256 is None and m.md5 is None and "recorded on first install" in m.note
    assert manager.get_model("medsam2").name == "medsam2_latest" and "Recommended" in manager.get_model("medsam2").note
    assert manager.MEDSAM2_NAMES[0] == "medsam2_latest"
    assert manager.resolve_medsam2() is None
    assert {"medsam_vit_b", "sam_vit_b", "universeg_v1"} <= set(manager.KNOWN_MODELS)  # the others stay


def test_download_official_layout_with_progress_records_sha256(server, official_bytes, capsys):
    base, files = server
    files["/wanglab/MedSAM2/resolve/main/MedSAM2_CTLesion.pt"] = (official_bytes, "ok")
    events = []
    path = manager.download("medsam2_ctlesion", url=f"{base}/wanglab/MedSAM2/resolve/main/MedSAM2_CTLesion.pt",
                            progress=lambda d, t: events.append((d, t)))
    assert path == config.weights_dir() / "MedSAM2_CTLesion.pt" and path.read_bytes() == official_bytes
    n = len(official_bytes)
    assert events[0] == (0, n) and events[-1] == (n, n) and len(events) > 5
    sha = hashlib.sha256(official_bytes).hexdigest()
    assert manager.recorded_sha256("medsam2_ctlesion") == sha
    assert manager.resolve_medsam2() == path  # the only one installed
    # the CLI lists the five with their sources and the recorded checksum
    assert main(["weights", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(NAMES) <= set(listed)
    assert listed["medsam2_ctlesion"]["path"] == str(path) and listed["medsam2_ctlesion"]["sha256_recorded"] == sha
    assert listed["medsam2_latest"]["path"] is None
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_US_Heart.pt" in out and sha in out
    # the CLI downloads through the same code (env var override = a mirror)
    files["/mirror/latest.pt"] = (official_bytes, "ok")
    os.environ["MEDSAM_GUI_URL_MEDSAM2_LATEST"] = f"{base}/mirror/latest.pt"
    try:
        assert main(["weights", "download", "medsam2"]) == 0
    finally:
        del os.environ["MEDSAM_GUI_URL_MEDSAM2_LATEST"]
    assert "MedSAM2_latest.pt" in capsys.readouterr().out
    assert manager.resolve_medsam2() == config.weights_dir() / "MedSAM2_latest.pt"  # latest preferred


def test_refusals_leave_nothing(server, official_bytes, tmp_path):
    base, files = server
    files["/cut.pt"] = (official_bytes, "truncate")
    with pytest.raises(WeightsDownloadError, match="interrupted"):
        manager.download("medsam2_latest", url=f"{base}/cut.pt")
    sam = tmp_path / "medsam_vit_b.pth"
    torch.save({"image_encoder.blocks.0.norm1.weight": torch.zeros(768),
                "mask_decoder.iou_token.weight": torch.zeros(1, 256)}, sam)
    files["/sam.pt"] = (sam.read_bytes(), "ok")
    with pytest.raises(CheckpointError, match="segment-anything.*not MedSAM2"):
        manager.download("medsam2_latest", url=f"{base}/sam.pt")
    files["/page.html"] = (b"<html>log in</html>", "ok")
    with pytest.raises(CheckpointError, match="not a PyTorch weights file"):
        manager.download("medsam2_us_heart", url=f"{base}/page.html")
    with pytest.raises(WeightsDownloadError, match="HTTP 404"):
        manager.download("medsam2_2411", url=f"{base}/nothing.pt")
    assert list(config.weights_dir().iterdir()) == []
    assert manager.resolve_medsam2() is None and manager.recorded_sha256("medsam2_latest") is None


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['MEDSAM_GUI_HOME']}/m2_pwned",))


def test_import_checks_structure_and_refuses_code(tmp_path, official_bytes, capsys):
    src = tmp_path / "my_medsam2.pt"
    src.write_bytes(official_bytes)
    assert main(["weights", "import", "medsam2", str(src)]) == 0
    used = config.weights_dir() / "MedSAM2_latest.pt"
    assert f"using {used}" in capsys.readouterr().out and manager.resolve_medsam2() == used
    assert manager.recorded_sha256("medsam2_latest") == hashlib.sha256(official_bytes).hexdigest()
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"no_obj_ptr": torch.zeros(1, 256)}, "x": _Payload()}, evil)
    assert main(["weights", "import", "medsam2_mri_liverlesion", str(evil)]) == 1
    assert "refused" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(os.environ["MEDSAM_GUI_HOME"], "m2_pwned"))
    short = tmp_path / "short.pt"
    sd = torch.load(src, weights_only=True)["model"]
    del sd["maskmem_tpos_enc"]
    torch.save({"model": sd}, short)
    with pytest.raises(CheckpointError, match="missing: maskmem_tpos_enc"):
        manager.import_weights("medsam2_us_heart", short)
    assert manager.resolve("medsam2_mri_liverlesion") is None and manager.resolve("medsam2_us_heart") is None


# ---------------------------------------------------------------- API

@pytest.fixture(scope="module")
def lung(lung_scan):
    return api.load_volume(lung_scan)


def test_segment_lesion_3d_matches_the_official_result(lung):
    g = m2.gold()
    window = tuple(float(v) for v in g["window"].tolist())
    seen = []
    mask = api.segment_lesion_3d(lung, KEY, box=BOX, engine=m2.engine(), window=window, z_range=(30, 36),
                                 on_slice=seen.append)
    assert mask.shape == lung.shape and mask.dtype == bool
    assert not mask[:30].any() and not mask[37:].any()
    diff = mask[30:37] != m2.unpack("mask_final")
    assert diff.sum() <= 10
    assert [u.index for u in seen][:4] == [33, 34, 35, 36] and len(seen) == 8


def test_propagate_dispatches_to_medsam2_no_object_is_empty(lung):
    g = m2.gold()
    window = tuple(float(v) for v in g["window"].tolist())
    eng = m2.engine()
    seen = []
    with m2.no_object(eng):
        mask = api.propagate(lung, {KEY: BOX}, engine=eng, window=window, z_range=(30, 36), on_slice=seen.append)
    assert mask.shape == lung.shape and not mask.any()
    assert len(seen) == 8 and not any(u.present for u in seen)
    with pytest.raises(MedsamGuiError, match="ONE key slice"):
        api.propagate(lung, {32: BOX, 34: BOX}, engine=eng)
    with pytest.raises(MedsamGuiError, match="outside the z-range"):
        api.segment_lesion_3d(lung, KEY, box=BOX, engine=eng, z_range=(0, 5))
    with pytest.raises(MedsamGuiError, match="exactly one prompt"):
        api.segment_lesion_3d(lung, KEY, engine=eng)
    with pytest.raises(CheckpointError, match="no MedSAM2 weights installed.*weights download medsam2_latest"):
        api.segment_lesion_3d(lung, KEY, box=BOX)


# ---------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def rule_checkpoint(tmp_path_factory):
    p = tmp_path_factory.mktemp("m2rule") / "MedSAM2_latest.pt"
    torch.save({"model": m2.rule_state_dict()}, p)
    return p


def test_cli_segment_medsam2_on_exact_grid(lung_scan, rule_checkpoint, tmp_path, capsys):
    out = tmp_path / "lesion.nii.gz"
    # window level,width -750,1500 = the golden's (-1500, 0)
    rc = main(["segment", str(lung_scan), "--engine", "medsam2", "--box", "33,206,347,229,368", "--propagate",
               "--z-range", "33,34", "--checkpoint", str(rule_checkpoint), "--window=-750,1500", "--label", "2",
               "--out", str(out)])
    err = capsys.readouterr()
    assert rc == 0, err.err
    assert "MedSAM2 loaded" in err.err and "slice 34: forward" in err.err and "(MedSAM2)" in err.out
    src, res = sitk.ReadImage(str(lung_scan)), sitk.ReadImage(str(out))
    assert res.GetSize() == src.GetSize()
    assert np.allclose(res.GetSpacing(), src.GetSpacing()) and np.allclose(res.GetOrigin(), src.GetOrigin())
    assert np.allclose(res.GetDirection(), src.GetDirection())
    arr = sitk.GetArrayFromImage(res)
    assert set(np.unique(arr)) == {0, 2}
    zs = np.flatnonzero(arr.any(axis=(1, 2)))
    assert set(zs) <= {33, 34} and 33 in zs
    # the key slice is the official key-slice mask of the box (golden), at most cut by the 3D component step
    key_mask = m2.unpack("recist_mask_prompt")
    got = arr[33] > 0
    assert not (got & ~key_mask).any() and got.sum() >= 0.9 * key_mask.sum()


def test_cli_segment_medsam2_argument_errors(lung_scan, rule_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "x.nii.gz")
    base = ["segment", str(lung_scan), "--engine", "medsam2", "--checkpoint", str(rule_checkpoint), "--out", out]
    cases = [
        (["--box", "33,206,347,229,368"], "add --propagate"),
        (["--box", "33,206,347,229,368", "--box", "34,206,347,229,368", "--propagate"], "ONE prompt"),
        (["--box", "33,206,347,229,368", "--propagate", "--z-range", "0,5"], "outside --z-range 0,5"),
        (["--recist", "60,206,347,229,368", "--propagate"], "outside the scan"),
        (["--box", "33,900,347,950,368", "--propagate"], "lies outside slice 33"),
    ]
    for extra, msg in cases:
        assert main(base + extra) == 1
        assert msg in capsys.readouterr().err
    assert main(["segment", str(lung_scan), "--engine", "medsam2", "--box", "33,206,347,229,368", "--propagate",
                 "--out", out]) == 1
    assert "no MedSAM2 weights installed" in capsys.readouterr().err
    assert not os.path.exists(out)
