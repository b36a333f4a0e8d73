"""MedSAM2 (SAM2.1 Hiera-tiny, 512 x 512) in plain torch, under the official key names.

Modules: :mod:`.hiera` (trunk), :mod:`.neck` (FPN + image encoder), :mod:`.sam_heads`
(prompt encoder, mask decoder), :mod:`.transformer` (attention, two-way transformer, RoPE
attention), :mod:`.memory_attention`, :mod:`.memory_encoder`, :mod:`.model` (the 471-key
network and its per-frame steps), :mod:`.propagator` (video/volume state machine),
:mod:`.preprocessing` (window, resize, normalise), :mod:`.engine` (the Qt-free entry point
``MedSAM2Engine``). Nothing is imported or computed at package import time.
"""
