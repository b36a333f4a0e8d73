"""MedSAM2 (SAM2.1 Hiera-tiny, 512 x 512) in plain torch, under the official key names.

Modules: :mod:`.hiera` (trunk), :mod:`.neck` (FPN + image encoder), :mod:`.sam_heads`
(prompt encoder, mask decoder), :mod:`.transformer` (attention, two-way transformer, RoPE
attention), :mod:`.memory_attention`, :mod:`.memory_encoder`, :mod:`.model` (the 471-key
network and its per-frame steps), :mod:`.propagator` (video/volume state machine),
:mod:`.preprocessing` (window, resize, normalise), :mod:`.engine` (the Qt-free entry point
``MedSAM2Engine``). Nothing is imported or computed at package import time.
"""

__all__ = ["MedSAM2Engine", "Segmentation", "SliceUpdate", "load_medsam2_state_dict"]


def __getattr__(name):  # lazy: importing the package imports no torch
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)
