"""The shared MedSAM test objects under their old names (built once per process in
tests/gui_fixtures.py; tests can ask for the fixtures medsam_state_dict, medsam_checkpoint,
medsam_engine instead)."""

from gui_fixtures import GOLDEN_DIR as GOLDEN
from gui_fixtures import engine, hippocampus_embedding, hippocampus_golden, vit_b_checkpoint, vit_b_state_dict

__all__ = ["GOLDEN", "engine", "hippocampus_embedding", "hippocampus_golden", "vit_b_checkpoint",
           "vit_b_state_dict"]
