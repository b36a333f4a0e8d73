"""The batch manifest: a CSV with a header, one row per case.

Columns: ``scan`` (scan file or DICOM folder), ``task`` (``boxes``, ``universeg`` or ``auto``),
``input``, and optionally ``engine``, ``label``, ``out``:

- ``boxes``: ``input`` is a prompts file (:mod:`medsam_gui.core.prompts_file`); ``engine`` is
  ``medsam`` (default), ``litemedsam`` or ``medsam2``; ``label`` keeps only that label's prompts;
- ``universeg``: ``input`` is an example set (.npz, :mod:`medsam_gui.core.example_sets`);
  ``label`` is the value written (default: the set's);
- ``auto``: ``input`` is ``MODEL:STRUCTURE[+STRUCTURE...]`` (MODEL ``hermes`` or ``universal``);
  the structures are written as labels ``label``, ``label``+1, ... (default 1).

``out`` is the case's output name (default: the scan's file name without extension); names
must be unique. Relative paths resolve against the manifest's folder. :func:`read_manifest`
checks every row before anything runs and lists every bad row at once.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import MedsamGuiError

TASKS = ("boxes", "universeg", "auto")
BOX_ENGINES = ("medsam", "litemedsam", "medsam2")
AUTO_MODELS = ("hermes", "universal")
REQUIRED_COLUMNS = ("scan", "task", "input")
OPTIONAL_COLUMNS = ("engine", "label", "out")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(MedsamGuiError):
    """The manifest cannot be read or has bad rows (every one listed)."""


@dataclass(frozen=True)
class Case:
    """One manifest row, checked: ``row`` is its line number in the CSV (header = 1); paths are
    absolute; ``engine`` is the box engine (boxes) or the automatic model (auto); ``structures``
    the automatic model's structure names; ``label`` the first label value or None."""

    row: int
    name: str
    scan: Path
    task: str
    input: str
    input_path: Path | None
    engine: str
    label: int | None
    structures: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        """The model this case loads: the box engine, ``universeg`` or the automatic model."""
        return "universeg" if self.task == "universeg" else self.engine

    def input_checksum(self) -> str:
        """SHA-256 (hex) of what decides this case's result: the scan's bytes (every file of a
        DICOM folder, by relative name), the input file's bytes and the row's settings."""
        h = hashlib.sha256()
        h.update(repr((self.task, self.engine, self.label, self.structures, self.input)).encode())
        files = sorted(p for p in self.scan.rglob("*") if p.is_file()) if self.scan.is_dir() else [self.scan]
        for f in files + ([self.input_path] if self.input_path is not None else []):
            h.update(f.name.encode() if f == self.input_path else str(f.relative_to(self.scan.parent)).encode())
            _hash_file(h, f)
        return h.hexdigest()


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


def file_checksum(path: Path) -> str:
    """SHA-256 (hex) of one file's bytes."""
    h = hashlib.sha256()
    _hash_file(h, path)
    return h.hexdigest()


def default_name(scan: Path) -> str:
    """The output name of a scan: its file name without the image extension (a folder: its name)."""
    from ..io.readers import scan_stem

    stem = scan.name if scan.is_dir() else scan_stem(scan)
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-") or "case"


def _path(folder: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (folder / p).resolve()


def _check_input(task: str, path: Path, problems: list[str]) -> None:
    """Read the input file (prompts file or example set) and record why it is bad."""
    from ..core.example_sets import load_example_set
    from ..core.prompts_file import read_prompts_file

    try:
        if task == "boxes":
            read_prompts_file(path)
        else:
            load_example_set(path)
    except MedsamGuiError as exc:
        problems.append(str(exc))


def _parse_row(n: int, row: dict, folder: Path, problems: list[str]) -> Case | None:
    get = lambda key: (row.get(key) or "").strip()  # noqa: E731
    scan_text, task, inp = get("scan"), get("task").lower(), get("input")
    for key in REQUIRED_COLUMNS:
        if not get(key):
            problems.append(f"the {key} column is empty")
    scan = _path(folder, scan_text) if scan_text else None
    if scan is not None and not scan.exists():
        problems.append(f"scan {scan} does not exist")
    if task and task not in TASKS:
        problems.append(f"unknown task {task!r} (choose {', '.join(TASKS)})")
    label = None
    if get("label"):
        try:
            label = int(get("label"))
        except ValueError:
            label = 0
        if not 1 <= label <= 65535:
            problems.append(f"label {get('label')!r} is not a whole number from 1 to 65535")
    engine, structures, input_path = get("engine").lower(), (), None
    if task == "boxes":
        engine = engine or "medsam"
        if engine not in BOX_ENGINES:
            problems.append(f"unknown engine {engine!r} for boxes (choose {', '.join(BOX_ENGINES)})")
    elif task in ("universeg", "auto") and engine:
        problems.append(f"the engine column is for task=boxes only (task={task})")
    if task in ("boxes", "universeg") and inp:
        input_path = _path(folder, inp)
        if not input_path.is_file():
            problems.append(f"input {input_path} does not exist")
        else:
            _check_input(task, input_path, problems)
    elif task == "auto" and inp:
        model, _, names = inp.partition(":")
        engine = model.strip().lower()
        structures = tuple(s.strip() for s in names.split("+") if s.strip())
        if engine not in AUTO_MODELS or not structures:
            problems.append(f"input {inp!r} is not MODEL:STRUCTURE[+STRUCTURE...] with MODEL "
                            f"{' or '.join(AUTO_MODELS)}")
    name = get("out") or (default_name(scan) if scan is not None else "")
    if get("out") and not _SAFE_NAME.match(name):
        problems.append(f"out {name!r} must be a plain file name (letters, digits, '.', '_', '-')")
    if problems:
        return None
    return Case(n, name, scan, task, inp, input_path, engine, label, structures)


def read_manifest(path: str | os.PathLike) -> list[Case]:
    """The checked cases of the manifest at ``path``. ManifestError lists every bad row (line
    number and reasons) when any row is bad, and names duplicate output names."""
    path = Path(path).expanduser().resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    except FileNotFoundError:
        raise ManifestError(f"Manifest not found: {path}.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"Cannot read the manifest {path}: {exc}.") from None
    if not rows:
        raise ManifestError(f"The manifest {path} has no rows: it needs a header ({', '.join(REQUIRED_COLUMNS)}) "
                            "and one row per scan.")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c and c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise ManifestError(f"The manifest {path} header must hold {', '.join(REQUIRED_COLUMNS)} (optional: "
                            f"{', '.join(OPTIONAL_COLUMNS)}); " + "; ".join(
                                ([f"missing {', '.join(missing)}"] if missing else [])
                                + ([f"unknown {', '.join(unknown)}"] if unknown else [])) + ".")
    cases, bad, names = [], [], {}
    for n, raw in enumerate(rows, start=2):
        row = {str(k).strip().lower(): v for k, v in raw.items() if k is not None}
        problems: list[str] = []
        if None in raw:
            problems.append("more values than columns")
        case = _parse_row(n, row, path.parent, problems)
        if case is not None and case.name in names:
            problems.append(f"output name {case.name!r} is also row {names[case.name]}'s; set a distinct out")
        if problems:
            bad.append(f"  row {n}: " + "; ".join(problems))
        else:
            names[case.name] = n
            cases.append(case)
    if bad:
        raise ManifestError(f"The manifest {path} has {len(bad)} bad row(s); fix them and run again "
                            "(nothing was run):\n" + "\n".join(bad))
    return cases
