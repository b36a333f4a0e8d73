"""``medsam-gui auto``: automatic segmentation of named structures with Hermes-R or the CLIP-Driven
Universal Model (headless).

    medsam-gui auto SCAN --model hermes|universal --structures liver,spleen,...
        [--modality CT|MR|PET] [--overlap F] [--checkpoint CKPT] [--text-embedding FILE]
        --out OUT.nii.gz [--overwrite] [--device cpu|cuda]
    medsam-gui auto --model hermes|universal --list-structures

Structures are catalogue names, readable titles ("Left kidney") or the official indices
(Universal Model: 0-based organ index; Hermes: task id); ``--list-structures`` prints them.
The output label map lies on the scan's exact grid: structure i of --structures has label
value i (1..N, in the order given). Where structures overlap (an organ and its tumour) the
SMALLER structure wins. Beside OUT the ITK-SNAP label file OUT.label names each value.

``--checkpoint`` (Hermes: the Hermes-R file; Universal: clip_driven_universal_swin_unetr.pth)
and ``--text-embedding`` (Universal only: txt_encoding.pth) default to the files installed with
``medsam-gui weights download hermes_r`` / ``universal_model`` / ``universal_text_embedding``.
``--overlap`` is the sliding-window overlap, below 1 (default: as published, 0.5; less is
faster, e.g. 0.25). Every argument is checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import MedsamGuiError


class AutoCommandError(MedsamGuiError):
    """Bad input for ``medsam-gui auto``."""


def register(subparsers) -> argparse.ArgumentParser:
    from ..models.auto_models import AUTO_MODELS

    p = subparsers.add_parser("auto", help="segment named structures automatically (Hermes-R, Universal Model)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scan", nargs="?", help="scan file or DICOM folder")
    p.add_argument("--model", required=True, choices=AUTO_MODELS, type=str.lower,
                   help="hermes (Hermes-R: 71 structures of CT, MR and PET) or universal (CLIP-Driven Universal "
                        "Model: 32 abdominal CT structures)")
    p.add_argument("--structures", metavar="A,B,...",
                   help="comma-separated structures (names, titles or official indices); label values 1..N in "
                        "this order; where they overlap the smaller structure wins")
    p.add_argument("--list-structures", action="store_true", help="print the model's structures and exit")
    p.add_argument("--modality", choices=("CT", "MR", "PET"), type=str.upper,
                   help="the scan's modality (default: detected from the scan)")
    p.add_argument("--overlap", type=float, metavar="F",
                   help="sliding-window overlap in [0, 1) (default: as published, 0.5; less is faster)")
    p.add_argument("--checkpoint", metavar="CKPT", help="the model's weights file (default: installed)")
    p.add_argument("--text-embedding", metavar="FILE",
                   help="Universal Model: txt_encoding.pth (default: installed)")
    p.add_argument("--out", metavar="OUT", help="output label map (.nii.gz, .nii, .nrrd, .mha)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and OUT.label) if they exist")
    p.add_argument("--device", choices=("cpu", "cuda", "mps"), help="where the network runs (default: the best)")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run)
    return p


def list_structures(model: str) -> None:
    from ..models.auto_models import catalogue

    for s in catalogue(model):
        print(f"{s.index:>4}  {s.key:<32} {s.title:<36} {'/'.join(s.modalities):<10} {s.source}")


def check_out(path: str | None, overwrite: bool) -> Path:
    """The output path, refused early: wrong suffix, missing folder, existing file."""
    from ..io.readers import file_suffix
    from ..io.writers import LABEL_SUFFIXES, label_description_path

    if not path:
        raise AutoCommandError("give the output label map: --out OUT.nii.gz.")
    out = Path(path).expanduser()
    if file_suffix(out) not in LABEL_SUFFIXES:
        raise AutoCommandError(f"--out {out.name!r}: use a name ending in {', '.join(LABEL_SUFFIXES)}.")
    if not out.parent.is_dir():
        raise AutoCommandError(f"--out: the folder {out.parent} does not exist; create it first.")
    for target in (out, label_description_path(out)):
        if target.exists() and not overwrite:
            raise AutoCommandError(f"{target} already exists; choose another --out or add --overwrite.")
    return out


class Progress:
    """Prints "windows done / total, time left" as the windows arrive."""

    def __init__(self, say) -> None:
        self.say = say
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        spent = time.perf_counter() - self.t0
        left = spent / done * (total - done) if done else 0.0
        self.say(f"  window {done}/{total}, {spent:.0f} s spent, about {left:.0f} s left")


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..core.labels import LabelInfo, LabelTable, default_color
    from ..models import auto_models

    if args.list_structures:
        list_structures(args.model)
        return 0
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    if not args.scan:
        raise AutoCommandError("give the scan to segment (medsam-gui auto SCAN --model ... --structures ...).")
    if not args.structures:
        raise AutoCommandError(f"give --structures (list them with `medsam-gui auto --model {args.model} "
                               f"--list-structures`).")
    out = check_out(args.out, args.overwrite)
    names = [n for n in (p.strip() for p in args.structures.split(",")) if n]
    chosen = auto_models.find_structures(args.model, names)
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise AutoCommandError(f"--overlap must be at least 0 and below 1; got {args.overlap:g}.")
    if not Path(args.scan).expanduser().exists():
        raise AutoCommandError(f"the scan {args.scan} does not exist. Check the path.")
    checkpoint, text = auto_models.installed_weights(args.model, args.checkpoint, args.text_embedding)

    vol = api.load_volume(args.scan)
    modality = args.modality or (vol.modality if vol.modality in auto_models.MODALITIES else None)
    for s in auto_models.modality_mismatches(chosen, modality):
        say(f"warning: {s.title} was learnt on {'/'.join(s.modalities)}, the scan is {modality}.")
    t0 = time.perf_counter()
    segmenter = auto_models.load_auto_model(args.model, checkpoint, text_embedding=text, device=args.device)
    say(f"{args.model} loaded from {checkpoint} in {time.perf_counter() - t0:.1f} s")
    masks = api.auto_segment(vol, segmenter, [s.key for s in chosen], modality=modality, overlap=args.overlap,
                             progress=Progress(say))
    labels = auto_models.label_map([masks[s.key] for s in chosen])
    table = LabelTable(LabelInfo(i + 1, s.title, default_color(i + 1)) for i, s in enumerate(chosen))
    path = api.save_labels(labels, vol, out, label_table=table, overwrite=args.overwrite)
    if not args.quiet:
        print(f"{path}: {len(chosen)} structures in {time.perf_counter() - t0:.1f} s")
        for i, s in enumerate(chosen, start=1):
            n = int((labels == i).sum())
            print(f"  {i:>3} {s.title}: {n} voxels, {n * vol.voxel_volume_mm3 / 1000.0:.2f} mL")
    return 0
