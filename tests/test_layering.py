"""The architecture's rule, checked: core/, io/, models/, commands/ and api.py never import Qt or
napari, and importing them does no work (no torch for core/io/commands).

Two checks: the source (every import statement, inside functions too, read with ``ast``) and
what a fresh interpreter has loaded after importing the modules."""

from __future__ import annotations

import json
import subprocess
import sys

import module_imports  # tests/ is on sys.path (rootdir-relative import)

import medsam_gui

FORBIDDEN = ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "superqt", "vispy", "magicgui")
GUI_SIDE = ("medsam_gui.app", "medsam_gui.gui", "medsam_gui.napari_plugin")
QT_FREE_PACKAGES = ("core", "io", "models", "commands")
QT_FREE_MODULES = ("medsam_gui.api", "medsam_gui.config", "medsam_gui.errors")
TORCH_FREE_PACKAGES = ("core", "io", "commands")


def _in_packages(packages) -> list[str]:
    prefixes = tuple(f"medsam_gui.{p}" for p in packages)
    return [m for m in module_imports.modules() if m.startswith(prefixes)]


def _qt_free_modules() -> list[str]:
    mods = module_imports.modules()
    missing = [m for m in QT_FREE_MODULES if m not in mods]
    assert missing == [], f"modules the architecture names are missing: {missing}"
    return _in_packages(QT_FREE_PACKAGES) + list(QT_FREE_MODULES)


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_no_qt_napari_or_gui_import_anywhere_in_the_source():
    """Not even inside a function: the GUI-free layers must stay usable without a display."""
    mods = module_imports.modules()
    known = set(mods)
    names = _qt_free_modules()
    assert len(names) > 30, names  # the walk found the real modules
    bad = []
    for name in names:
        for imp in module_imports.imports(name, mods[name], known):
            if imp.target.split(".")[0] in FORBIDDEN or imp.target.startswith(GUI_SIDE):
                bad.append(f"{name} line {imp.line}: imports {imp.target}")
    assert bad == []


def test_no_module_level_torch_import_in_core_io_commands():
    mods = module_imports.modules()
    known = set(mods)
    bad = [f"{name} line {imp.line}"
           for name in _in_packages(TORCH_FREE_PACKAGES)
           for imp in module_imports.imports(name, mods[name], known)
           if imp.top_level and imp.target.split(".")[0] == "torch"]
    assert bad == []


def test_core_io_models_commands_api_do_not_load_qt_or_napari():
    modules = ["medsam_gui.cli", *_qt_free_modules()]
    loaded = _loaded_after_import(modules)
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_core_io_and_commands_import_without_torch():
    loaded = _loaded_after_import(_in_packages(TORCH_FREE_PACKAGES))
    assert "torch" not in loaded
    assert "medsam_gui" in loaded and medsam_gui.__version__
