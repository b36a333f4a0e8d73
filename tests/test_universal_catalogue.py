"""The Universal Model's catalogue: the 32 official organs in the official order."""

from __future__ import annotations

import re

from medsam_gui.models.auto_model import Structure
from medsam_gui.models.universal.catalogue import ORGAN_NAMES, STRUCTURES
from universal_helpers import golden


def test_official_order_and_names():
    assert ORGAN_NAMES == tuple(golden()["organ_names"].split("\n"))
    assert [s.index for s in STRUCTURES] == list(range(32))
    assert STRUCTURES[5].key == "liver" and STRUCTURES[0].key == "spleen" and STRUCTURES[1].key == "right_kidney"


def test_entries_are_unique_readable_ct_structures():
    assert all(isinstance(s, Structure) and s.model == "universal" for s in STRUCTURES)
    assert len({s.key for s in STRUCTURES}) == 32 and len({s.title.lower() for s in STRUCTURES}) == 32
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", s.key) for s in STRUCTURES)
    assert all(s.title[0].isupper() and "_" not in s.title for s in STRUCTURES)
    assert all(s.modalities == ("CT",) for s in STRUCTURES)
    assert STRUCTURES[24].source == "CLIP-Driven Universal Model organ index 24 (Celiac Truck)"
    assert STRUCTURES[24].title == "Celiac trunk"
