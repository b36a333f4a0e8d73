"""Checkpoint layouts of the automatic models (issue 15) and the model manager's validation of
their files: the exact key sets and shapes of the official files, so an import or a download
is refused with a clear message when it is not the model's checkpoint.

- Hermes-R (``kind="hermes"``): ``{'epoch', 'model_state_dict', 'ema_model_state_dict',
  'optimizer_state_dict'}``; both state dicts hold the 405 tensors of ``Hermes_UNet`` under the
  official names, without prefix (the app uses the EMA weights).
- CLIP-Driven Universal Model (``kind="universal"``): ``ckpt['net']`` holds the 170 tensors of
  ``Universal_model`` (SwinUNETR backbone, 8 of them the int64 ``relative_position_index``
  buffers) under ``'module.'`` + the model key without its leading ``'backbone.'``.
- Its text embedding (``kind="universal_text"``, ``txt_encoding.pth``): one (32, 512) float
  tensor, the CLIP text embeddings of the 32 organs.

The layouts ("key<TAB>comma-joined shape" lines, official order) come from the golden files in
../shared/golden (``hermes_seed2024.pt``: ``weights_index``; ``universal_seed2024.pt``:
``state_keys`` / ``state_shapes``, model keys), stored zlib-compressed and base64-encoded.
"""

from __future__ import annotations

import base64
import functools
import os
import zlib

from ..errors import CheckpointError
from .checkpoints import check_state_dict, load_checkpoint_object

TEXT_EMBEDDING_SHAPE = (32, 512)
HERMES_STATES = ("ema_model_state_dict", "model_state_dict")

