"""``medsam-gui universeg``: fill the unlabeled slices of a scan with UniverSeg (headless).

    medsam-gui universeg SCAN (--support-labels PARTIAL.nii.gz | --example-set FILE)
        [--label N] [--z-range A,B] [--support-size S] [--window L,W | --window-preset NAME]
        [--checkpoint CKPT] --out OUT.nii.gz [--save-example-set FILE] [--device cpu|cuda|auto]

With ``--support-labels``: the slices where a label is drawn are its support and are written
unchanged; the slices between its first and last labeled slice (extended by ``--z-range``) are
filled. Every label present is segmented unless ``--label`` picks one; several labels are
combined without overlap (highest probability). With ``--example-set``: a saved support set is
used on this scan; the targets are ``--z-range`` (default: all slices) and the label value is
``--label`` or the one stored in the set. The output label map lies on the scan's exact grid.

Window: ``--window``/``--window-preset``; otherwise CT uses the soft-tissue window (or, with an
example set from a CT, the set's window) and MR the scan's percentile auto window.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import MedsamGuiError
from . import validation


class UniversegCommandError(MedsamGuiError):
    """Bad combination of options for ``medsam-gui universeg``."""


def _pair(kind: str, cast):
    def parse(text: str):
        parts = text.replace(":", ",").split(",")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"{kind} needs two comma-separated values, got {text!r}")
        try:
            return cast(parts[0]), cast(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind}: cannot read {text!r} as two numbers") from None
    return parse


def register(subparsers) -> argparse.ArgumentParser:
    from ..core.intensity import WINDOW_PRESETS

    p = subparsers.add_parser(
        "universeg",
        help="fill unlabeled slices from a few labeled ones with UniverSeg (in-context segmentation)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scan", help="scan file or DICOM folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--support-labels", metavar="PARTIAL", help="label map with a few labeled slices (same grid)")
    src.add_argument("--example-set", metavar="FILE", help="saved example set (.npz) to use as support")
    p.add_argument("--label", type=validation.positive_int, metavar="N", help="label value to segment (default: all present)")
    p.add_argument("--z-range", type=_pair("--z-range", int), metavar="A,B",
                   help="slice range (inclusive, 0-based along --axis) to extend the targets to")
    p.add_argument("--support-size", type=validation.positive_int, metavar="S",
                   help="support slices per run (default 64 on GPU, 16 on CPU)")
    win = p.add_mutually_exclusive_group()
    win.add_argument("--window", type=_pair("--window", float), metavar="L,W", help="window level,width")
    win.add_argument("--window-preset", choices=sorted(WINDOW_PRESETS), metavar="NAME",
                     help=f"window preset: {', '.join(sorted(WINDOW_PRESETS))}")
    p.add_argument("--checkpoint", metavar="CKPT", help="UniverSeg weights (universeg_v1_nf64_ss64_STA.pt)")
    p.add_argument("--out", required=True, metavar="OUT", help="output label map (.nii.gz, .nrrd ...)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--save-example-set", metavar="FILE", help="also save the support set used (.npz)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--ensemble", type=validation.positive_int, default=1, metavar="K",
                   help="average K different support subsets (default 1)")
    p.add_argument("--batch-size", type=validation.positive_int, metavar="B", help="target slices per model call")
    p.add_argument("--axis", type=int, choices=(0, 1, 2), default=0,
                   help="slicing axis of the (z, y, x) array (default 0: z)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)
    return p


def _support_values(support, label: int | None, save_example_set: bool) -> list[int]:
    """The label values a partial label map supports; errors when ``label`` is not drawn in it,
    when it is empty, or when an example set to save would need one label and there are several."""
    present = [int(v) for v in np.unique(support) if v > 0]
    if label is not None and label not in present:
        raise UniversegCommandError(f"label {label} is not drawn in the support label map (labels present: "
                                    f"{', '.join(map(str, present)) or 'none'}).")
    if not present:
        raise UniversegCommandError("the support label map is empty: draw the structure on a few slices first.")
    if save_example_set and label is None and len(present) > 1:
        raise UniversegCommandError("--save-example-set saves one label: add --label N "
                                    f"(labels present: {', '.join(map(str, present))}).")
    return present


def run(args) -> int:
    from .. import api
    from ..core.example_sets import load_example_set, save_example_set
    from ..core.support_set import SupportSet
    from ..io import load_labels
    from ..models import incontext as ic

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    # every argument is checked before the network is loaded
    scan = validation.check_input(args.scan, "the scan")
    source = validation.check_input(args.support_labels or args.example_set,
                                    "--support-labels" if args.support_labels else "--example-set")
    out = validation.check_output(args.out, overwrite=args.overwrite, inputs=[scan, source])
    if args.save_example_set:
        validation.check_output(args.save_example_set, overwrite=True, what="--save-example-set",
                                suffixes=(".npz",), inputs=[scan, source, out])
    checkpoint = validation.universeg_checkpoint(args.checkpoint)
    window = validation.check_window(args.window, args.window_preset)
    volume = api.load_volume(scan)
    z_range = validation.check_range(args.z_range, volume.shape[args.axis], axis_name=f"indices along axis {args.axis}")
    example_set = load_example_set(source) if args.example_set else None
    support = example_set if example_set is not None else load_labels(source, like=volume)
    if example_set is None:
        present = _support_values(support, args.label, bool(args.save_example_set))
    model = api.load_universeg(checkpoint)
    device = ic.resolve_device(args.device)
    bounds = api.universeg_window(volume, support, window)
    S = args.support_size or ic.default_support_size(device)
    if example_set is not None:
        if example_set.axis != args.axis:
            say(f"note: the example set was taken along axis {example_set.axis}, this run uses axis {args.axis}")
        what = f"label {args.label or int(example_set.label_value) or 1} from example set {args.example_set} " \
               f"({len(example_set)} slices"
    else:
        what = f"label(s) {args.label or ', '.join(map(str, present))} ("
    say(f"UniverSeg: {what}, S={S}, window {bounds[0]:g}..{bounds[1]:g}, {device})")
    t0 = time.perf_counter()

    def progress(done, total):
        say(f"  {done}/{total} slices ({time.perf_counter() - t0:.1f} s)")

    try:
        output = api.segment_rest(volume, support, model=model, label=args.label, window=bounds, device=device,
                                  z_range=z_range, support_size=S, axis=args.axis, ensemble=args.ensemble,
                                  batch_size=args.batch_size, progress=progress)
    except UniversegCommandError:
        raise
    except MedsamGuiError as exc:
        raise UniversegCommandError(f"{args.support_labels or args.example_set}: {exc}") from None
    api.save_labels(output, volume, out, overwrite=args.overwrite)
    before = np.zeros_like(output) if example_set is not None else np.asarray(support)
    changed = np.flatnonzero((np.moveaxis(output, args.axis, 0) != np.moveaxis(before, args.axis, 0))
                             .reshape(output.shape[args.axis], -1).any(axis=1))
    say(f"filled {len(changed)} slice(s) in {time.perf_counter() - t0:.1f} s; wrote {out}")
    if args.save_example_set:
        if example_set is not None:
            to_save = example_set
        else:
            v = args.label or int(max(np.unique(support)))
            to_save = SupportSet.from_partial_labels(
                volume.array, np.asarray(support), v, args.axis, bounds=bounds,
                slices=ic.choose_support(ic.labeled_slices(np.asarray(support), v, args.axis), S),
                modality=volume.modality, source=volume.name or Path(args.scan).name, label_name=f"label {v}")
        to_save.label_value = args.label or to_save.label_value
        save_example_set(args.save_example_set, to_save)
        say(f"saved example set ({len(to_save)} slices) to {args.save_example_set}")
    return 0
