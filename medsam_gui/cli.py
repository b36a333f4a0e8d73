"""Command line entry point: ``medsam-gui``.

``medsam-gui [SCAN] [--labels LABELS] [--demo]`` opens the app. The headless commands
(``info``, ``segment``, ``universeg``, ``measure``, ``weights``, ``auto``) each live in
``medsam_gui/commands/<name>.py``, which defines ``register(subparsers)``; they are imported
only when used, so ``medsam-gui info`` never loads Qt or torch.

Exit status: 0 success, 1 a user-facing error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import MedsamGuiError

COMMANDS = ("info", "segment", "universeg", "measure", "weights", "auto", "batch")


def _gui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medsam-gui",
        description=(
            "Segment 3D CT and MR scans with MedSAM and UniverSeg. Without a command, opens the app. "
            f"Headless commands: {', '.join(COMMANDS)} (medsam-gui COMMAND --help)."
        ),
    )
    p.add_argument("scan", nargs="?", help="scan to open (NIfTI, NRRD, MHA/MHD, MGZ, or a DICOM folder)")
    p.add_argument("--labels", help="label map to open onto the scan (same grid)")
    p.add_argument("--demo", action="store_true", help="open the bundled demo CT")
    p.add_argument("--session", help="open a saved session")
    p.add_argument("--version", action="version", version=_version())
    return p


def _version() -> str:
    from . import __version__

    return f"medsam-gui {__version__}"


def _command_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam-gui")
    sub = parser.add_subparsers(dest="command", required=True)
    module = importlib.import_module(f"medsam_gui.commands.{name}")
    module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .runtime import tune_memory

    # before any large tensor (medsam_gui/runtime.py); huge pages for headless commands only
    tune_memory(huge_pages=bool(argv) and argv[0] in COMMANDS)
    try:
        if argv and argv[0] in COMMANDS:
            args = _command_parser(argv[0]).parse_args(argv)
            return int(args.func(args) or 0)
        args = _gui_parser().parse_args(argv)
        from .app import run_app

        return int(run_app(scan=args.scan, labels=args.labels, demo=args.demo, session=args.session) or 0)
    except MedsamGuiError as exc:
        print(f"medsam-gui: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medsam-gui: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
