"""Shared fixtures. Test data lives in tests/data (copied from ../shared/data with its
licences) and tests/golden (reference inference outputs), so a clone runs its tests alone.
The shared fixtures (data folders, model checkpoints, test scans, app windows) are in
tests/gui_fixtures.py, loaded below."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

pytest_plugins = ["gui_fixtures"]

_SESSION_HOME: str | None = None


def pytest_configure(config):
    """Point MEDSAM_GUI_HOME at a throwaway folder before any fixture (module-scoped app
    windows included) runs, so no test ever writes into the user's real folders."""
    global _SESSION_HOME
    _SESSION_HOME = tempfile.mkdtemp(prefix="medsam-gui-tests-")
    os.environ["MEDSAM_GUI_HOME"] = _SESSION_HOME
    from medsam_gui.runtime import tune_memory

    tune_memory()  # as the app does at start-up (medsam_gui/runtime.py)


def pytest_collection_modifyitems(config, items):
    """Tests of the napari plugin (napari's ``make_napari_viewer`` fixture) run last: that
    fixture resets napari's plugin set-up, and a later ``napari.Viewer`` (every app window)
    would then register the plugin's commands a second time ("command already registered")."""
    plugin = [item for item in items if "make_napari_viewer" in getattr(item, "fixturenames", ())]
    items[:] = [item for item in items if item not in plugin] + plugin


def pytest_unconfigure(config):
    if _SESSION_HOME:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own settings/cache/data folders; no test touches the user's."""
    home = tmp_path_factory.mktemp("medsam_home")
    monkeypatch.setenv("MEDSAM_GUI_HOME", str(home))
    return home
