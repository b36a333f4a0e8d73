"""The architecture's rule, checked: core/, io/, models/ and commands/ never import Qt or napari,
and importing them does no work (no torch for core/io/commands)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import medsam_gui

FORBIDDEN = ("PyQt6", "qtpy", "napari", "superqt", "vispy")


def _modules(package: str) -> list[str]:
    pkg = __import__(f"medsam_gui.{package}", fromlist=["_"])
    return [f"medsam_gui.{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_io_models_commands_do_not_import_qt_or_napari():
    modules = ["medsam_gui.cli", "medsam_gui.config", "medsam_gui.errors"]
    for package in ("core", "io", "models", "commands"):
        modules += _modules(package)
    assert len(modules) > 30, modules  # the walk found the real modules
    loaded = _loaded_after_import(modules)
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_core_io_and_commands_import_without_torch():
    modules = []
    for package in ("core", "io", "commands"):
        modules += _modules(package)
    loaded = _loaded_after_import(modules)
    assert "torch" not in loaded
    assert "medsam_gui" in loaded and medsam_gui.__version__
