"""Where medsam-gui keeps its files, and the small settings store.

Folders come from platformdirs. Setting the environment variable ``MEDSAM_GUI_HOME`` puts
all of them under one folder instead (tests and portable installs use this).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

APP_NAME = "medsam-gui"


def _home_override() -> Path | None:
    home = os.environ.get("MEDSAM_GUI_HOME")
    return Path(home) if home else None


def cache_dir() -> Path:
    """Folder for re-creatable data (embedding cache)."""
    home = _home_override()
    if home is not None:
        path = home / "cache"
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Folder for user data that must survive (model weights, autosaved sessions)."""
    home = _home_override()
    if home is not None:
        path = home / "data"
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    home = _home_override()
    if home is not None:
        path = home / "config"
    else:
        import platformdirs

        path = Path(platformdirs.user_config_dir(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_dir() -> Path:
    path = data_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def embeddings_dir() -> Path:
    path = cache_dir() / "embeddings"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sessions_dir() -> Path:
    path = data_dir() / "sessions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings() -> dict[str, Any]:
    """The saved settings; an unreadable file counts as empty (and is left for inspection)."""
    path = _settings_path()
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def get_setting(key: str, default: Any = None) -> Any:
    return load_settings().get(key, default)


def set_setting(key: str, value: Any) -> None:
    """Store one setting (JSON-serialisable), written atomically."""
    data = load_settings()
    data[key] = value
    path = _settings_path()
    fd, tmp = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def try_set_setting(key: str, value: Any) -> bool:
    """``set_setting`` for preferences that are a convenience: a settings folder that cannot be
    written (read-only home, full disk) is not an error. True when saved."""
    try:
        set_setting(key, value)
        return True
    except OSError:
        return False


def resources_dir() -> Path:
    """The ``resources/`` folder: at the top of a source checkout, else where the wheel put it
    (``<prefix>/share/medsam-gui/resources``)."""
    source = Path(__file__).resolve().parent.parent / "resources"
    return source if source.is_dir() else Path(sys.prefix) / "share" / "medsam-gui" / "resources"


def demo_scan_path() -> Path:
    return resources_dir() / "demo" / "example_ct_sm.nii.gz"
