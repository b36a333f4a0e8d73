"""Model manager, LiteMedSAM entry: Google Drive download through its virus-scan confirmation
page (a local server on 127.0.0.1 imitates drive.usercontent.google.com), progress, the
checksum recorded at first install and verified after, the structure check, import."""

from __future__ import annotations

import hashlib
import html
import http.server
import threading
import urllib.parse

import pytest
import torch

from medsam_gui import config
from medsam_gui.errors import CheckpointError, WeightsDownloadError
from medsam_gui.models import weights as manager
from medsam_gui.models.download_pages import confirmation_url

import litemedsam_helpers as H

FILE_ID = "18Zed-TUTsmr2zc5CHUWd5Tu13nb6vq6z"
UUID = "0b5c2d9e-4f1a-4c3b-9d2e-7a1b2c3d4e5f"


class _Drive(http.server.BaseHTTPRequestHandler):
    """Imitates Google Drive: /download?id=..&export=download answers the "can't scan for viruses"
    page (the current uuid form); with confirm=t&uuid=.. it sends the file. /uc answers the older
    page (a confirm=TOKEN link and a download_warning cookie). /quota answers a page without any
    confirmation. ``files`` maps file ids to bytes; ``log`` records the paths asked for."""

    files: dict = {}
    log: list = []

    def log_message(self, *a):
        pass

    def _html(self, body: str, cookie: str | None = None):
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self, data: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Disposition", 'attachment; filename="lite_medsam.pth"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), 1 << 16):
            self.wfile.write(data[i:i + (1 << 16)])

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(parts.query))
        self.log.append(self.path)
        data = self.files.get(q.get("id"))
        if data is None:
            self.send_error(404, "Not Found")
            return
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        if parts.path == "/download":
            if q.get("confirm") == "t" and q.get("uuid") == UUID:
                self._file(data)
                return
            self._html(
                "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
                "<p>Google Drive can't scan this file for viruses.</p>"
                f'<form id="download-form" action="{host}/download" method="get">'
                '<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{q["id"]}"><input type="hidden" name="export" value="download">'
                f'<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{UUID}">'
                "</form></body></html>")
            return
        if parts.path == "/uc":
            if q.get("confirm") == "Xy7Q" and "download_warning_1_abc=Xy7Q" in (self.headers.get("Cookie") or ""):
                self._file(data)
                return
            href = html.escape(f"/uc?export=download&confirm=Xy7Q&id={q['id']}")
            self._html(f'<html><head><title>Google Drive</title></head><body><a id="uc-download-link" href="{href}">'
                       "Download anyway</a></body></html>", cookie="download_warning_1_abc=Xy7Q; Path=/")
            return
        if parts.path == "/quota":
            self._html("<html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users have "
                       "viewed or downloaded this file recently.</body></html>")
            return
        self.send_error(404, "Not Found")


@pytest.fixture(scope="module")
def drive():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drive)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Drive.files
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def lite_bytes():
    """A checkpoint in the official layout (plain state dict, 435 keys): the golden weights."""
    return H.golden_checkpoint().read_bytes()


@pytest.fixture(scope="module")
def other_lite_bytes(tmp_path_factory):
    """Another valid LiteMedSAM file (one tensor changed)."""
    sd = dict(H.golden_state_dict())
    sd["image_encoder.neck.1.bias"] = sd["image_encoder.neck.1.bias"] + 1.0
    p = tmp_path_factory.mktemp("lite2") / "lite_medsam.pth"
    torch.save(sd, p)
    return p.read_bytes()


def test_known_entry_points_at_google_drive():
    m = manager.get_model("litemedsam")
    assert manager.get_model("lite_medsam") is m
    assert m.filename == "lite_medsam.pth" and m.kind == "litemedsam" and m.record_checksum
    assert m.url == f"https://drive.usercontent.google.com/download?id={FILE_ID}&export=download"
    assert m.sha256 is None and m.md5 is None
    assert manager.resolve("litemedsam") is None
    assert "litemedsam" in {d["name"] for d in manager.list_models()}


def test_confirmation_url_forms():
    page = ('<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
            '<input type="submit" value="Download anyway"><input type="hidden" name="id" value="ABC">'
            '<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t">'
            '<input type="hidden" name="uuid" value="u-1"></form>')
    assert confirmation_url(page, "https://drive.google.com/uc?id=ABC") == (
        "https://drive.usercontent.google.com/download?id=ABC&export=download&confirm=t&uuid=u-1")
    old = '<a href="/uc?export=download&amp;confirm=TOK&amp;id=ABC">Download anyway</a>'
    assert confirmation_url(old, "https://drive.google.com/uc?export=download&id=ABC") == (
        "https://drive.google.com/uc?export=download&confirm=TOK&id=ABC")
    assert confirmation_url("<p>no</p>", "https://drive.google.com/uc?export=download&id=ABC",
                                    {"download_warning_x": "C00K"}) == (
        "https://drive.google.com/uc?export=download&id=ABC&confirm=C00K")
    assert confirmation_url("<html><title>Quota exceeded</title></html>", "https://x/y") is None


