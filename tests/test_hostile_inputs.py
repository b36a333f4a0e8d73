"""Hostile inputs: every malformed scan either opens as a valid Volume or raises a
MedsamGuiError with a message, fast, without running code; every bad checkpoint raises
CheckpointError from the MedSAM and UniverSeg loaders. The corpus is tests/hostile_corpus.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import hostile_corpus as hc  # tests/ is on sys.path (rootdir conftest, rootdir-relative import)
from medsam_gui.errors import CheckpointError, MedsamGuiError
from medsam_gui.models.medsam import load_medsam_state_dict
from medsam_gui.models.universeg import universeg_v1

REPO = Path(__file__).resolve().parent.parent
CASE_TIMEOUT_S = 30.0


def _run_with_timeout(fn, timeout=CASE_TIMEOUT_S):
    """(result, exception) of fn() run on a daemon thread; AssertionError if it hangs."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"did not finish within {timeout} s (hangs on this input)")
    return box.get("result"), box.get("exc")


@pytest.fixture(scope="module")
def scan_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_scans")
    return folder, hc.build_scan_corpus(folder)


@pytest.fixture(scope="module")
def checkpoint_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_checkpoints")
    return folder, hc.build_checkpoint_corpus(folder)


def test_corpus_size():
    assert len(hc.SCAN_CASES) >= 40
    assert len(hc.CHECKPOINT_CASES) >= 10
    assert {c.expect for c in hc.SCAN_CASES} <= {"open", "error", "either", "error_or_notice"}
    assert sum(c.expect == "open" for c in hc.SCAN_CASES) >= 8  # the corpus is not only garbage


def _check_valid_volume(vol, case) -> None:
    from medsam_gui.core.volume import Volume

    assert isinstance(vol, Volume), f"returned {type(vol).__name__}, not a Volume"
    arr = vol.array
    assert isinstance(arr, np.ndarray) and arr.ndim == 3 and min(arr.shape) >= 1, f"bad array {arr.shape}"
    assert arr.dtype.kind in "biuf", f"non-numeric dtype {arr.dtype}"
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all(), "NaN/Inf voxels left in the array"
    assert all(math.isfinite(s) and s > 0 for s in vol.spacing), f"bad spacing {vol.spacing}"
    assert all(math.isfinite(o) for o in vol.origin), f"bad origin {vol.origin}"
    d = np.asarray(vol.direction, float).reshape(3, 3)
    assert np.isfinite(d).all() and abs(np.linalg.det(d)) > 1e-6, f"bad direction {vol.direction}"
    assert vol.path, "no path recorded"
    assert isinstance(vol.meta.get("notices"), list), f"meta['notices'] missing: {sorted(vol.meta)}"
    if case.notice or "component" in case.kwargs:  # every non-fatal finding is told to the user
        assert _has_notice(vol), f"no notice for {case.notice or 'component'}: {vol.meta.get('notices')}"
    if case.notice == "2d":
        assert arr.shape[0] == 1, f"2D image should be one slice, got {arr.shape}"
    if case.notice == "nonfinite":
        assert vol.meta.get("nonfinite_replaced", 0) >= 5, f"NaN/Inf count not reported: {vol.meta}"
    if case.notice == "oblique":
        from medsam_gui.core.orientation import DisplayOrientation

        assert DisplayOrientation.from_direction(vol.direction, vol.shape).oblique, "oblique not flagged"
    if "component" in case.kwargs:
        assert vol.meta.get("component") == case.kwargs["component"]
    if "series_uid" in case.kwargs:
        assert vol.meta.get("series_uid") == case.kwargs["series_uid"]


def _has_notice(vol) -> bool:
    """The agreed convention: ``meta["notices"]`` is a non-empty list of non-empty strings."""
    notices = vol.meta.get("notices")
    return isinstance(notices, list) and bool(notices) and all(isinstance(n, str) and n.strip() for n in notices)


