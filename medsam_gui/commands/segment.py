"""``medsam-gui segment``: segment structures in a scan with MedSAM from boxes (headless).

    medsam-gui segment SCAN --box Z,X0,Y0,X1,Y1 [--box ...] [--recist Z,X0,Y0,X1,Y1]
        [--margin PX] [--label N] [--name NAME] [--engine medsam|litemedsam] [--checkpoint CKPT] --out OUT.nii.gz
        [--window L,W | --window-preset NAME] [--modality CT|MR]
        [--precision fp32|auto|fast|int8] [--device cpu|cuda|auto] [--propagate [--z-range A,B]]

Boxes are on axial slices of the (z, y, x) voxel array: Z is the slice index, X0..X1 columns
and Y0..Y1 rows (inclusive voxel indices, 0-based). ``--recist`` gives a long-axis line
(X0,Y0)-(X1,Y1) on slice Z; it becomes a square box around the line, ``--margin`` pixels
wider on each side (default 5). All boxes paint label ``--label`` (default 1). With
``--propagate`` the structure is followed from the boxed (key) slices through the volume
(between key slices with interpolated boxes, beyond them from each slice's mask), limited to
``--z-range`` if given. The output label map lies on the scan's exact grid.

Beside OUT an ITK-SNAP label description ``<OUT stem>.label`` names the label (``--name``,
default "label N"), as the app writes with its labels. Every argument is checked (the scan
and weights exist, OUT's format, folder and permissions, the boxes and slices lie in the scan)
before the model is loaded, so a mistake costs no model time.

The intensity window is ``--window`` / ``--window-preset``, else CT soft tissue (40/400) or
the MR percentile auto window, applied to the whole volume as in MedSAM's reference.
``--engine`` picks the model: ``medsam`` (MedSAM ViT-B, default) or ``litemedsam`` (LiteMedSAM:
a TinyViT encoder at 256x256, much faster on a CPU). ``--checkpoint`` may be left out once the
engine's weights are installed (``medsam-gui weights download medsam_vit_b`` / ``litemedsam``).

MedSAM2 (``--engine medsam2``): ONE --box (or --recist line) on the key slice becomes the
whole 3D lesion, followed forwards and backwards with MedSAM2's memory (``--propagate``),
within ``--z-range`` if given; slices where the model sees no object stay empty:

    medsam-gui segment SCAN --engine medsam2 --box Z,X0,Y0,X1,Y1 --propagate [--z-range A,B]
        [--checkpoint MedSAM2_latest.pt] --out OUT.nii.gz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import MedsamGuiError
from ..models.device import PRECISION_CHOICES
from . import validation

DEFAULT_RECIST_MARGIN = 5.0


class SegmentCommandError(MedsamGuiError):
    """Bad input for ``medsam-gui segment`` (a box off the scan, conflicting options)."""


def _numbers(kind: str, count: int, cast=float):
    def parse(text: str):
        parts = [p for p in text.replace(";", ",").split(",")]
        if len(parts) != count:
            raise argparse.ArgumentTypeError(f"{kind} needs {count} comma-separated numbers, got {text!r}")
        try:
            return tuple(cast(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind}: cannot read {text!r} as numbers") from None
    return parse


def _slice_box(kind: str):
    inner = _numbers(kind, 5, float)

    def parse(text: str):
        vals = inner(text)
        if vals[0] != int(vals[0]):
            raise argparse.ArgumentTypeError(f"{kind}: the slice index Z must be a whole number, got {vals[0]}")
        return (int(vals[0]), *vals[1:])
    return parse


def register(subparsers) -> argparse.ArgumentParser:
    from ..core.intensity import WINDOW_PRESETS

    p = subparsers.add_parser("segment", help="segment with MedSAM from boxes (optionally propagate in 3D)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scan", help="scan file or DICOM folder")
    p.add_argument("--box", action="append", default=[], type=_slice_box("--box"), metavar="Z,X0,Y0,X1,Y1",
                   help="box on axial slice Z (voxel indices; x = column, y = row); repeatable")
    p.add_argument("--recist", action="append", default=[], type=_slice_box("--recist"), metavar="Z,X0,Y0,X1,Y1",
                   help="RECIST long-axis line on slice Z, turned into a square box; repeatable")
    p.add_argument("--margin", type=float, default=DEFAULT_RECIST_MARGIN, metavar="PX",
                   help="margin around a --recist line in pixels (default 5); with --propagate also "
                        "the margin around each propagated mask")
    p.add_argument("--label", type=int, default=1, metavar="N", help="label value to paint (default 1)")
    p.add_argument("--name", metavar="NAME",
                   help='name of the label in the ITK-SNAP OUT.label written beside OUT (default "label N")')
    p.add_argument("--engine", choices=("medsam", "litemedsam", "medsam2"), default="medsam",
                   help="model: medsam (MedSAM ViT-B, default), litemedsam (LiteMedSAM, fast on a CPU) or "
                        "medsam2 (MedSAM2 with memory: one --box/--recist on the key slice -> the 3D lesion; "
                        "needs --propagate)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="the engine's weights (medsam_vit_b.pth / lite_medsam.pth / MedSAM2_latest.pt); "
                        "default: installed")
    p.add_argument("--out", required=True, metavar="OUT", help="output label map (.nii.gz, .nii, .nrrd, .mha)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    win = p.add_mutually_exclusive_group()
    win.add_argument("--window", type=_numbers("--window", 2), metavar="L,W", help="window level,width")
    win.add_argument("--window-preset", choices=sorted(WINDOW_PRESETS), metavar="NAME",
                     help=f"window preset: {', '.join(sorted(WINDOW_PRESETS))}")
    p.add_argument("--modality", choices=("CT", "MR"), type=str.upper, help="override the detected modality")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                   help="fp32 (reference-exact, default); auto (bf16 on CUDA, 'fast' on CPU); fast (float32, "
                        "~1.7x faster on CPU); int8 (CPU, ~1.9x faster, masks agree with fp32); bf16; fp16")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--propagate", action="store_true", help="follow the structure through the volume")
    p.add_argument("--z-range", type=_numbers("--z-range", 2, int), metavar="A,B",
                   help="with --propagate: first and last slice (inclusive) it may reach")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run)
    return p


def key_boxes(prompts) -> dict[int, tuple]:
    """{z: box} from [(z, box)]: several boxes on one key slice become their union."""
    keys: dict[int, tuple] = {}
    for z, box in prompts:
        k = keys.get(z)
        keys[z] = tuple(box) if k is None else (min(k[0], box[0]), min(k[1], box[1]),
                                                 max(k[2], box[2]), max(k[3], box[3]))
    return keys


def collect_boxes(shape_zyx, boxes, recists, margin: float) -> list[tuple[int, tuple[float, float, float, float]]]:
    """[(z, (x0, y0, x1, y1))] from --box and --recist values, checked against the scan and
    clipped to the slice."""
    from ..core.prompts import Box, recist_to_box

    nz, h, w = (int(s) for s in shape_zyx)
    out = []
    items = [("--box", b) for b in boxes] + [("--recist", r) for r in recists]
    for kind, (z, x0, y0, x1, y1) in items:
        if not 0 <= z < nz:
            raise SegmentCommandError(f"{kind} slice {z} is outside the scan (slices 0..{nz - 1}).")
        if kind == "--box":
            box = Box(x0, y0, x1, y1)
        else:
            if margin < 0:
                raise SegmentCommandError("--margin must be 0 or more.")
            box = recist_to_box((x0, y0), (x1, y1), margin=margin)
        if box.x1 < 0 or box.y1 < 0 or box.x0 > w - 1 or box.y0 > h - 1:
            raise SegmentCommandError(
                f"{kind} {z},{x0:g},{y0:g},{x1:g},{y1:g} lies outside slice {z} (columns 0..{w - 1}, rows 0..{h - 1})."
            )
        out.append((z, box.clip(h, w).xyxy()))
    return out


def check_arguments(args: argparse.Namespace) -> tuple[Path, Path, Path, tuple[float, float] | None]:
    """Every check that needs no scan and no model: (scan, out, checkpoint, window)."""
    from .. import api

    if not args.box and not args.recist:
        raise SegmentCommandError("give at least one --box Z,X0,Y0,X1,Y1 (or --recist).")
    if not 1 <= args.label <= 65535:
        raise SegmentCommandError(f"--label must be between 1 and 65535, got {args.label}.")
    if args.z_range and not args.propagate:
        raise SegmentCommandError("--z-range only applies with --propagate.")
    if args.margin < 0:
        raise SegmentCommandError("--margin must be 0 or more.")
    if args.engine == "medsam2":
        count = len(args.box) + len(args.recist)
        if count != 1:
            raise SegmentCommandError(f"--engine medsam2 starts from ONE prompt on the key slice: give one --box "
                                      f"or one --recist (got {count}).")
        if not args.propagate:
            raise SegmentCommandError("--engine medsam2 segments the lesion in 3D: add --propagate (and --z-range "
                                      "A,B to limit the slices).")
    scan = validation.check_input(args.scan, "the scan")
    out = validation.check_output(args.out, overwrite=args.overwrite, inputs=[scan], label_description=True)
    if args.engine == "medsam2":
        checkpoint = api.resolve_medsam2_checkpoint(args.checkpoint)
    else:
        checkpoint = api.resolve_checkpoint(args.engine, args.checkpoint)
    return scan, out, checkpoint, validation.check_window(args.window, args.window_preset)


def label_table(args: argparse.Namespace):
    """The one-entry label table written as ``OUT.label`` (ITK-SNAP), as the app writes its labels."""
    from ..core.labels import LabelTable

    table = LabelTable()
    table.add(args.label, args.name)
    return table


def save_result(args: argparse.Namespace, labels: np.ndarray, vol, out: Path) -> Path:
    """Write the label map on the scan's grid and ``<stem>.label`` with its name beside it."""
    from .. import api

    return api.save_labels(labels, vol, out, label_table=label_table(args), overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    from .. import api

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    scan, out, checkpoint, window = check_arguments(args)
    if args.engine == "medsam2":
        return run_medsam2(args, scan, out, checkpoint, window, say)

    engine_name = args.engine
    title = api.ENGINES[engine_name][1]
    vol = api.load_volume(scan)
    prompts = collect_boxes(vol.shape, args.box, args.recist, args.margin)
    nz = vol.shape[0]
    z_range = validation.check_range(args.z_range, nz)

    t0 = time.perf_counter()
    engine = api.load_engine(engine_name, checkpoint, device=args.device, precision=args.precision)
    say(f"{title} loaded from {checkpoint} on {engine.device} ({engine.precision}) in {time.perf_counter() - t0:.1f} s")
    dtype = np.uint8 if args.label <= 255 else np.uint16
    labels = np.zeros(vol.shape, dtype=dtype)
    if args.propagate:
        kinds: dict[str, int] = {}

        def on_slice(res) -> None:
            kinds[res.kind] = kinds.get(res.kind, 0) + 1
            say(f"  slice {res.index}: {res.kind}")

        mask = api.propagate(vol, key_boxes(prompts), z_range=z_range, margin=args.margin, engine=engine,
                             modality=args.modality, window=window, on_slice=on_slice)
        labels[mask] = args.label
        say("  propagated: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    else:
        with api.open_predictor(vol, engine=engine, modality=args.modality, window=window) as predictor:
            for z, box in prompts:
                t = time.perf_counter()
                labels[z][predictor.segment_box(z, box)] = args.label
                say(f"  slice {z}: {time.perf_counter() - t:.1f} s")
    path = save_result(args, labels, vol, out)
    n = int(np.count_nonzero(labels))
    slices = int(np.count_nonzero(labels.reshape(nz, -1).any(axis=1)))
    ml = n * vol.voxel_volume_mm3 / 1000.0
    if not args.quiet:
        print(f"{path}: label {args.label}, {n} voxels ({ml:.2f} mL) on {slices} slices "
              f"in {time.perf_counter() - t0:.1f} s")
    return 0


def run_medsam2(args: argparse.Namespace, scan: Path, out: Path, checkpoint: Path, window, say) -> int:
    """``--engine medsam2``: one --box or --recist on the key slice -> the 3D lesion (MedSAM2)."""
    from .. import api

    vol = api.load_volume(scan)
    nz, h, w = (int(v) for v in vol.shape)
    (kind, (z, x0, y0, x1, y1)), = [("box", b) for b in args.box] + [("recist", r) for r in args.recist]
    if not 0 <= z < nz:
        raise SegmentCommandError(f"--{kind} slice {z} is outside the scan (slices 0..{nz - 1}).")
    if max(x0, x1) < 0 or max(y0, y1) < 0 or min(x0, x1) > w - 1 or min(y0, y1) > h - 1:
        raise SegmentCommandError(f"--{kind} {z},{x0:g},{y0:g},{x1:g},{y1:g} lies outside slice {z} "
                                  f"(columns 0..{w - 1}, rows 0..{h - 1}).")
    if kind == "box" and (x1 < x0 or y1 < y0):
        raise SegmentCommandError(f"--box needs X0 <= X1 and Y0 <= Y1; got {x0:g},{y0:g},{x1:g},{y1:g}.")
    z_range = validation.check_range(args.z_range, nz)
    if z_range is not None and not z_range[0] <= z <= z_range[1]:
        raise SegmentCommandError(f"the key slice {z} is outside --z-range {z_range[0]},{z_range[1]}.")

    t0 = time.perf_counter()
    engine = api.load_medsam2(checkpoint, device=args.device, precision=args.precision)
    say(f"MedSAM2 loaded from {checkpoint} on {engine.device} ({engine.precision}) in "
        f"{time.perf_counter() - t0:.1f} s")

    def on_slice(upd) -> None:
        say(f"  slice {upd.index}: {upd.direction}, {upd.area} voxels" + ("" if upd.present else " (no object)"))

    prompt = {"box": (x0, y0, x1, y1)} if kind == "box" else {"recist": ((x0, y0), (x1, y1))}
    mask = api.segment_lesion_3d(vol, z, **prompt, engine=engine, window=window, modality=args.modality,
                                 z_range=z_range, on_slice=on_slice)
    labels = np.zeros(vol.shape, dtype=np.uint8 if args.label <= 255 else np.uint16)
    labels[mask] = args.label
    path = save_result(args, labels, vol, out)
    n = int(np.count_nonzero(labels))
    slices = int(np.count_nonzero(labels.reshape(nz, -1).any(axis=1)))
    if not args.quiet:
        print(f"{path}: label {args.label}, {n} voxels ({n * vol.voxel_volume_mm3 / 1000.0:.2f} mL) on {slices} "
              f"slices (MedSAM2) in {time.perf_counter() - t0:.1f} s")
    return 0
