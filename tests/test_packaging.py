"""What a wheel carries: every file of resources/ (the demo CT for `--demo` and the napari
sample) is installed under <prefix>/share/medsam-gui, where config.resources_dir looks."""

from __future__ import annotations

import tomllib
from pathlib import Path

from medsam_gui import config

ROOT = Path(__file__).resolve().parents[1]


def test_every_resource_is_installed_by_the_wheel():
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    installed = {f for files in data_files.values() for f in files}
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "resources").rglob("*") if p.is_file()}
    assert shipped == installed
    for target, files in data_files.items():
        assert all(target == "share/medsam-gui/" + str(Path(f).parent) for f in files)


def test_resources_dir_in_a_checkout_and_in_an_install(monkeypatch, tmp_path):
    assert config.demo_scan_path() == ROOT / "resources" / "demo" / "example_ct_sm.nii.gz"
    monkeypatch.setattr(config, "__file__", str(tmp_path / "site-packages" / "medsam_gui" / "config.py"))
    monkeypatch.setattr(config.sys, "prefix", str(tmp_path / "venv"))
    assert config.resources_dir() == tmp_path / "venv" / "share" / "medsam-gui" / "resources"
