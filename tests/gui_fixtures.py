"""Shared test objects, loaded by tests/conftest.py as a plugin: model checkpoints in the official
formats, the test scans and the real app window.

Fixtures (ask for them by name in any test):
    data_dir, golden_dir session  Path: tests/data, tests/golden
    medsam_state_dict    session  dict: random SAM ViT-B weights (seed 0), CPU float32; do not modify
    medsam_checkpoint    session  Path "medsam_vit_b.pth": those weights as a plain state dict
                                  (the layout of the official MedSAM file, ~358 MiB)
    medsam_engine        session  MedSAMEngine on medsam_checkpoint (CPU, fp32); shared: patch it only
                                  with a MonkeyPatch (restored when the test/module ends)
    universeg_state_dict session  dict: the golden UniverSeg v1 weights (tests/golden, seed 1234)
    universeg_checkpoint session  Path "universeg_v1_nf64_ss64_STA.pt": those weights as a plain
                                  state dict (the layout of the official UniverSeg file)
    demo_scan, demo_labels  session  Path: resources/demo CT, (z,y,x) 30 x 101 x 122 int16, and labels
    lung_scan, lung_labels  session  Path: tests/data/lung_ct CT, (z,y,x) 48 x 512 x 512 int16, and labels
    hippo                session  (image, labels): MSD hippocampus_003 MR, (z,y,x) 35 x 52 x 34, image
                                  float32, labels int16 (0, 1, 2); read-only arrays
    app_window           function  factory: app_window(*args, panels=..., **build_app_kwargs) -> MainWindow
    module_app_window    module    the same factory with its own MEDSAM_GUI_HOME (``.home``,
                                  ``.home_env()``); its windows live until the module ends

The MedSAM objects are built once per process (a ViT-B costs seconds to build and save, one
encoder pass tens of seconds on 2 cores) by the functions below, which tests/medsam_fixtures.py
re-exports for code that calls them directly.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
DATA_DIR = TESTS_DIR / "data"
GOLDEN_DIR = TESTS_DIR / "golden"
DEMO_SCAN = REPO / "resources" / "demo" / "example_ct_sm.nii.gz"
DEMO_LABELS = REPO / "resources" / "demo" / "example_seg.nii.gz"
LUNG_SCAN = DATA_DIR / "lung_ct" / "lung1_image.nrrd"
LUNG_LABELS = DATA_DIR / "lung_ct" / "lung1_label.nrrd"

_lock = threading.Lock()
_memo: dict = {}  # a cache of deterministic objects: what it holds never depends on test order


def _weights_dir() -> Path:
    if "dir" not in _memo:
        d = Path(tempfile.mkdtemp(prefix="medsam_test_weights_"))
        atexit.register(shutil.rmtree, d, True)
        _memo["dir"] = d
    return _memo["dir"]


def vit_b_state_dict() -> dict:
    """Random SAM ViT-B weights (seed 0), CPU float32 (shared: do not modify in place)."""
    with _lock:
        if "sd" not in _memo:
            import torch

            from medsam_gui.models.sam_loader import build_sam_vit_b

            torch.set_num_threads(2)
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(0)
            model = build_sam_vit_b()
            torch.random.set_rng_state(gen_state)
            _memo["sd"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return _memo["sd"]


def vit_b_checkpoint() -> Path:
    """Path of the random ViT-B weights saved as a plain state dict (official layout)."""
    sd = vit_b_state_dict()
    with _lock:
        if "ckpt" not in _memo:
            import torch

            path = _weights_dir() / "medsam_vit_b.pth"
            torch.save(sd, path)
            _memo["ckpt"] = path
        return _memo["ckpt"]


def engine():
    """A MedSAMEngine (CPU, fp32) on the random ViT-B checkpoint."""
    ckpt = vit_b_checkpoint()
    with _lock:
        if "engine" not in _memo:
            import torch

            from medsam_gui.models.medsam import MedSAMEngine

            torch.set_num_threads(2)
            _memo["engine"] = MedSAMEngine(ckpt, device="cpu", precision="fp32")
        return _memo["engine"]


def hippocampus_golden() -> dict:
    d = np.load(GOLDEN_DIR / "medsam_hippocampus003_mr.npz")
    return {k: d[k] for k in d.files}


def hippocampus_embedding():
    """The engine's fp32 embedding (1,256,64,64) of the hippocampus golden slice (one encoder
    pass per process, whichever test asks first)."""
    eng = engine()
    with _lock:
        if "emb" not in _memo:
            _memo["emb"] = eng.embed_slice(hippocampus_golden()["volume_uint8_slice"])
        return _memo["emb"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data (real scans, with their licences)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """tests/golden (reference inference outputs)."""
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def medsam_state_dict() -> dict:
    """Random SAM ViT-B weights (seed 0), CPU float32; shared, do not modify."""
    return vit_b_state_dict()


@pytest.fixture(scope="session")
def medsam_checkpoint() -> Path:
    """medsam_vit_b.pth: the random ViT-B weights as a plain state dict (official layout)."""
    return vit_b_checkpoint()


@pytest.fixture(scope="session")
def medsam_engine():
    """MedSAMEngine (CPU, fp32) on medsam_checkpoint; shared, do not patch it."""
    return engine()


@pytest.fixture(scope="session")
def universeg_state_dict() -> dict:
    """The golden UniverSeg v1 weights (tests/golden, seed 1234); shared, do not modify."""
    import torch

    g = torch.load(GOLDEN_DIR / "universeg_v1_seed1234_S8.pt", map_location="cpu", weights_only=True)
    return g["state_dict"]


@pytest.fixture(scope="session")
def universeg_checkpoint(universeg_state_dict, tmp_path_factory) -> Path:
    """universeg_v1_nf64_ss64_STA.pt: the golden weights as a plain state dict (official layout)."""
    import torch

    path = tmp_path_factory.mktemp("universeg_weights") / "universeg_v1_nf64_ss64_STA.pt"
    torch.save(universeg_state_dict, path)
    return path


@pytest.fixture(scope="session")
def demo_scan() -> Path:
    """The demo CT (resources/demo/example_ct_sm.nii.gz; (z,y,x) 30 x 101 x 122, int16)."""
    return DEMO_SCAN


@pytest.fixture(scope="session")
def demo_labels() -> Path:
    """The demo CT's label map (resources/demo/example_seg.nii.gz)."""
    return DEMO_LABELS


