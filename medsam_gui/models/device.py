"""Device and precision choice for the torch models: all precision handling lives here.

``pick_device("auto")`` prefers CUDA, then Apple MPS, then CPU. Precision:

- ``"fp32"``: plain float32, reproduces the reference MedSAM inference exactly;
- ``"auto"``: bfloat16 autocast on CUDA, float32 elsewhere (CPU/MPS) for now;
- ``"bf16"``: bfloat16 autocast on CUDA or CPU (explicit opt-in).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

from ..errors import MedsamGuiError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("fp32", "auto", "bf16")


class DeviceError(MedsamGuiError):
    """A requested compute device is not available."""


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(choice: str = "auto"):
    """The torch.device for ``choice`` ("auto", "cpu", "cuda", "cuda:N" or "mps").

    Raises DeviceError (a MedsamGuiError) when CUDA or MPS is requested but absent.
    """
    import torch

    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but no CUDA GPU is available to PyTorch on this machine; "
                "use --device cpu (or auto), or install a CUDA build of PyTorch."
            )
        return torch.device(choice)
    if choice == "mps":
        if not _mps_available():
            raise DeviceError("Apple MPS was requested but is not available here; use --device cpu or auto.")
        return torch.device("mps")
    raise DeviceError(f"unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def resolve_precision(precision: str, device) -> str:
    """The effective precision ("fp32" or "bf16") for ``precision`` on ``device``."""
    precision = (precision or "fp32").strip().lower()
    if precision not in PRECISION_CHOICES:
        raise MedsamGuiError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "fp32":
        return "fp32"
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    # explicit bf16
    if device.type not in ("cuda", "cpu"):
        return "fp32"
    return "bf16"


def autocast(device, effective_precision: str) -> ContextManager:
    """The context manager to run model code under for an effective precision."""
    if effective_precision == "bf16":
        import torch

        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
