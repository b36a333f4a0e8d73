"""Hermes-R catalogue: 71 tasks under the official task ids, names from each dataset's labels."""

from __future__ import annotations

import re

import hermes_helpers as H
from medsam_gui.models.auto_model import Structure
from medsam_gui.models.hermes.catalogue import STRUCTURES


def test_all_task_ids_once_with_unique_snake_case_keys():
    assert [s.index for s in STRUCTURES] == list(range(71))
    assert len({s.key for s in STRUCTURES}) == 71
    assert all(isinstance(s, Structure) and s.model == "hermes" for s in STRUCTURES)
    assert all(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", s.key) for s in STRUCTURES)
    assert all(s.modalities and set(s.modalities) <= {"CT", "MR", "PET"} for s in STRUCTURES)


def test_bcv_tasks_match_the_golden_task_table():
    rows = [line.split("\t") for line in H.gold()["task_table"].splitlines()[1:14]]
    by_index = {s.index: s for s in STRUCTURES}
    for _, task, label, organ in rows:
        s = by_index[int(task)]
        assert s.source == f"BCV (Synapse) label {label}"
        assert s.key == organ.replace(" ", "_") + "_bcv"


def test_dataset_blocks_follow_the_official_label_map():
    by_key = {s.key: s for s in STRUCTURES}
    expected = {"liver_lits": 0, "kidney_tumour_kits": 3, "spleen_amos": 4, "prostate_or_uterus_amos": 18,
                "spleen_bcv": 19, "left_lung_thorax": 32, "spinal_cord_thorax": 37, "liver_chaos": 38,
                "spleen_chaos": 41, "brainstem_hn": 42, "right_mandible_hn": 63, "left_ventricle_mnms": 64,
                "grey_matter_brain": 67, "cerebrospinal_fluid_brain": 69, "lesion_autopet": 70}
    assert {k: by_key[k].index for k in expected} == expected
    assert by_key["liver_amos"].modalities == ("CT", "MR")
    assert by_key["bladder_amos"].modalities == ("CT",)
    assert by_key["lesion_autopet"].modalities == ("PET",)
    assert by_key["liver_chaos"].title == "Liver (CHAOS)"