_HERMES_LAYOUT = (
    "eNqtnOFyGjsMhX/3PgvDcGRC6dMwlJCUSQq5QG6nb39ZuiWLY3kt6UyT/gDpWDYrf3aiaLffTDeH/X+Y/trunn+cvySZYJK6f//s"
    "+vekt+j+H5h1XwU7Ue0eD7/2vQoKkot5xVRy0876s+npx+F43ryfW4SlHENJWBpiEH1mkGXFVj7Zdt8F4+LkNG1R4ihqy2ggb8fd"
    "4bja7Xfn1dP7abuS6Xl9elldX/7yNXWWBZufh8f16+78u7dbTDBTLNfn8371uv69PZ6ms+mf99fPz8ft8/q8XX1/PWxepvvD8ScG"
    "4YVkvu/Wp6CIcGKRaCxP++n5sPo3++BCYi+3x0AeFmG1w+WZJQbXyRmX7Oni2a21/RO7eTpG7L42tyf2ATJx+V9HvnhbPYfP58Tl"
    "3zznp+36HM/Xiko8EqFEEl0TZ65WtOypWhFzZOqImm25PHl672gfz5eluXtzkt47mnM0d2+cLzhMBYOp4DAVDKaCyVRQmQouU8Fi"
    "KtxMhZOpCDIVbqYiyFS4mQoKU0FgKihMBYGpIDIVTKaCylSQmAovU+FjKmJMhZepiDEVOlO7K3LS7/X9wzG4Tyf9Yt8Zd98F4+LF"
    "XhUXJZKiuIxGki9Oym72F8uCTelmX7Y03+yjMtdPLyYinFgkGku2s/UfXEjsY2vrsjKqNtjbGMHdNrd2oXx3c3g6Rrzf3zCT+cQl"
    "8GenubhbXeVum3AJNE97/CASVIlHIpRIomviTNemg0hrtrYdRAihmXK1eBCxO9rHcyZq8STSlGbKUaQ5TYtnkfGQwSErGGQFh6xg"
    "kBVMsoJKVnDJChZZ4SYrnGRFlKzwkxVRssJNVlDICgJZQSErCGQFkaxgkhVUsoJEVnjJCh9ZESQr3GRFkKzQydpdl+f6LT/JLLtb"
    "z/Vbfmd8/f5sXLzlq+KiRFIUl9FI8sWZZ7f8i2XBpnTLL1uab/lRmeunFxMRTiwSjSXb3PoPLiT2MihTiasNtjdGcLf9rV0o3+Ac"
    "no4Rsy1Olpa5f9rjLu5W1+ETOvEJNE97/CwSVIlHIpRIomviTNems0hrtradRQihmXK1eBaxO9rHcyZq+SzSkmbKWaQ5TYtnkfGQ"
    "wSErGGQFh6xgkBVMsoJKVnDJChZZ4SYrnGRFlKzwkxVRssJNVlDICgJZQSErCGQFkaxgkhVUsoJEVnjJCh9ZESQr3GRFkKzwklU4"
    "ZBUGWYVDVmGQVZhkFSpZhUtWYZFV3GQVJ1klSlbxk1WiZBU3WYVCViGQVShkFQJZhUhWYZJVqGQVElnFS1bxkVWCZBU3WSVIVvGS"
    "NXHImhhkTRyyJgZZE5OsiUrWxCVrYpE1ucmanGRNUbImP1lTlKzJTdZEIWsikDVRyJoIZE1EsiYmWROVrIlE1uQla/KRNQXJmtxk"
    "TUGyJp2s72/9L4BnSs33w9e/vzrOTGsV3wNTtfK8IIzRuvPMdLzq/LoaD2rBef92vda8NwqUmZsVsmIJo7+EI5BABNVKGrOOVkVj"
    "FlIraFxK7cujV860ONnGqVbMtPnm1TItXlqlTJtvyxQtZWxWgdD4Eh0/MH97ojmq1aw6tjSz1ajpEsYkq1am1T3sKTZWj9bgZEqw"
    "kfrugg/CNEOQZgjTDEGagUQzsGgGGs1AoBk8NIOdZgjQDC6aIUAzeGiGKM0QoxmiNEOMZuDQDCSagUUzxGkGB81gphn8NIOHZvDT"
    "rFJT/f4m+s31+mfNy/nt1ij6zfW+C9nAVG2GVhDGaC+0zHS8E9p1NRZqE7T+7Xr/s94o0PrMrJD9Jb/RX8IRSCCCapsHs47W4sEs"
    "pLZ3cCm1L4/e1qHFyTZOrZ1Dm2vWyqHFSWnj0ObaMj9LgxWrQGh8iY4fmL89yxx9VKw6thyzdU/RJYwZVu2ZUvcw59dIp5QGH0t2"
    "jfQcK/ggzDEEOYYwxxDkGEgcA4tjoHEMBI7BwzHYOQY/x+DhGPwcg4djiHIMMY4hyjHEOAYOx0DiGFgcQ5xjcHAMZo7BzTE4OAY3"
    "xyp9vt7fkn5bXcwn+Ca3i2LSL6vDluADQ60peUEVIz3JM8Pa8HN9Rkkm3xZlQ717+8BQ+UvmgihGWsdnhvro3QN/9wzPlsuPF/sf"
    "c/QvbV7Xp9Puabc9Xu7d28fuADP8Kcryknh103E5GbbLrxv2v8wvWmAY2XW6FbMxIWkT+ojo5+FxVVzXuzc+FuPvyx+q5YVV7EaE"
    "buEvJjWjq8rif8akYAY="
)
_UNIVERSAL_LAYOUT = (
    "eNqtmk1z2jAQhs/wWzwe3pUhcOyp1x46vTIGPIkbY1PbJem/r2Tz4YAktGuGkEmAR6tF+3iFTVW/puU622+y3S4vXyeKojloukm3"
    "75uqzOLmIy9/5T/jQ9pu3/rXxYe6+h1/ZPnrWztJlhEiMrcAZpOnjSbuX1mk/7K6QTyLN0W1fW/0H2VV73GNwmA4UdK2LeM6K9I2"
    "P2brQ9XkbV6VazPEuk03RTYhrF4iNWawvNxlnxOVqEjfwwf68348p48kiTgJGbR7FzQYTt0sKyegaHVJsLrEirIvDnGRl1laXyoJ"
    "K4oEdP9urogJ0lATAR2eLATCgC0MnikMniUM5MJAJAzkwkAkDATCgC0MRgkDqTAYJQy4wuyqj7JJ94ci06W3+7s1JXeOulpEapkE"
    "0ubtPYNMqpumhyFnJ1wtGEwXJpAIFHvUYEFik68T0nIZcRK6iK3BcGooti4JTsCr2IyVIsHqEiuKRWxdfpGAZpWuRWy/YuTthEHT"
    "hUAYsIXBM4XBs4SBXBiIhIFcGIiEgUAYsIXBKGEgFQajhAFXGF8nNG3/ZbEMxIetkEl18/QwytkKPfsD5eiFoUig2xg1WpDcytcN"
    "5y+LiJXSxW5NhlNDu01dsEJe/easF0kWmXhxLIrrOowkOKuILY4/sE15u2LYhCGRB3x58FR58Cx5MEIeiOTBGHkgkwcSecCXB+Pk"
    "gVQejJMHbHl8LdLsBzBXi0B+2CO5WD9VD5Q4u6Rn75A4umQoEig6jRotSPTEe/YUc4pYOV1PB2k0HBuqboqDFfOqOmfFSLLMxItj"
    "OymkSzGS8LxCtsj+SLrE2yrDpgyJQeAbhKcahGcZhDEGQWYQxhgEmUGQGAS+QRhpEMQGYaRBYBvk65dmf6BmLxTIfzm9ysT6qX6B"
    "snJb7TL9BnZUvK3KI7rfX65kKnPzQnQL6Z/HlLoP1d3uIPLNzxmKRBNUzljdOZwAioKpxBnrtCkO4IjBYeYMaOqwq8XHIIWAu6wD"
    "53Fbp2VzWHfILWesu7lMfuHMa9edcpbZGtAX9AamO7i7h8HKGvmmUE9w4ky3O8CsyJFu4k+3W1HnjBN/uo6ScMHKGtmernKmazhd"
    "9vZslT/b1cIzX+VP1mqbC1W2sPZMyZmpxvSxxJ4o+RNNlu7Jkj9P6xHMhSpLVHuacKbZB7SnCXmakKeJ8DQPdbYtmj6p2eB68dfH"
    "z5dJh49eNgjdRO5HO20AltPv335chzYfvPsHLh/jzb/qcv1hvhgcRPqn+usL88VUj9vWVVHoo+11W2S+f3R6+eD587Zn2maf7bqt"
    "1se8GewtTBjzvaWbZ8+R/gOtGIUS"
)


