"""Panel state in sessions: numpy arrays anywhere inside a JSON-able dict are stored as
tagged, zlib-compressed base64 (``session.json``) and come back with the same dtype and shape."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SessionError

_ARRAY_TAG = "__ndarray__"


def encode_state(obj: Any, where: str) -> Any:
    """JSON-ready copy of ``obj``: numpy arrays become tagged, zlib-compressed base64."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.kind not in "biuf":
            raise TypeError(f"{where}: array of dtype {obj.dtype} cannot be saved (numbers only)")
        arr = np.ascontiguousarray(obj)
        return {_ARRAY_TAG: {"dtype": arr.dtype.str, "shape": list(arr.shape),
                             "zlib_b64": base64.b64encode(zlib.compress(arr.tobytes(), 1)).decode("ascii")}}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be strings, got {k!r}")
            out[k] = encode_state(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [encode_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be saved in a session")


def decode_state(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_TAG} and isinstance(obj[_ARRAY_TAG], dict):
            spec = obj[_ARRAY_TAG]
            dtype = np.dtype(spec["dtype"])
            if dtype.hasobject or dtype.kind not in "biuf":
                raise SessionError(f"A saved panel array has the unsupported dtype {dtype}.")
            raw = zlib.decompress(base64.b64decode(spec["zlib_b64"]))
            return np.frombuffer(raw, dtype=dtype).reshape([int(s) for s in spec["shape"]]).copy()
        return {k: decode_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v) for v in obj]
    return obj



def has_content(state: Any) -> bool:
    """Some top-level value is a non-empty list / dict / array (settings alone are no work)."""
    return isinstance(state, dict) and any(isinstance(v, (list, dict)) and v for v in state.values())

