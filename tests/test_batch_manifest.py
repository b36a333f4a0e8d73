"""The batch manifest (checked up front, every bad row listed), input checksums, the progress
line; no cluster here."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsam_gui.batch.manifest import ManifestError, read_manifest
from medsam_gui.batch.progress import Progress
from medsam_gui.core.prompts import Prompt
from medsam_gui.core.prompts_file import PromptsFile, ScanGrid, write_prompts_file
from medsam_gui.io import load_volume

DATA = Path(__file__).resolve().parent / "data"
HIPPO = DATA / "msd_hippocampus" / "hippocampus_003_image.nii.gz"
DICOM = DATA / "dcmqi_ct3slice_liver" / "dicom"


@pytest.fixture
def folder(tmp_path):
    shutil.copy(HIPPO, tmp_path / "h003.nii.gz")
    box = np.array([[12, 10, 8], [12, 10, 20], [12, 30, 20], [12, 30, 8]], float)
    write_prompts_file(tmp_path / "h003.json", PromptsFile(ScanGrid.of(load_volume(HIPPO)), (Prompt("box", 1, box),),
                                                           None))
    return tmp_path


def write(folder: Path, text: str) -> Path:
    (folder / "m.csv").write_text(text)
    return folder / "m.csv"


def test_good_rows_resolve_paths_and_defaults(folder):
    cases = read_manifest(write(folder, "scan,task,input,engine,label,out\n"
                                        "h003.nii.gz,boxes,h003.json,,,\n"
                                        f"{DICOM},auto,universal:liver+spleen,,4,liver_ct\n"
                                        "h003.nii.gz,boxes,h003.json,litemedsam,1,second\n"))
    a, b, c = cases
    assert (a.row, a.name, a.task, a.engine, a.label, a.model) == (2, "h003", "boxes", "medsam", None, "medsam")
    assert a.scan == folder / "h003.nii.gz" and a.input_path == folder / "h003.json"
    assert (b.engine, b.structures, b.label, b.name, b.input_path) == ("universal", ("liver", "spleen"), 4,
                                                                       "liver_ct", None)
    assert (c.engine, c.label) == ("litemedsam", 1)


def test_every_bad_row_is_listed(folder):
    (folder / "bad.json").write_text("[1, 2")
    text = ("scan,task,input,engine,label,out\n"
            "h003.nii.gz,boxes,h003.json,,,dup\n"          # fine
            "nowhere.nii.gz,boxes,h003.json,,,\n"          # missing scan
            "h003.nii.gz,segment,h003.json,,,x\n"          # unknown task
            "h003.nii.gz,boxes,bad.json,,,y\n"             # bad prompts JSON
            "h003.nii.gz,boxes,h003.json,sam,0,z\n"        # unknown engine, bad label
            "h003.nii.gz,auto,liver,,,w\n"                 # not MODEL:STRUCTURE
            "h003.nii.gz,universeg,h003.json,,,v\n"        # not an example set
            "h003.nii.gz,boxes,h003.json,,,dup\n"          # duplicate output name
            "h003.nii.gz,boxes,h003.json,,,../escape\n")   # not a plain name
    with pytest.raises(ManifestError) as err:
        read_manifest(write(folder, text))
    msg = str(err.value)
    assert "8 bad row(s)" in msg and "row 2:" not in msg
    for expected in ("row 3: scan", "nowhere.nii.gz does not exist", "row 4: unknown task 'segment'",
                     "row 5: ", "is not valid JSON", "row 6: ", "unknown engine 'sam'",
                     "label '0' is not a whole number",
                     "row 7: input 'liver' is not MODEL:STRUCTURE", "row 8: ", "not an example set",
                     "row 9: output name 'dup' is also row 2's", "row 10: out '../escape' must be a plain file name"):
        assert expected in msg


def test_header_and_empty_manifest(folder):
    with pytest.raises(ManifestError, match="missing input; unknown engin"):
        read_manifest(write(folder, "scan,task,engin\nh003.nii.gz,boxes,x\n"))
    with pytest.raises(ManifestError, match="has no rows"):
        read_manifest(write(folder, "scan,task,input\n"))
    with pytest.raises(ManifestError, match="Manifest not found"):
        read_manifest(folder / "none.csv")


def test_input_checksum_follows_scan_input_and_settings(folder):
    path = write(folder, "scan,task,input,label,out\nh003.nii.gz,boxes,h003.json,,a\nh003.nii.gz,boxes,h003.json,1,b\n"
                         f"{DICOM},boxes,h003.json,,d\n")
    a, b, d = read_manifest(path)
    before = a.input_checksum()
    assert before == read_manifest(path)[0].input_checksum() and before != b.input_checksum()
    assert d.input_checksum() != before  # a DICOM folder: all its files
    (folder / "h003.json").write_text((folder / "h003.json").read_text().replace('"label": 1', '"label": 2'))
    assert read_manifest(path)[0].input_checksum() != before


def test_progress_line_counts_and_quiet():
    out = io.StringIO()
    p = Progress(4, skipped=1, stream=out)
    p.case_finished({"case": "a", "status": "ok", "seconds": 2.0, "message": ""})
    p.case_finished({"case": "b", "status": "failed", "seconds": 1.0, "message": "scan unreadable"})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("a: ok (2.0 s) -- [########................] 1 done, 0 failed, 2 left, 1 skipped")
    assert lines[1].startswith("b: failed: scan unreadable (1.0 s)") and "1 done, 1 failed, 1 left" in lines[1]
    assert "left" in lines[1].rsplit(",", 1)[1]  # the time left
    quiet = io.StringIO()
    q = Progress(2, quiet=True, stream=quiet)
    q.case_finished({"case": "a", "status": "ok", "seconds": 2.0, "message": ""})
    assert quiet.getvalue() == "" and q.left == 1
