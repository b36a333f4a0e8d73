"""Import segment-anything's model classes without needing torchvision, and build ViT-B.

``segment_anything/__init__.py`` imports the predictor, which imports torchvision; the model
code in ``segment_anything/modeling/`` needs only torch. When torchvision is installed we
import ``segment_anything.modeling`` normally. Otherwise we locate the installed package with
``importlib.util.find_spec`` (which does not run its ``__init__``) and load only its
``modeling`` subpackage under a private name, so its relative imports work and no torchvision
stand-in is ever created.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from functools import partial
from pathlib import Path
from types import ModuleType

from ..errors import MedsamGuiError

PRIVATE_NAME = "_medsam_gui_sam_modeling"

# SAM ViT-B hyper-parameters (build_sam_vit_b in segment-anything).
VIT_B = dict(
    encoder_embed_dim=768,
    encoder_depth=12,
    encoder_num_heads=12,
    encoder_global_attn_indexes=(2, 5, 8, 11),
)
IMAGE_SIZE = 1024
PATCH_SIZE = 16
PROMPT_EMBED_DIM = 256
EMBEDDING_SIZE = IMAGE_SIZE // PATCH_SIZE  # 64

_lock = threading.Lock()
_modeling: ModuleType | None = None


def _load_private_modeling() -> ModuleType:
    if PRIVATE_NAME in sys.modules:
        return sys.modules[PRIVATE_NAME]
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise MedsamGuiError(
            "the segment-anything package is not installed; install it with "
            "`pip install segment-anything`."
        )
    pkg_dir = Path(list(spec.submodule_search_locations)[0]) / "modeling"
    init = pkg_dir / "__init__.py"
    if not init.is_file():
        raise MedsamGuiError(f"segment-anything looks broken: {init} is missing; reinstall it.")
    mspec = importlib.util.spec_from_file_location(
        PRIVATE_NAME, init, submodule_search_locations=[str(pkg_dir)]
    )
    module = importlib.util.module_from_spec(mspec)
    sys.modules[PRIVATE_NAME] = module
    try:
        mspec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        for name in [n for n in sys.modules if n == PRIVATE_NAME or n.startswith(PRIVATE_NAME + ".")]:
            del sys.modules[name]
        raise
    return module


def sam_modeling() -> ModuleType:
    """segment-anything's ``modeling`` package (Sam, ImageEncoderViT, PromptEncoder,
    MaskDecoder, TwoWayTransformer), imported without torchvision if need be."""
    global _modeling
    with _lock:
        if _modeling is not None:
            return _modeling
        module: ModuleType | None = None
        if importlib.util.find_spec("torchvision") is not None:
            try:
                module = importlib.import_module("segment_anything.modeling")
            except ImportError:
                module = None
        if module is None:
            module = _load_private_modeling()
        _modeling = module
        return module


def build_sam_vit_b():
    """A freshly initialised SAM ViT-B (``Sam`` module, eval mode, float32, on CPU or on the
    current default device, e.g. inside ``with torch.device("meta")``).

    Image encoder: depth 12, embed 768, 12 heads, global attention at [2, 5, 8, 11], window 14,
    relative positions, 256 output channels; prompt encoder: embed 256 on a 64x64 embedding of
    a 1024x1024 input, mask_in_chans 16; mask decoder: TwoWayTransformer (depth 2, dim 256,
    mlp 2048, 8 heads), 3 multimask outputs, IoU head depth 3, hidden 256.
    """
    import torch

    m = sam_modeling()
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=VIT_B["encoder_depth"],
            embed_dim=VIT_B["encoder_embed_dim"],
            img_size=IMAGE_SIZE,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=VIT_B["encoder_num_heads"],
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(VIT_B["encoder_global_attn_indexes"]),
            window_size=14,
            out_chans=PROMPT_EMBED_DIM,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam


def vit_b_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of a SAM ViT-B state dict (built on the meta device: no memory, fast)."""
    from .checkpoints import meta_state_dict_shapes

    return meta_state_dict_shapes(build_sam_vit_b)
