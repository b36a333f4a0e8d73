"""Torch models and their plumbing (no Qt). Nothing is built or loaded at import time.

Stable scripting API: ``from medsam_gui.models import universeg_v1, hermes_r, universal_model``.
"""

from __future__ import annotations

__all__ = ["universeg_v1", "hermes_r", "universal_model"]


def __getattr__(name: str):
    if name == "universeg_v1":
        from .universeg import universeg_v1

        return universeg_v1
    if name == "hermes_r":
        from .hermes.network import hermes_r

        return hermes_r
    if name == "universal_model":
        from .universal.network import universal_model

        return universal_model
    raise AttributeError(f"module 'medsam_gui.models' has no attribute {name!r}")
