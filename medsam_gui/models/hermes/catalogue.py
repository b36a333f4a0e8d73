"""The 71 Hermes-R tasks (task ids 0..70) as catalogue entries.

Task ids follow the official ``dataset_lab_map`` (training/dataset/dim3/dataset_config.py):
each dataset's labels 1..n map to consecutive task ids, in this order: LiTS, KiTS19, AMOS (CT;
AMOS MR shares ids 4..16), BCV, StructSeg 2019 thoracic OAR, CHAOS, StructSeg 2019 head & neck
OAR, M&Ms, brain structures, AutoPET. Names follow each dataset's label convention; the same
organ from two datasets is two tasks, so keys carry the dataset: ``liver_bcv``, ``liver_amos``.
Modalities are those the task was trained on (AMOS labels 14 and 15 were CT only).
"""

from __future__ import annotations

from ..auto_model import Structure

# (key suffix, dataset title, source prefix, modalities, label names in label order)
_DATASETS: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("lits", "LiTS", "LiTS label", ("CT",), ("liver", "liver tumour")),
    ("kits", "KiTS19", "KiTS19 label", ("CT",), ("kidney", "kidney tumour")),
    ("amos", "AMOS", "AMOS label", ("CT", "MR"), (
        "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
        "inferior vena cava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
        "bladder", "prostate or uterus")),
    ("bcv", "BCV", "BCV (Synapse) label", ("CT",), (
        "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
        "inferior vena cava", "portal and splenic vein", "pancreas", "right adrenal gland",
        "left adrenal gland")),
    ("thorax", "StructSeg thorax", "StructSeg 2019 thoracic OAR label", ("CT",), (
        "left lung", "right lung", "heart", "esophagus", "trachea", "spinal cord")),
    ("chaos", "CHAOS", "CHAOS MR label", ("MR",), ("liver", "right kidney", "left kidney", "spleen")),
    ("hn", "StructSeg head & neck", "StructSeg 2019 head & neck OAR label", ("CT",), (
        "brainstem", "left eye", "right eye", "left lens", "right lens", "left optic nerve",
        "right optic nerve", "optic chiasm", "left temporal lobe", "right temporal lobe", "pituitary",
        "left parotid gland", "right parotid gland", "left inner ear", "right inner ear",
        "left middle ear", "right middle ear", "left temporomandibular joint",
        "right temporomandibular joint", "spinal cord", "left mandible", "right mandible")),
    ("mnms", "M&Ms", "M&Ms cine MR label", ("MR",), (
        "left ventricle", "left ventricular myocardium", "right ventricle")),
    ("brain", "brain structures", "brain structure (GM/WM/CSF maps) class", ("MR",), (
        "grey matter", "white matter", "cerebrospinal fluid")),
    ("autopet", "AutoPET", "AutoPET (FDG PET SUV) label", ("PET",), ("lesion",)),
)
AMOS_CT_ONLY_LABELS = (14, 15)   # zeroed in AMOS MR by the official converter


def _build() -> tuple[Structure, ...]:
    out = []
    task = 0
    for suffix, title, source, modalities, names in _DATASETS:
        for label, name in enumerate(names, start=1):
            mods = ("CT",) if suffix == "amos" and label in AMOS_CT_ONLY_LABELS else modalities
            key = f"{name.replace(' ', '_')}_{suffix}"
            out.append(Structure("hermes", key, f"{name[0].upper()}{name[1:]} ({title})", task, mods,
                                 f"{source} {label}"))
            task += 1
    return tuple(out)


STRUCTURES: tuple[Structure, ...] = _build()
