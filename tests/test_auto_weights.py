"""Model manager entries of the automatic models: official sources, licences (shown and accepted in
the weights dialog before the first download), and the checkpoint structure checks, with files
made in the official layouts (tensors of the official shapes, stored as one broadcast value so
the files stay small) served by the local HTTP server."""

from __future__ import annotations

import hashlib

import pytest
import torch

from medsam_gui.errors import CheckpointError
from medsam_gui.models import auto_weights
from medsam_gui.models import weights as manager
from weights_server import serve_files


def _state(layout: dict, prefix=lambda k: k) -> dict:
    return {prefix(k): torch.zeros(1, dtype=torch.int64 if k.endswith("relative_position_index") else torch.float32)
            .expand(shape) for k, shape in layout.items()}


def hermes_file(path, *, drop: str | None = None):
    sd = _state(auto_weights.hermes_layout())
    if drop:
        del sd[drop]
    torch.save({"epoch": 3, "model_state_dict": sd, "ema_model_state_dict": sd, "optimizer_state_dict": {}}, path)
    return path


def universal_file(path, prefix=auto_weights.universal_file_key):
    torch.save({"net": _state(auto_weights.universal_layout(), prefix), "epoch": 1}, path)
    return path


def test_entries_sources_and_licences():
    hermes = manager.get_model("hermes")
    assert hermes.name == "hermes_r" and "id=1s3Rc5zpgNz9FA2eqKBExaXQ_nsbAPMT8" in hermes.url
    assert hermes.record_checksum and hermes.sha256 is None and "state no licence" in hermes.licence
    uni = manager.get_model("universal")
    assert uni.url == ("https://huggingface.co/ljwztc/CLIP-Driven-Universal-Model/resolve/main/"
                       "clip_driven_universal_swin_unetr.pth")
    assert uni.licence.startswith("CC BY-NC-ND 4.0") and uni.record_checksum
    text = manager.get_model("universal_text_embedding")
    assert text.url.endswith("/ljwztc/CLIP-Driven-Universal-Model/main/pretrained_weights/txt_encoding.pth")
    assert text.sha256 == "9de46b0be0fdfedc82852045d15efdbb3a04e48a954df27d1290af2f63997145"
    assert len(auto_weights.hermes_layout()) == 405 and len(auto_weights.universal_layout()) == 170
    assert not manager.licence_accepted("hermes_r") and manager.licence_accepted("universeg_v1")
    manager.accept_licence("hermes_r")
    assert manager.licence_accepted("hermes_r") and not manager.licence_accepted("universal_model")


def test_import_validates_official_layouts(tmp_path):
    assert manager.import_weights("hermes", hermes_file(tmp_path / "h.pth"), copy=False) == tmp_path / "h.pth"
    assert manager.recorded_sha256("hermes_r") == hashlib.sha256((tmp_path / "h.pth").read_bytes()).hexdigest()
    manager.validate_file("universal_model", universal_file(tmp_path / "u.pth"))
    emb = tmp_path / "txt_encoding.pth"
    torch.save(torch.zeros(32, 512, dtype=torch.float16), emb)
    manager.validate_file("universal_text_embedding", emb)

    with pytest.raises(CheckpointError, match=r"\['ema_model_state_dict'\].*1 expected keys are missing: out.norm.bias"):
        manager.validate_file("hermes_r", hermes_file(tmp_path / "h2.pth", drop="out.norm.bias"))
    with pytest.raises(CheckpointError, match="no 'ema_model_state_dict'"):
        manager.validate_file("hermes_r", universal_file(tmp_path / "u2.pth"))
    with pytest.raises(CheckpointError, match=r"170 expected keys are missing: module.organ_embedding"):
        manager.validate_file("universal_model", universal_file(tmp_path / "u3.pth", prefix=lambda k: k))
    with pytest.raises(CheckpointError, match=r"holds a \(32, 768\) torch.float16 tensor"):
        torch.save(torch.zeros(32, 768, dtype=torch.float16), emb)
        manager.import_weights("universal_text_embedding", emb)
    assert manager.resolve("universal_text_embedding") is None


