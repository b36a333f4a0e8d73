"""``medsam-gui batch``: apply prompts, example sets or automatic models to a cohort on Dask.

    medsam-gui batch MANIFEST.csv --out DIR [--workers N | --scheduler ADDRESS]
        [--device auto|cpu|cuda] [--checkpoint MODEL=PATH ...] [--resume] [--report] [--quiet]

The manifest is a CSV with a header: scan, task, input, and optionally engine, label, out
(one row per scan; relative paths from the manifest's folder):

    scan,task,input,engine,label,out
    baseline/p001.nii.gz,boxes,prompts/p001.json,litemedsam,,p001
    followup/p002.nii.gz,universeg,liver_examples.npz,,1,p002
    trial/ct_017.nii.gz,auto,universal:liver+spleen,,,ct_017

task=boxes: a prompts file saved by the app (File > Save prompts…), engine medsam (default),
litemedsam or medsam2; task=universeg: an example set (.npz); task=auto: MODEL:STRUCTURE[+...].
Per case DIR/<out>.nii.gz (+ .label), DIR/measurements/<out>.csv and DIR/qc/<out>.png; per run
DIR/report.csv (and DIR/report.html with --report). MODEL for --checkpoint: medsam,
litemedsam, medsam2, universeg, hermes, universal, universal_text_embedding. Exit status 1 when
a case failed (see the report) or the manifest is bad (every bad row is listed).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import MedsamGuiError
from .validation import positive_int


def _checkpoint(text: str) -> tuple[str, str]:
    model, sep, path = text.partition("=")
    if not sep or not model.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH, got {text!r}")
    return model.strip().lower(), path.strip()


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("batch", help="segment a cohort of scans from a manifest on Dask (local or a cluster)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="manifest CSV (scan, task, input[, engine, label, out])")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created when missing)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, metavar="N",
                       help="worker processes of a local Dask cluster (default: from the cores, memory and GPUs)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--checkpoint", type=_checkpoint, action="append", default=[], metavar="MODEL=PATH",
                   help="weights file of a model (repeatable); default: the installed weights")
    p.add_argument("--resume", action="store_true",
                   help="skip cases whose outputs exist and whose inputs are unchanged since the last report")
    p.add_argument("--report", action="store_true", help="also write DIR/report.html with the QC pictures")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from .. import api

    checkpoints = {}
    for model, path in args.checkpoint:
        if model in checkpoints:
            raise MedsamGuiError(f"--checkpoint {model}= is given twice; give each model once.")
        checkpoints[model] = path
    summary = api.run_batch(args.manifest, args.out, workers=args.workers, scheduler=args.scheduler,
                            device=args.device, checkpoints=checkpoints, resume=args.resume, report=args.report,
                            quiet=args.quiet)
    if not args.quiet:
        print(f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped; report: {summary.report_csv}"
              + (f", {summary.report_html}" if summary.report_html else ""), file=sys.stderr)
    if summary.failed:
        print(f"medsam-gui: error: {summary.failed} case(s) failed; see {summary.report_csv}", file=sys.stderr)
        return 1
    return 0