@pytest.fixture(scope="session")
def lung_scan() -> Path:
    """A lung CT (tests/data/lung_ct/lung1_image.nrrd; (z,y,x) 48 x 512 x 512, int16)."""
    return LUNG_SCAN


@pytest.fixture(scope="session")
def lung_labels() -> Path:
    """The lung CT's label map (tests/data/lung_ct/lung1_label.nrrd)."""
    return LUNG_LABELS


@pytest.fixture(scope="session")
def hippo(data_dir):
    """MSD hippocampus_003 MR as arrays: (image (35, 52, 34) float32, labels (35, 52, 34) int16
    with values 0, 1, 2), (z, y, x). Shared by every test: read-only (copy before writing)."""
    import SimpleITK as sitk

    d = data_dir / "msd_hippocampus"
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "hippocampus_003_image.nii.gz")))
    lab = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(d / "hippocampus_003_label.nii.gz")))).astype(np.int16)
    img.setflags(write=False)
    lab.setflags(write=False)
    return img, lab


class AppWindows:
    """Builds the real window with ``medsam_gui.app.build_app`` and closes every window it built.

    ``windows(*args, size=(1300, 850), wait_s=60.0, panels=None, **kwargs)`` passes
    ``args``/``kwargs`` to build_app (scan, labels, demo, session, show, install_panels, ...),
    resizes the window and waits (at most ``wait_s``) until the background work it started is
    done. ``panels`` ({Panels field: install(controller) -> panel}, in order) installs panels
    the test's own way (typically with ``install_panels=False``: a MedSAM panel on a chosen
    EmbeddingService, the session manager without its recovery offer ...) after the scan has
    loaded and keeps them in ``window.panels`` (a "medsam" panel brings its "measurements").
    With ``home``, MEDSAM_GUI_HOME points there while the window and its panels are built (a
    module's window outlives each test's own home); ``home_env()`` does the same for other
    module-scoped set-up.
    """

    def __init__(self, home: Path | None = None) -> None:
        self._home = home
        self._windows: list = []

    @property
    def home(self) -> Path | None:
        """The MEDSAM_GUI_HOME the windows are built in (None: the test's own)."""
        return self._home

    @contextlib.contextmanager
    def home_env(self):
        """MEDSAM_GUI_HOME = ``home`` inside the block (unchanged without one), restored after."""
        with pytest.MonkeyPatch.context() as mp:
            if self._home is not None:
                mp.setenv("MEDSAM_GUI_HOME", str(self._home))
            yield self._home

    def __call__(self, *args, size: tuple[int, int] = (1300, 850), wait_s: float = 60.0,
                 panels: dict | None = None, **kwargs):
        import dataclasses

        from medsam_gui.app import build_app
        from medsam_gui.gui.panels import Panels

        fields = {f.name for f in dataclasses.fields(Panels)}
        unknown = set(panels or ()) - fields
        if unknown:
            raise ValueError(f"unknown panels {sorted(unknown)}; Panels has {sorted(fields)}")
        with self.home_env():
            window = build_app(*args, **kwargs)
            self._windows.append(window)
            window.qt_window.resize(*size)
            if panels:
                window.controller.wait_idle(wait_s)
                for name, install in panels.items():
                    panel = install(window.controller)
                    setattr(window.panels, name, panel)
                    if name == "medsam" and window.panels.measurements is None:
                        window.panels.measurements = getattr(panel, "measurements", None)
        window.controller.wait_idle(wait_s)
        return window

    def close_all(self) -> None:
        """Close (force: no unsaved-labels question) the windows, newest first, then let Qt delete
        them and collect the garbage now, so that an object a window leaves behind fails the test
        that built it rather than a later one."""
        from qtpy.QtCore import QEvent
        from qtpy.QtWidgets import QApplication

        while self._windows:
            self._windows.pop().close(force=True)
        for _ in range(2):  # as a running event loop would: the window, then its slots' proxies
            QApplication.processEvents()
            QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
        gc.collect()
        QApplication.processEvents()


@pytest.fixture
def app_window(qapp):
    """Factory of real app windows, closed when the test ends."""
    windows = AppWindows()
    yield windows
    windows.close_all()


@pytest.fixture(scope="module")
def module_app_window(qapp, tmp_path_factory):
    """Factory of real app windows shared by a module's tests, closed when the module ends."""
    windows = AppWindows(home=tmp_path_factory.mktemp("module_home"))
    yield windows
    windows.close_all()
