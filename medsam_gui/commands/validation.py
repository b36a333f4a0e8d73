"""Checks of the headless commands' arguments, made before any scan or model is loaded.

A mistake in an argument (a missing input, an output name the writers cannot store, a folder
that does not exist, no weights) must be reported at once, not after the model ran for a
minute. The commands call these functions first, then read the scan, check what depends on
its size (boxes, slice ranges), and only then load a model. Every failure raises
:class:`ArgumentError` (or the CheckpointError of a missing weights file) saying what is wrong
and what to do; the CLI prints it and exits 1.
"""

from __future__ import annotations

import argparse

import os
from pathlib import Path
from typing import Iterable

from ..errors import CheckpointError, MedsamGuiError


class ArgumentError(MedsamGuiError):
    """A command-line argument that cannot work (found before anything was loaded)."""


def check_input(path: str | os.PathLike, what: str) -> Path:
    """``path`` (a file or folder the command reads) as a Path; ArgumentError when it does not
    exist or cannot be read. ``what`` names it in the message ("the scan", "--support-labels")."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ArgumentError(f"{what} {p} does not exist. Check the path.")
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        raise ArgumentError(f"{what} {p} cannot be read: you do not have permission to read it.")
    return p


def check_folder_writable(path: Path, what: str) -> None:
    """The folder ``path`` will be written in must exist, be a folder and be writable."""
    folder = path.parent
    if not folder.is_dir():
        raise ArgumentError(f"could not write {what} {path}: the folder {folder} does not exist. "
                            "Create it first or choose another folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ArgumentError(f"could not write {what} {path}: you do not have permission to write in {folder}. "
                            "Choose another folder.")


def check_output(path: str | os.PathLike, *, overwrite: bool, what: str = "--out",
                 suffixes: Iterable[str] | None = None, inputs: Iterable[Path] = (),
                 label_description: bool = False) -> Path:
    """The file a command will write: its name ends in one of ``suffixes`` (default: the label
    map formats), it is not a folder nor one of ``inputs``, its folder exists and is writable,
    and it (and, with ``label_description``, the ``<stem>.label`` beside it) does not exist
    unless ``overwrite``. Returns it as a Path."""
    from ..io.readers import file_suffix
    from ..io.writers import LABEL_SUFFIXES, label_description_path

    p = Path(path).expanduser()
    allowed = tuple(LABEL_SUFFIXES if suffixes is None else suffixes)
    if file_suffix(p) not in allowed:
        raise ArgumentError(f"{what} {p.name!r}: cannot write this format; use a name ending in "
                            f"{', '.join(allowed)}.")
    if p.is_dir():
        raise ArgumentError(f"{what} {p} is a folder; give a file name such as {p / ('labels' + allowed[0])}.")
    check_folder_writable(p, what)
    target = p.resolve()
    for source in inputs:
        if source.exists() and target == source.resolve():
            raise ArgumentError(f"{what} {p} is an input of this command; choose another file name.")
    if not overwrite:
        beside = [label_description_path(p)] if label_description else []
        for existing in [p, *beside]:
            if existing.exists():
                raise ArgumentError(f"{existing} already exists; choose another {what} or add --overwrite.")
    return p


def check_window(window, preset: str | None) -> tuple[float, float] | None:
    """(lo, hi) from ``--window L,W`` or ``--window-preset NAME``; None when neither was given."""
    from ..core.intensity import WINDOW_PRESETS, window_bounds

    if window is not None:
        level, width = window
        if not width > 0:
            raise ArgumentError(f"--window {level:g},{width:g}: the width must be above 0.")
        return window_bounds(level, width)
    if preset:
        return window_bounds(*WINDOW_PRESETS[preset])
    return None


def check_range(z_range, n: int, what: str = "--z-range", axis_name: str = "slices") -> tuple[int, int] | None:
    """``(a, b)`` sorted and inside ``0..n-1``; None when not given."""
    if z_range is None:
        return None
    a, b = sorted(int(v) for v in z_range)
    if a < 0 or b >= n:
        raise ArgumentError(f"{what} {a},{b} is outside the scan ({axis_name} 0..{n - 1}).")
    return a, b


def universeg_checkpoint(checkpoint) -> Path:
    """The UniverSeg weights file: ``checkpoint`` when given (it must exist), else the installed one."""
    from ..api import resolve_path

    if checkpoint is not None:
        return resolve_path(checkpoint, "UniverSeg")
    from ..models import weights as manager

    found = manager.resolve("universeg_v1")
    if found is None:
        raise CheckpointError(
            "no UniverSeg weights installed: pass the weights file with --checkpoint "
            "universeg_v1_nf64_ss64_STA.pt, or install them once with `medsam-gui weights download universeg_v1`.")
    return Path(found)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