def _decode(blob: str) -> dict[str, tuple[int, ...]]:
    text = zlib.decompress(base64.b64decode(blob)).decode()
    rows = (line.split("\t") for line in text.splitlines())
    return {key: tuple(int(n) for n in shape.split(",")) for key, shape in rows}


@functools.cache
def hermes_layout() -> dict[str, tuple[int, ...]]:
    """Hermes-R state dict: key -> shape (405 keys, official order)."""
    return _decode(_HERMES_LAYOUT)


@functools.cache
def universal_layout() -> dict[str, tuple[int, ...]]:
    """Universal Model state dict (model keys, e.g. ``backbone.swinViT...``): key -> shape (170)."""
    return _decode(_UNIVERSAL_LAYOUT)


def universal_file_key(model_key: str) -> str:
    """The key of ``model_key`` in the released file: ``module.`` + the key without ``backbone.``."""
    return "module." + model_key.removeprefix("backbone.")


def validate_auto_file(kind: str, title: str, path: str | os.PathLike) -> None:
    """Check that ``path`` is the official file of ``kind`` ("hermes", "universal",
    "universal_text"); CheckpointError says what is wrong otherwise."""
    obj = load_checkpoint_object(path, model_name=title)
    if kind == "universal_text":
        _check_text_embedding(obj, title, path)
        return
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold {title} weights: it contains a {type(obj).__name__}, not "
                              f"a checkpoint dictionary. Choose the official {title} file.")
    if kind == "hermes":
        if "ema_model_state_dict" not in obj:
            raise CheckpointError(
                f"{path} is not the {title} checkpoint: it has no 'ema_model_state_dict' (top-level keys: "
                f"{', '.join(sorted(map(str, obj))[:6]) or 'none'}). Choose the official {title} file.")
        for state in HERMES_STATES:
            if state in obj:
                check_state_dict(_tensors(obj[state], path, title), hermes_layout(), model_name=title,
                                 source=f"{path} ['{state}']")
        return
    if not isinstance(obj.get("net"), dict):
        raise CheckpointError(
            f"{path} is not the {title} checkpoint: it has no 'net' dictionary (top-level keys: "
            f"{', '.join(sorted(map(str, obj))[:6]) or 'none'}). Choose the official {title} file.")
    expected = {universal_file_key(k): shape for k, shape in universal_layout().items()}
    check_state_dict(_tensors(obj["net"], path, title), expected, model_name=title, source=f"{path} ['net']")


def _tensors(state, path, title: str) -> dict:
    import torch

    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold {title} weights (a {type(state).__name__} where the "
                              f"state dictionary should be).")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _check_text_embedding(obj, title: str, path) -> None:
    import torch

    if not isinstance(obj, torch.Tensor) or tuple(obj.shape) != TEXT_EMBEDDING_SHAPE or not obj.is_floating_point():
        got = (f"a {tuple(obj.shape)} {obj.dtype} tensor" if isinstance(obj, torch.Tensor)
               else f"a {type(obj).__name__}")
        raise CheckpointError(f"{path} is not the {title} (txt_encoding.pth): it holds {got}, not one "
                              f"{TEXT_EMBEDDING_SHAPE} float tensor. Choose the official file.")
