"""Torch models and their plumbing (no Qt). Nothing is built or loaded at import time.

Stable scripting API: ``from medsam_gui.models import universeg_v1, hermes_r``.
"""

from __future__ import annotations

__all__ = ["universeg_v1", "hermes_r"]


def __getattr__(name: str):
    if name == "universeg_v1":
        from .universeg import universeg_v1

        return universeg_v1
    if name == "hermes_r":
        from .hermes.network import hermes_r

        return hermes_r
    raise AttributeError(f"module 'medsam_gui.models' has no attribute {name!r}")