def test_drive_download_via_confirmation_page_records_checksum(drive, lite_bytes, monkeypatch):
    base, files = drive
    files[FILE_ID] = lite_bytes
    _Drive.log.clear()
    monkeypatch.setenv("MEDSAM_GUI_URL_LITEMEDSAM", f"{base}/download?id={FILE_ID}&export=download")
    events = []
    path = manager.download("litemedsam", progress=lambda d, t: events.append((d, t)))
    assert path == config.weights_dir() / "lite_medsam.pth" and path.read_bytes() == lite_bytes
    assert len(_Drive.log) == 2 and "uuid=" + UUID in _Drive.log[1] and "confirm=t" in _Drive.log[1]
    assert events[0] == (0, len(lite_bytes)) and events[-1] == (len(lite_bytes), len(lite_bytes))
    assert len(events) > 3 and all(a[0] <= b[0] for a, b in zip(events, events[1:]))
    sha = hashlib.sha256(lite_bytes).hexdigest()
    assert manager.recorded_sha256("litemedsam") == sha
    assert manager.resolve("litemedsam", verify=True) == path
    assert not list(config.weights_dir().glob("*.part"))
    # verified after: a changed file is refused by resolve()
    data = bytearray(lite_bytes)
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed since they were installed"):
        manager.resolve("litemedsam", verify=True)
    assert manager.resolve("litemedsam") == path  # listing (model manager dialog) does not hash
    from medsam_gui import api

    with pytest.raises(CheckpointError, match="changed since they were installed.*weights download litemedsam"):
        api.resolve_checkpoint("litemedsam")


def test_older_drive_page_with_cookie_token(drive, lite_bytes):
    base, files = drive
    files[FILE_ID] = lite_bytes
    path = manager.download("litemedsam", url=f"{base}/uc?export=download&id={FILE_ID}")
    assert path.read_bytes() == lite_bytes


def test_later_download_must_match_recorded_checksum(drive, lite_bytes, other_lite_bytes, tmp_path):
    base, files = drive
    files[FILE_ID] = lite_bytes
    url = f"{base}/download?id={FILE_ID}&export=download"
    first = manager.download("litemedsam", url=url)
    files[FILE_ID] = other_lite_bytes
    with pytest.raises(WeightsDownloadError, match="differs from the file installed first.*weights import litemedsam"):
        manager.download("litemedsam", url=url)
    assert first.read_bytes() == lite_bytes and not list(config.weights_dir().glob("*.part"))
    # importing a file the user chose makes it the reference
    src = tmp_path / "lite_medsam_v2.pth"
    src.write_bytes(other_lite_bytes)
    used = manager.import_weights("litemedsam", src)
    assert used.read_bytes() == other_lite_bytes
    assert manager.recorded_sha256("litemedsam") == hashlib.sha256(other_lite_bytes).hexdigest()
    assert manager.resolve("litemedsam", verify=True) == used


def test_quota_page_and_wrong_files_leave_nothing(drive, tmp_path):
    base, files = drive
    files["QUOTA"] = b"unused"
    with pytest.raises(WeightsDownloadError, match="web page instead of lite_medsam.pth.*Quota exceeded"):
        manager.download("litemedsam", url=f"{base}/quota?id=QUOTA")
    import medsam_fixtures

    files["VITB"] = medsam_fixtures.vit_b_checkpoint().read_bytes()
    with pytest.raises(CheckpointError, match=r"SAM ViT-B.*not LiteMedSAM"):
        manager.download("litemedsam", url=f"{base}/download?id=VITB&export=download")
    assert list(config.weights_dir().iterdir()) == []
    assert manager.recorded_sha256("litemedsam") is None and manager.resolve("litemedsam") is None
    with pytest.raises(CheckpointError, match="SAM ViT-B"):
        manager.import_weights("litemedsam", medsam_fixtures.vit_b_checkpoint())


def test_import_checks_structure(tmp_path, lite_bytes):
    sd = dict(H.golden_state_dict())
    sd.pop("mask_decoder.iou_prediction_head.layers.2.bias")
    bad = tmp_path / "lite_medsam.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match="missing: mask_decoder.iou_prediction_head.layers.2.bias"):
        manager.import_weights("litemedsam", bad)
    good = tmp_path / "good.pth"
    good.write_bytes(lite_bytes)
    assert manager.import_weights("litemedsam", good, copy=False) == good.resolve()
    assert manager.recorded_sha256("litemedsam") == hashlib.sha256(lite_bytes).hexdigest()
