"""Label table editing, JSON round trip, ITK-SNAP label description files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsam_gui.core.labels import (
    DEFAULT_COLORS_255,
    LabelInfo,
    LabelTable,
    LabelTableError,
    default_color,
    default_table,
)
from medsam_gui.errors import MedsamGuiError, ScanReadError
from medsam_gui.io import read_label_description, write_label_description
from medsam_gui.io.label_files import parse_label_description

DATA = Path(__file__).resolve().parent / "data"
ITKSNAP = DATA / "itksnap_brain_mr" / "MRIcrop-seg.label"


def test_default_table_and_colours():
    t = default_table()
    assert [(i.value, i.name) for i in t] == [(1, "label 1")]
    t3 = default_table(3)
    assert [i.name for i in t3] == ["label 1", "label 2", "label 3"]
    colours = [i.color for i in t3]
    assert len(set(colours)) == 3 and all(c[3] == 1.0 for c in colours)
    assert default_color(1) == default_color(1 + len(DEFAULT_COLORS_255))
    assert len(set(DEFAULT_COLORS_255)) == len(DEFAULT_COLORS_255)


def test_add_rename_recolour_remove_get_order():
    t = LabelTable()
    t.add(5, "liver")
    t.add(LabelInfo(2, "spleen", (0.0, 1.0, 0.0)))
    new = t.add()  # next free: 1
    assert new.value == 1 and new.name == "label 1"
    assert [i.value for i in t] == [1, 2, 5] and t.values() == [1, 2, 5]
    assert t.next_free_value() == 3
    assert t.get(2).name == "spleen" and t.get(2).color == (0.0, 1.0, 0.0, 1.0)
    assert t.get(9) is None and 9 not in t and 5 in t and len(t) == 3
    t.rename(5, "  big\tliver \n")
    assert t[5].name == "big liver"
    t.recolour(5, (0.1, 0.2, 0.3, 0.5))
    assert t[5].color == (0.1, 0.2, 0.3, 0.5)
    removed = t.remove(1)
    assert removed.value == 1 and t.values() == [2, 5] and t.next_free_value() == 1
    t.set_visible(2, False)
    assert t[2].visible is False


@pytest.mark.parametrize("action", [
    lambda t: t.add(1, "dup"),
    lambda t: t.add(0, "background"),
    lambda t: t.add(70000, "too big"),
    lambda t: t.add(1.5, "half"),
    lambda t: t.rename(42, "x"),
    lambda t: t.remove(42),
    lambda t: t.recolour(1, (2.0, 0, 0)),
    lambda t: t.recolour(1, (0.1, 0.2)),
])
def test_refusals(action):
    t = default_table()
    with pytest.raises(LabelTableError) as ei:
        action(t)
    assert isinstance(ei.value, MedsamGuiError)
    assert [i.value for i in t] == [1]


def test_json_round_trip():
    t = default_table(2)
    t.add(40, 'name with "quotes"', (0.5, 0.25, 0.125, 0.75), visible=False)
    text = json.dumps(t.to_dict())
    back = LabelTable.from_dict(json.loads(text))
    assert back == t
    assert back[40].visible is False and back[40].color == (0.5, 0.25, 0.125, 0.75)
    c = t.copy()
    c.rename(1, "changed")
    assert t[1].name == "label 1"
    with pytest.raises(LabelTableError):
        LabelTable.from_dict({"nope": 1})


def test_itksnap_file_round_trip_exact(tmp_path):
    table = read_label_description(ITKSNAP)
    assert len(table) == 11  # the 0 "Clear" line is background, not a label
    assert table[1].name == "vent-lat" and table[1].color_255 == (0, 30, 255)
    assert table[8].name == "corpus-callosum" and table[11].name == "arteries"
    assert table[4].color[3] == 1.0 and table[4].visible and table[4].mesh_visible
    out = tmp_path / "out.label"
    write_label_description(out, table)
    original = ITKSNAP.read_bytes()
    assert out.read_text().splitlines() == original.decode().splitlines()
    write_label_description(out, table, newline="\r\n")
    assert out.read_bytes() == original  # byte for byte with the file's CRLF line ends
    assert read_label_description(out) == table


def test_itksnap_alpha_visibility_and_parse_errors(tmp_path):
    t = LabelTable([LabelInfo(3, "faint", (1.0, 0.0, 0.0, 0.4), visible=False, mesh_visible=False)])
    p = tmp_path / "a.label"
    write_label_description(p, t)
    line = [ln for ln in p.read_text().splitlines() if ln.strip().startswith("3")][0]
    assert line.split()[:7] == ["3", "255", "0", "0", "0.40", "0", "0"]
    assert read_label_description(p) == t
    with pytest.raises(ScanReadError, match="line 2"):
        parse_label_description('# header\n1 2 3\n')
    with pytest.raises(ScanReadError, match="0..255"):
        parse_label_description('1 300 0 0 1 1 1 "x"\n')
    with pytest.raises(ScanReadError, match="already used"):
        parse_label_description('1 1 0 0 1 1 1 "x"\n1 1 0 0 1 1 1 "y"\n')
    with pytest.raises(ScanReadError, match="Cannot read"):
        read_label_description(tmp_path / "missing.label")
