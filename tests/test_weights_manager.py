"""Model manager: download from a local HTTP server (progress, checksums, failures), import,
resolve, URL overrides."""

from __future__ import annotations

import hashlib
import socket

import pytest

from medsam_gui import config
from medsam_gui.errors import CheckpointError, MedsamGuiError, WeightsDownloadError
from medsam_gui.models import weights as manager
from weights_server import serve_files


@pytest.fixture(scope="module")
def server():
    with serve_files() as served:
        yield served


@pytest.fixture(scope="module")
def universeg_bytes(universeg_checkpoint):
    """A small valid checkpoint in the UniverSeg v1 format (the golden's random weights)."""
    return universeg_checkpoint.read_bytes()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_known_models_and_sources():
    med = manager.get_model("medsam")
    assert med.filename == "medsam_vit_b.pth" and "zenodo.org/records/10689643" in med.url
    assert med.sha256 is None and med.md5 == "3bb6db55bd0c9ca30b61248bca72f8d6"
    sam = manager.get_model("sam_vit_b")
    assert sam.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert sam.sha256.startswith("ec2df627")
    uvs = manager.get_model("universeg_v1")
    assert uvs.url.endswith("/releases/download/weights/universeg_v1_nf64_ss64_STA.pt")
    with pytest.raises(MedsamGuiError, match="unknown model 'vit_h'.*medsam_vit_b"):
        manager.get_model("vit_h")
    assert manager.resolve("medsam_vit_b") is None


def test_download_with_progress_and_checksum(server, universeg_bytes):
    base, files = server
    files["/w/uvs.pt"] = (universeg_bytes, "ok")
    events = []
    sha = hashlib.sha256(universeg_bytes).hexdigest()
    path = manager.download("universeg_v1", url=f"{base}/w/uvs.pt", sha256=sha,
                            progress=lambda done, total: events.append((done, total)), chunk_size=65536)
    assert path == config.weights_dir() / "universeg_v1_nf64_ss64_STA.pt"
    assert path.read_bytes() == universeg_bytes
    assert events[0] == (0, len(universeg_bytes)) and events[-1] == (len(universeg_bytes), len(universeg_bytes))
    assert len(events) > 3 and all(a[0] <= b[0] for a, b in zip(events, events[1:]))
    assert not list(config.weights_dir().glob("*.part"))
    assert manager.resolve("universeg") == path
    assert config.get_setting("weights")["universeg_v1"] == str(path.resolve())


def test_file_url_mirror_with_progress(tmp_path, universeg_bytes):
    src = tmp_path / "mirror" / "u.pt"
    src.parent.mkdir()
    src.write_bytes(universeg_bytes)
    events = []
    path = manager.download("universeg_v1", url=src.as_uri(), chunk_size=65536,
                            progress=lambda done, total: events.append((done, total)))
    assert path.read_bytes() == universeg_bytes
    n = len(universeg_bytes)
    assert events[0] == (0, n) and events[-1] == (n, n) and len(events) > 3
    with pytest.raises(WeightsDownloadError, match="does not exist"):
        manager.download("universeg_v1", url=(tmp_path / "gone.pt").as_uri())
    assert not list(config.weights_dir().glob("*.part"))


def test_env_var_overrides_url(server, universeg_bytes, monkeypatch):
    base, files = server
    files["/mirror/u.pt"] = (universeg_bytes, "ok")
    monkeypatch.setenv("MEDSAM_GUI_URL_UNIVERSEG_V1", f"{base}/mirror/u.pt")
    assert manager.model_url("universeg_v1") == f"{base}/mirror/u.pt"
    assert manager.download("universeg_v1").is_file()


def test_wrong_checksum_leaves_no_file(server, universeg_bytes):
    base, files = server
    files["/w/bad.pt"] = (universeg_bytes, "ok")
    with pytest.raises(WeightsDownloadError, match="failed its SHA-256 check.*deleted"):
        manager.download("universeg_v1", url=f"{base}/w/bad.pt", sha256="0" * 64)
    assert list(config.weights_dir().iterdir()) == []
    assert manager.resolve("universeg_v1") is None


def test_known_md5_is_enforced_for_medsam(server, universeg_bytes):
    base, files = server
    files["/medsam.pth"] = (universeg_bytes, "ok")
    with pytest.raises(WeightsDownloadError, match="failed its MD5 check"):
        manager.download("medsam_vit_b", url=f"{base}/medsam.pth")
    assert list(config.weights_dir().iterdir()) == []


def test_http_404_is_explained(server):
    base, _ = server
    with pytest.raises(WeightsDownloadError) as ei:
        manager.download("universeg_v1", url=f"{base}/missing.pt")
    msg = str(ei.value)
    assert "HTTP 404" in msg and "127.0.0.1" in msg and "medsam-gui weights import universeg_v1 FILE" in msg
    assert list(config.weights_dir().iterdir()) == []


def test_connection_refused_reads_as_offline():
    url = f"http://127.0.0.1:{_free_port()}/universeg_v1_nf64_ss64_STA.pt"
    with pytest.raises(WeightsDownloadError) as ei:
        manager.download("universeg_v1", url=url, timeout=5)
    msg = str(ei.value)
    assert msg.startswith("could not reach 127.0.0.1: you seem to be offline")
    assert f"download {url} in a browser" in msg
    assert "medsam-gui weights import universeg_v1 FILE" in msg and "Models menu" in msg


def test_interrupted_download_is_never_used(server, universeg_bytes):
    base, files = server
    files["/w/cut.pt"] = (universeg_bytes, "truncate")
    with pytest.raises(WeightsDownloadError, match="interrupted"):
        manager.download("universeg_v1", url=f"{base}/w/cut.pt", sha256=None)
    assert list(config.weights_dir().iterdir()) == []
    assert manager.resolve("universeg_v1") is None


def test_downloaded_file_that_is_not_weights_is_refused(server):
    base, files = server
    files["/page.html"] = (b"<html>please log in</html>", "ok")
    with pytest.raises(CheckpointError, match="not a PyTorch weights file"):
        manager.download("universeg_v1", url=f"{base}/page.html")
    assert list(config.weights_dir().iterdir()) == []


def test_import_validates_copies_and_remembers(tmp_path, universeg_bytes):
    src = tmp_path / "my_uvs.pt"
    src.write_bytes(universeg_bytes)
    used = manager.import_weights("universeg", src)
    assert used == config.weights_dir() / "universeg_v1_nf64_ss64_STA.pt" and used.read_bytes() == universeg_bytes
    assert manager.resolve("universeg_v1") == used
    # without copying: the original path is remembered
    assert manager.import_weights("universeg_v1", src, copy=False) == src.resolve()
    assert manager.resolve("universeg_v1") == src.resolve()
    # wrong model: MedSAM refuses UniverSeg weights, nothing recorded
    with pytest.raises(CheckpointError, match="UniverSeg"):
        manager.import_weights("medsam_vit_b", src)
    assert manager.resolve("medsam_vit_b") is None
    # a deleted remembered file is no longer resolved
    src.unlink()
    assert manager.resolve("universeg_v1") == used


def test_import_real_vit_b_without_copy(medsam_checkpoint):
    ckpt = medsam_checkpoint
    used = manager.import_weights("medsam_vit_b", ckpt, copy=False)
    assert used == ckpt.resolve() and manager.resolve("medsam") == used
    listed = {m["name"]: m for m in manager.list_models()}
    assert listed["medsam_vit_b"]["path"] == str(used) and listed["sam_vit_b"]["path"] is None
