"""The automatic models' catalogue look-up (names, titles, official indices, one error for every
unknown name), the label map of several structures (the smaller wins) and the registry's
built-in entries, with the stand-in catalogue."""

from __future__ import annotations

import numpy as np
import pytest

from auto_stand_in import spec
from medsam_gui import cli
from medsam_gui.errors import MedsamGuiError
from medsam_gui.models import auto_models
from medsam_gui.models import weights as manager


@pytest.fixture
def hermes():
    with auto_models.registered(spec("hermes")):
        yield


def test_find_by_key_title_and_index(hermes):
    found = auto_models.find_structures("Hermes", ["DENSE BONE", 10, " soft-tissue ", "12", "bone", "Body"])
    assert [s.key for s in found] == ["dense_bone", "body", "soft_tissue", "bone"]  # each once, in order
    assert found[0].title == "Dense bone" and found[1].index == 10 and found[0].model == "hermes"


def test_unknown_names_in_one_error(hermes):
    with pytest.raises(MedsamGuiError) as err:
        auto_models.find_structures("hermes", ["bones", "liver", 99, "body"])
    text = str(err.value)
    assert "3 of the structures" in text and "'bones' (did you mean bone?)" in text
    assert "'liver';" in text and "'99'." in text and "--list-structures" in text
    with pytest.raises(MedsamGuiError, match="name at least one hermes structure"):
        auto_models.find_structures("hermes", [])
    with pytest.raises(MedsamGuiError, match="unknown automatic model 'totalseg'"):
        auto_models.catalogue("totalseg")


def test_label_map_smaller_wins():
    organ = np.zeros((4, 5, 6), bool)
    organ[1:3] = True
    tumour = np.zeros_like(organ)
    tumour[2, 1:3, 1:3] = True
    other = np.zeros_like(organ)
    other[0] = True
    labels = auto_models.label_map([tumour, organ, other])
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels == 1, tumour)
    np.testing.assert_array_equal(labels == 2, organ & ~tumour)
    np.testing.assert_array_equal(labels == 3, other)
    assert auto_models.label_map([organ] * 300).dtype == np.uint16


def test_builtin_entries_use_the_model_manager():
    for name in auto_models.AUTO_MODELS:
        s = auto_models.model_spec(name)
        assert manager.get_model(s.weights).kind == name and s.default_overlap == 0.5
    assert auto_models.model_spec("universal").text_embedding == "universal_text_embedding"
    assert auto_models.model_spec("hermes").text_embedding is None


def test_help_states_the_overlap_rule(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["auto", "--help"])
    assert exited.value.code == 0
    assert "the\nSMALLER structure wins" in capsys.readouterr().out


def test_real_catalogues_resolve_names_titles_and_official_indices():
    from medsam_gui.models.auto_models import catalogue, find_structures

    hermes, universal = catalogue("hermes"), catalogue("universal")
    assert [s.index for s in hermes] == list(range(71)) and [s.index for s in universal] == list(range(32))
    assert [s.key for s in find_structures("universal", ["liver", 0, "Left Kidney"])] == ["liver", "spleen",
                                                                                           "left_kidney"]
    assert find_structures("hermes", [24])[0].key == "liver_bcv"  # BCV task ids 19..31 = labels 1..13; liver is 6
    assert all(s.modalities and s.source for s in hermes + universal)