def test_downloads_checked_against_official_layout_and_checksum(tmp_path):
    from medsam_gui import config
    from medsam_gui.errors import WeightsDownloadError

    emb = tmp_path / "txt_encoding.pth"
    torch.save(torch.zeros(32, 512, dtype=torch.float16), emb)
    with serve_files() as (base, files):
        files["/u.pth"] = (universal_file(tmp_path / "u.pth").read_bytes(), "ok")
        files["/txt.pth"] = (emb.read_bytes(), "ok")
        files["/h.pth"] = (files["/u.pth"][0], "ok")
        path = manager.download("universal", url=f"{base}/u.pth")
        assert path == config.weights_dir() / "clip_driven_universal_swin_unetr.pth"
        assert manager.recorded_sha256("universal_model") == hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(WeightsDownloadError, match="failed its SHA-256 check.*9de46b0be0fd"):
            manager.download("universal_text_embedding", url=f"{base}/txt.pth")  # not the official file
        with pytest.raises(CheckpointError, match="no 'ema_model_state_dict'"):
            manager.download("hermes", url=f"{base}/h.pth")  # a Universal Model file offered as Hermes-R
    assert sorted(p.name for p in config.weights_dir().iterdir()) == ["clip_driven_universal_swin_unetr.pth"]


@pytest.mark.gui
def test_dialog_shows_licence_and_needs_acceptance(qtbot, tmp_path, monkeypatch):
    from qtpy.QtCore import QPoint, Qt

    from medsam_gui.gui.weights_dialog import WeightsDialog

    data = hermes_file(tmp_path / "served.pth").read_bytes()
    with serve_files() as (base, files):
        files["/hermes.pth"] = (data, "ok")
        monkeypatch.setenv("MEDSAM_GUI_URL_HERMES_R", f"{base}/hermes.pth")
        dlg = WeightsDialog(None, model_name="hermes")
        qtbot.addWidget(dlg)
        dlg.show()
        assert dlg.licence_label.isVisible() and "state no licence" in dlg.licence_label.text()
        assert not dlg.download_button.isEnabled()
        dlg.start_download()  # refused: the licence is not accepted
        assert "I accept these terms" in dlg.error_label.text() and not dlg.busy
        box = dlg.licence_check
        qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=QPoint(6, box.height() // 2))  # on the tick box
        assert dlg.download_button.isEnabled()
        with qtbot.waitSignal(dlg.weights_ready, timeout=20000) as ready:
            qtbot.mouseClick(dlg.download_button, Qt.MouseButton.LeftButton)
        assert ready.args[0] == manager.resolve("hermes_r") and ready.args[0].read_bytes() == data
    assert manager.licence_accepted("hermes_r")
    again = WeightsDialog(None, model_name="hermes_r")
    qtbot.addWidget(again)
    assert again.licence_check.isChecked() and again.download_button.isEnabled()
    plain = WeightsDialog(None, model_name="universeg_v1")
    qtbot.addWidget(plain)
    assert plain.licence_check is None and plain.download_button.isEnabled()


def test_cli_download_asks_for_the_licence_first(tmp_path, capsys):
    from medsam_gui.cli import main

    with serve_files() as (base, files):
        files["/u.pth"] = (universal_file(tmp_path / "u.pth").read_bytes(), "ok")
        assert main(["weights", "download", "universal", "--url", f"{base}/u.pth"]) == 1
        err = capsys.readouterr().err
        assert "CC BY-NC-ND" in err and "--accept-licence" in err
        assert manager.resolve("universal_model") is None and not manager.licence_accepted("universal_model")
        assert main(["weights", "download", "universal", "--url", f"{base}/u.pth", "--accept-licence"]) == 0
    assert manager.licence_accepted("universal_model")
    assert manager.resolve("universal_model").name == "clip_driven_universal_swin_unetr.pth"
    assert main(["weights", "download", "sam", "--url", "http://127.0.0.1:9/none"]) == 1  # no licence to accept
    assert "--accept-licence" not in capsys.readouterr().err
