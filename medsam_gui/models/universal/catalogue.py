"""The 32 structures of the CLIP-Driven Universal Model, in its official organ order.

``ORGAN_NAMES`` are the official names (utils.ORGAN_NAME; index = output channel, 0-based);
:data:`STRUCTURES` gives each a catalogue key and a readable title. CT only.
"""

from __future__ import annotations

from ..auto_model import Structure

# (official name, key, readable title), official order
_ENTRIES = (
    ("Spleen", "spleen", "Spleen"),
    ("Right Kidney", "right_kidney", "Right kidney"),
    ("Left Kidney", "left_kidney", "Left kidney"),
    ("Gall Bladder", "gallbladder", "Gallbladder"),
    ("Esophagus", "esophagus", "Esophagus"),
    ("Liver", "liver", "Liver"),
    ("Stomach", "stomach", "Stomach"),
    ("Aorta", "aorta", "Aorta"),
    ("Postcava", "inferior_vena_cava", "Inferior vena cava (postcava)"),
    ("Portal Vein and Splenic Vein", "portal_and_splenic_vein", "Portal and splenic vein"),
    ("Pancreas", "pancreas", "Pancreas"),
    ("Right Adrenal Gland", "right_adrenal_gland", "Right adrenal gland"),
    ("Left Adrenal Gland", "left_adrenal_gland", "Left adrenal gland"),
    ("Duodenum", "duodenum", "Duodenum"),
    ("Hepatic Vessel", "hepatic_vessel", "Hepatic vessels"),
    ("Right Lung", "right_lung", "Right lung"),
    ("Left Lung", "left_lung", "Left lung"),
    ("Colon", "colon", "Colon"),
    ("Intestine", "intestine", "Intestine"),
    ("Rectum", "rectum", "Rectum"),
    ("Bladder", "urinary_bladder", "Urinary bladder"),
    ("Prostate", "prostate", "Prostate"),
    ("Left Head of Femur", "left_femoral_head", "Left femoral head"),
    ("Right Head of Femur", "right_femoral_head", "Right femoral head"),
    ("Celiac Truck", "celiac_trunk", "Celiac trunk"),
    ("Kidney Tumor", "kidney_tumor", "Kidney tumor"),
    ("Liver Tumor", "liver_tumor", "Liver tumor"),
    ("Pancreas Tumor", "pancreas_tumor", "Pancreas tumor"),
    ("Hepatic Vessel Tumor", "hepatic_vessel_tumor", "Hepatic vessel tumor"),
    ("Lung Tumor", "lung_tumor", "Lung tumor"),
    ("Colon Tumor", "colon_tumor", "Colon tumor"),
    ("Kidney Cyst", "kidney_cyst", "Kidney cyst"),
)

ORGAN_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _ENTRIES)

STRUCTURES: tuple[Structure, ...] = tuple(
    Structure(model="universal", key=key, title=title, index=i, modalities=("CT",),
              source=f"CLIP-Driven Universal Model organ index {i} ({name})")
    for i, (name, key, title) in enumerate(_ENTRIES)
)
