"""The prompts file (core.prompts_file) on real scans, and File > Save prompts… / Open prompts…
in the real app: the MedSAM panel's prompts and range round-trip in the scan's own voxel indices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from box_filler import box_filler

from medsam_gui.core.prompts import Prompt
from medsam_gui.core.prompts_file import (
    FORMAT,
    Propagation,
    PromptsFile,
    PromptsFileError,
    ScanGrid,
    read_prompts_file,
    write_prompts_file,
)
from medsam_gui.io import load_volume

DATA = Path(__file__).resolve().parent / "data" / "msd_hippocampus"
SCAN = DATA / "hippocampus_003_image.nii.gz"
OTHER = DATA / "hippocampus_001_image.nii.gz"


@pytest.fixture(scope="module")
def vol():
    return load_volume(SCAN)


def _file(vol, prop=Propagation(0, 5, 27)) -> PromptsFile:
    box = np.array([[12, 10, 8], [12, 10, 20], [12, 30, 20], [12, 30, 8]], float)
    line = np.array([[20, 15.5, 10], [20, 25, 22.25]])
    return PromptsFile(ScanGrid.of(vol), (Prompt("box", 1, box), Prompt("recist", 2, line)), prop)


def test_round_trip_keeps_prompts_grid_and_range(vol, tmp_path):
    pf = _file(vol)
    path = write_prompts_file(tmp_path / "p.json", pf)
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and doc["version"] == 1
    assert doc["scan"]["size_xyz"] == [34, 52, 35] and doc["scan"]["fingerprint"] == vol.fingerprint()
    assert doc["propagation"] == {"axis": 0, "first": 5, "last": 27}
    back = read_prompts_file(path)
    assert [(p.kind, p.label) for p in back.prompts] == [("box", 1), ("recist", 2)]
    for a, b in zip(back.prompts, pf.prompts):
        np.testing.assert_array_equal(a.vertices, b.vertices)
    assert back.propagation == Propagation(0, 5, 27) and back.scan == pf.scan
    assert back.labels() == [1, 2] and back.key_slices(0) == [12, 20]
    back.check_grid(vol)  # the same scan: accepted
    with pytest.raises(PromptsFileError, match="drawn on another scan grid"):
        back.check_grid(load_volume(OTHER))
    state = back.panel_state()
    assert (state["range_axis"], state["range_first"], state["range_last"]) == (0, 5, 27)
    assert [s["kind"] for s in state["shapes"]] == ["box", "recist"]


def test_without_propagation_is_2d_only(vol, tmp_path):
    back = read_prompts_file(write_prompts_file(tmp_path / "p.json", _file(vol, None)))
    assert back.propagation is None and "range_axis" not in back.panel_state()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(version=2), "newer medsam-gui"),
    (lambda d: d.update(format="other"), "not a medsam-gui prompts file"),
    (lambda d: d["prompts"][0].update(kind="circle"), "prompt 0 is malformed"),
    (lambda d: d["prompts"][1].update(vertices_zyx=[[20, 15, 10]]), "prompt 1 is malformed"),
    (lambda d: d["prompts"][0].update(label=0), "labels start at 1"),
    (lambda d: d["prompts"][1]["vertices_zyx"][1].__setitem__(2, 34), "prompt 1 lies outside the scan"),
    (lambda d: d["propagation"].update(last=35), "not within slices 0..34"),
    (lambda d: d["scan"].update(spacing=[1, 1]), "scan.spacing must be a list of 3"),
    (lambda d: d.update(prompts=[]), "non-empty list"),
])
def test_malformed_files_are_refused_with_the_reason(vol, tmp_path, edit, message):
    path = write_prompts_file(tmp_path / "p.json", _file(vol))
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(PromptsFileError, match=message):
        read_prompts_file(path)


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(PromptsFileError, match="not valid JSON"):
        read_prompts_file(tmp_path / "x.json")
    with pytest.raises(PromptsFileError, match="not found"):
        read_prompts_file(tmp_path / "none.json")


@pytest.mark.gui
def test_save_and_open_prompts_in_the_app(app_window, qtbot, tmp_path, monkeypatch):
    from medsam_gui.gui import prompts_file_actions
    from medsam_gui.gui.scripting import drag_on_layer

    win = app_window(show=False)  # build_app installs the File entries
    c, panel = win.controller, win.panels.medsam
    names = [a.text() for a in win.menu("file").actions()]
    assert names.index("Open prompts…") == names.index("Save prompts…") + 1
    vol = load_volume(SCAN)
    c.set_volume(vol)
    d, h, w = c.display_labels().shape
    panel.set_segmenter(box_filler((h, w)))
    c.set_active_label(1)
    c.set_current_slice(0, 12)
    panel.activate_box_tool()
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        drag_on_layer(panel.prompts_layer, (12, 10, 8), (12, 30, 20))
    c.set_active_label(2)
    c.set_current_slice(0, 20)
    panel.activate_recist_tool()
    with qtbot.waitSignal(panel.slice_painted, timeout=10_000):
        drag_on_layer(panel.prompts_layer, (20, 15, 10), (20, 25, 22))
    panel.propagation_box.from_spin.setValue(5)
    panel.propagation_box.to_spin.setValue(27)
    drawn = [np.asarray(v).copy() for v in panel.prompts_layer.data]
    state = panel.get_state()

    target = tmp_path / "h003.prompts.json"
    monkeypatch.setattr(prompts_file_actions, "ask_save_path", lambda parent, suggested: str(target))
    win.actions["save_prompts"].trigger()
    saved = read_prompts_file(target)
    saved.check_grid(vol)
    assert [(p.kind, p.label) for p in saved.prompts] == [("box", 1), ("recist", 2)]
    for p, s in zip(saved.prompts, state["shapes"]):  # the scan's own voxel indices
        np.testing.assert_allclose(p.vertices, s["vertices_zyx"])
    assert saved.propagation == Propagation(0, 5, 27)

    panel.prompts.clear()
    panel.propagation_box.from_spin.setValue(0)
    assert len(panel.prompts_layer.data) == 0
    monkeypatch.setattr(prompts_file_actions, "ask_open_path", lambda parent: str(target))
    win.actions["open_prompts"].trigger()
    assert len(panel.prompts_layer.data) == 2
    for v, want in zip(panel.prompts_layer.data, drawn):
        np.testing.assert_allclose(v, want)
    assert panel.propagation_box.limits == (5, 27)

    # a file drawn on another scan is refused and the prompts stay
    other = load_volume(OTHER)
    write_prompts_file(tmp_path / "other.json", PromptsFile(ScanGrid.of(other), saved.prompts[:1], None))
    monkeypatch.setattr(prompts_file_actions, "ask_open_path", lambda parent: str(tmp_path / "other.json"))
    win.actions["open_prompts"].trigger()
    assert c.last_error and "drawn on another scan grid" in c.last_error
    assert len(panel.prompts_layer.data) == 2