@pytest.mark.parametrize("name", [c.name for c in hc.SCAN_CASES])
def test_load_volume_hostile(scan_corpus, name):
    from medsam_gui.io import load_volume

    folder, built = scan_corpus
    b = built[name]
    case = b.case
    vol, exc = _run_with_timeout(lambda: load_volume(b.path, **case.kwargs))
    assert not (folder / hc.MARKER_NAME).exists(), "loading a scan executed code"
    if exc is not None:
        assert isinstance(exc, MedsamGuiError), f"raised {type(exc).__name__}: {exc}"
        assert str(exc).strip(), "empty error message"
        assert case.expect != "open", f"should open ({case.why}) but raised {type(exc).__name__}: {exc}"
        if case.error:
            assert type(exc).__name__ == case.error or any(
                k.__name__ == case.error for k in type(exc).__mro__), f"expected {case.error}, got {type(exc).__name__}"
        return
    assert case.expect != "error", f"should be refused ({case.why}) but opened with shape {vol.shape}"
    _check_valid_volume(vol, case)
    if case.expect == "error_or_notice":
        assert _has_notice(vol), f"opened silently ({case.why}); meta={sorted(vol.meta)}"


CLI_CASES = ["truncated .nii.gz at 0.5", "random bytes .nrrd", "huge nrrd 100000^3", "png named .nii.gz",
             "empty folder", "dicom mixed series", "4d nifti without component", "singular directions nrrd",
             "pickle named .nii.gz"]


def test_cli_info_hostile(scan_corpus):
    """``medsam-gui info`` on a handful of cases: exit 1 with a one-line message, no traceback;
    the control (a 2D image) exits 0. All processes run concurrently."""
    folder, built = scan_corpus
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = {}
    for name in CLI_CASES + ["2d nifti"]:
        procs[name] = subprocess.Popen([sys.executable, "-m", "medsam_gui", "info", str(built[name].path)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    problems = []
    for name, p in procs.items():
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            problems.append(f"{name}: timed out")
            continue
        if name == "2d nifti":
            if p.returncode != 0 or "size (x,y,z): 34 x 52 x 1" not in out:
                problems.append(f"{name}: rc={p.returncode} out={out[-300:]} err={err[-300:]}")
            continue
        if p.returncode != 1:
            problems.append(f"{name}: exit code {p.returncode}")
        if "Traceback" in err:
            problems.append(f"{name}: traceback in stderr: {err[-500:]}")
        if "medsam-gui: error: " not in err:
            problems.append(f"{name}: no error message: {err[-300:]}")
    assert problems == []
    assert not (folder / hc.MARKER_NAME).exists()


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------
def _universeg_loader(path):
    return universeg_v1(weights=path)


@pytest.fixture(scope="module")
def _torch_threads():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("name, target", [pytest.param(c.name, t, id=f"{t}: {c.name}")
                                          for c in hc.CHECKPOINT_CASES for t in c.targets])
def test_bad_checkpoint_refused(checkpoint_corpus, name, target, _torch_threads):
    folder, built = checkpoint_corpus
    load = load_medsam_state_dict if target == "medsam" else _universeg_loader
    result, exc = _run_with_timeout(lambda: load(built[name].path), timeout=60)
    assert not (folder / hc.MARKER_NAME).exists(), "loading a checkpoint executed code"
    assert exc is not None, f"accepted a bad checkpoint ({built[name].case.why})"
    assert isinstance(exc, CheckpointError), f"raised {type(exc).__name__}: {exc}"
    assert len(str(exc).strip()) > 20, f"message too short: {exc}"


def test_good_universeg_checkpoint_still_loads(checkpoint_corpus, _torch_threads):
    """Control: the loader does not refuse everything (the golden state dict loads)."""
    folder, built = checkpoint_corpus
    model = _universeg_loader(folder / "_universeg_full.pt")
    assert sum(p.numel() for p in model.parameters()) == 1_182_785
