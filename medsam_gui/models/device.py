"""Device and precision choice for the torch models: all precision handling lives here.

``pick_device("auto")`` prefers CUDA, then Apple MPS, then CPU. Precision:

- ``"fp32"``: plain float32, reproduces the reference MedSAM inference exactly (segment-anything's
  own encoder modules, skimage preprocessing, one slice at a time);
- ``"auto"``: bfloat16 on CUDA (batched fast encoder, GPU preprocessing), ``CPU_AUTO_PRECISION``
  on the CPU ("fast": the reference's float32 numbers ~1.7x faster), float32 on MPS;
- ``"bf16"``: bfloat16 autocast on CUDA or CPU (explicit opt-in; slow on CPUs without native
  bf16 units, e.g. AVX2-only ones). LiteMedSAM runs it on the CPU with its own bf16 kernels and
  picks it for "auto" where :func:`cpu_has_native_bf16` (see ``LiteMedSAMEngine._resolve``);
- ``"fp16"``: float16 autocast on CUDA or MPS; float32 on the CPU (fp16 GEMMs are ~10x slower
  than fp32 on AVX2 CPUs);
- ``"int8"``: the fast CPU encoder (dynamic int8 Linear layers, SDPA attention, matrix-product
  resize; see :mod:`medsam_gui.models.fast_encoder`); on CUDA it means ``"bf16"`` (no int8 GPU
  kernels here), on MPS ``"fp32"``. The mask decoder always runs in float32 in this mode.
- ``"fast"``: the fast encoder in float32 on any device (SDPA attention, matrix-product resize,
  batching on CUDA): the reference's numbers up to float32 summation order (~1e-6 relative),
  ~1.7x faster than "fp32" on an AVX2 CPU.

Every precision other than "fp32" uses the fast encoder (:class:`~medsam_gui.models.fast_encoder.FastImageEncoder`);
its agreement with "fp32" is measured in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

from ..errors import MedsamGuiError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("fp32", "auto", "bf16", "fp16", "int8", "fast")
# What "auto" means on the CPU: "fast" computes the reference's float32 numbers (to ~1e-6
# relative, summation order) about 1.7x faster. "int8" is ~1.9x faster with masks agreeing at
# Dice >= 0.985 on random weights (docs/benchmarks.md); it stays opt-in until its agreement is
# confirmed on the real MedSAM checkpoint (bench/quality.py --checkpoint medsam_vit_b.pth).
CPU_AUTO_PRECISION = "fast"


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
    """The effective precision ("fp32", "bf16", "fp16", "int8" or "fast") for ``precision`` on ``device``."""
    precision = (precision or "fp32").strip().lower()
    if precision not in PRECISION_CHOICES:
        raise MedsamGuiError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "fp32":
        return "fp32"
    if precision == "auto":
        if device.type == "cuda":
            return "bf16"
        return CPU_AUTO_PRECISION if device.type == "cpu" else "fp32"
    if precision == "fast":
        return "fast"
    if precision == "int8":
        return {"cpu": "int8", "cuda": "bf16"}.get(device.type, "fp32")
    if precision == "fp16":
        return "fp16" if device.type in ("cuda", "mps") else "fp32"
    # explicit bf16
    if device.type not in ("cuda", "cpu"):
        return "fp32"
    return "bf16"


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where oneDNN's
    bf16 kernels run about twice as fast as float32 ones; elsewhere bf16 is emulated (slower)."""
    import torch

    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def autocast(device, effective_precision: str) -> ContextManager:
    """The context manager to run model code under for an effective precision."""
    if effective_precision in ("bf16", "fp16"):
        import torch

        dtype = torch.bfloat16 if effective_precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()
