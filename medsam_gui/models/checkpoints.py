"""Safe loading and validation of model weight files (shared by MedSAM and UniverSeg).

Weights are only ever read with ``torch.load(path, map_location="cpu", weights_only=True)``:
a file whose pickle would construct arbitrary objects or call functions is refused, never
executed. Every problem a user can cause is a :class:`~medsam_gui.errors.CheckpointError`
whose message says what is wrong with the file and what to do.

Accepted layouts: a plain ``{name: tensor}`` state dict, or a training checkpoint
``{"model": state_dict, ...}`` (also ``"state_dict"``), with optional ``module.`` /
``_orig_mod.`` prefixes (DataParallel / torch.compile) which are stripped.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import CheckpointError

WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 5

CODE_REFUSED = "refused: the file contains code/objects, not plain weights"


def _describe_head(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return ""
    text = head.decode("ascii", errors="replace")
    printable = "".join(c if c.isprintable() else "." for c in text)
    return printable


def load_checkpoint_object(path: str | os.PathLike, *, model_name: str = "model") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with user-facing errors.

    Raises CheckpointError for a missing, empty, truncated/corrupt, non-checkpoint or unsafe
    (code-carrying) file. Returns whatever the safe unpickler produced.
    """
    import torch

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{model_name} weights not found: {p} does not exist. Check the path, "
                              f"or download the weights with `medsam-gui weights download`.")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a weights file; choose the .pth/.pt file inside it.")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"cannot read {model_name} weights {p}: {exc.strerror or exc}") from exc
    if size == 0:
        raise CheckpointError(f"{model_name} weights file {p} is empty (0 bytes); download it again.")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {model_name} weights {p}: {exc.strerror or exc}") from exc
    is_zip = magic.startswith(b"PK")
    is_pickle = magic[:1] == b"\x80"
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "GLOBAL" in msg or "global" in msg:
            raise CheckpointError(
                f"{p}: {CODE_REFUSED} (it asks to import Python objects/functions when loaded). "
                f"Only use weight files from a source you trust; the official {model_name} files "
                f"contain plain tensors."
            ) from None
        if is_pickle:
            raise CheckpointError(
                f"{p}: {CODE_REFUSED} — it is a plain Python pickle that the safe weights loader "
                f"cannot read. Save the weights with torch.save(model.state_dict(), path)."
            ) from None
        if is_zip:
            raise CheckpointError(
                f"{p} is corrupt: the PyTorch archive could not be read ({msg.splitlines()[-1][:120]}). "
                f"Download the file again."
            ) from None
        head = _describe_head(p)
        raise CheckpointError(
            f"{p} is not a PyTorch weights file (it starts with {head!r}); it may be an error page "
            f"saved instead of the download. Download the {model_name} weights again."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        if is_zip or is_pickle:
            raise CheckpointError(
                f"{p} is truncated or corrupt ({size} bytes; {first}). The download was probably "
                f"interrupted: download the {model_name} weights again."
            ) from None
        head = _describe_head(p)
        raise CheckpointError(
            f"{p} is not a PyTorch weights file (it starts with {head!r}); download the "
            f"{model_name} weights again."
        ) from None


def extract_state_dict(obj: Any, *, source: str = "the file", model_name: str = "model") -> dict:
    """The ``{name: tensor}`` state dict inside a loaded checkpoint object.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` and strips ``module.`` /
    ``_orig_mod.`` prefixes. Raises CheckpointError if no tensors are found.
    """
    import torch

    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} does not hold {model_name} weights: it contains a {type(obj).__name__}, "
            f"not a dictionary of tensors."
        )
    sd: Any = obj
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if isinstance(sd, Mapping) and sd and not any(isinstance(v, torch.Tensor) for v in sd.values()):
            inner = next((sd[k] for k in WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
            if inner is None:
                break
            sd = inner
        else:
            break
    if not isinstance(sd, Mapping) or len(sd) == 0:
        raise CheckpointError(
            f"{source} contains no weights (an empty dictionary); it is not a {model_name} checkpoint."
        )
    tensors = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(sorted(map(str, sd.keys()))[:_MAX_LISTED])
        raise CheckpointError(
            f"{source} contains no weight tensors (top-level keys: {keys}); it is not a "
            f"{model_name} checkpoint."
        )
    out: dict[str, Any] = {}
    for k, v in tensors.items():
        changed = True
        while changed:
            changed = False
            for pre in STRIP_PREFIXES:
                if k.startswith(pre):
                    k = k[len(pre):]
                    changed = True
        out[k] = v
    return out


def _listing(items, n: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


_SAM_ENCODERS = {768: "MedSAM / SAM ViT-B", 1024: "SAM ViT-L", 1280: "SAM ViT-H"}


def identify_weights(sd: Mapping[str, Any]) -> str | None:
    """The model a state dict (or a key -> shape mapping) belongs to, from its key layout:
    "MedSAM / SAM ViT-B", "SAM ViT-L", "SAM ViT-H", "LiteMedSAM", "MedSAM2 / SAM 2",
    "UniverSeg"; None when it is none of these."""
    if any(k.startswith(("image_encoder.trunk.", "memory_attention.")) for k in sd):
        return "MedSAM2 / SAM 2"
    if any(k.startswith("image_encoder.patch_embed.seq.") for k in sd):
        return "LiteMedSAM"
    pe = sd.get("image_encoder.patch_embed.proj.weight")
    shape = tuple(getattr(pe, "shape", pe) or ())
    if len(shape) == 4 and any(k.startswith("mask_decoder.") for k in sd):
        return _SAM_ENCODERS.get(int(shape[0]))
    if any(k.startswith("enc_blocks.") for k in sd):
        return "UniverSeg"
    return None


def check_state_dict(
    sd: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]] | None,
    *,
    model_name: str = "model",
    source: str = "the file",
    diagnose: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> None:
    """Strict comparison of ``sd`` with ``expected`` (key -> shape; a shape of None accepts
    any). Raises CheckpointError: for another known model's file (:func:`identify_weights`) one
    sentence naming that model; otherwise naming missing/unexpected keys and wrong shapes,
    prefixed by ``diagnose(sd)`` when it recognises another model."""
    if expected is None:
        return
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(shape)})"
        for k, shape in expected.items()
        if k in sd and shape is not None and tuple(sd[k].shape) != tuple(shape)
    ]
    if not (missing or unexpected or wrong):
        return
    found = identify_weights(sd)
    if found is not None and found != identify_weights(expected):
        # another model's file: say which, in words (its key names mean nothing to a user)
        name = Path(source).name if Path(source).suffix else ""
        raise CheckpointError(
            f"This file{f' ({name})' if name else ''} is a {found} checkpoint, not {model_name}. "
            f"Choose the official {model_name} weights file instead.")
    parts = []
    hint = diagnose(sd) if diagnose else None
    if hint:
        parts.append(hint)
    if wrong:
        parts.append(f"{len(wrong)} tensors have the wrong shape: {_listing(wrong)}")
    if missing:
        parts.append(f"{len(missing)} expected keys are missing: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} keys are not part of {model_name}: {_listing(unexpected)}")
    raise CheckpointError(
        f"{source} does not contain {model_name} weights: " + "; ".join(parts)
        + f". Choose the official {model_name} checkpoint."
    )


def load_state_dict_file(
    path: str | os.PathLike,
    expected_keys: Mapping[str, tuple[int, ...]] | None = None,
    model_name: str = "model",
    *,
    diagnose: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> dict:
    """Load, unwrap and validate a weights file; returns ``{name: tensor}`` on CPU.

    ``expected_keys`` maps every key of the target model's state dict to its shape (pass
    ``{k: tuple(v.shape) for k, v in model.state_dict().items()}``); when given, the file must
    match it exactly (strict). ``diagnose(sd)`` may return a sentence naming the model the
    weights seem to belong to. Raises CheckpointError.
    """
    obj = load_checkpoint_object(path, model_name=model_name)
    source = str(path)
    sd = extract_state_dict(obj, source=source, model_name=model_name)
    check_state_dict(sd, expected_keys, model_name=model_name, source=source, diagnose=diagnose)
    return sd


# ---------------------------------------------------------------- file identity (sha256)

_hash_lock = threading.Lock()
_hash_memo: dict[tuple[str, int, int], str] = {}


def _hash_store_path() -> Path:
    from .. import config

    return config.cache_dir() / "checkpoint_hashes.json"


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file, computed once per (resolved path, mtime, size) and remembered
    in memory and in the cache folder (so reopening the app does not rehash 375 MB)."""
    p = Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), int(st.st_mtime_ns), int(st.st_size))
    with _hash_lock:
        if memo_key in _hash_memo:
            return _hash_memo[memo_key]
    store_key = f"{memo_key[0]}|{memo_key[1]}|{memo_key[2]}"
    store: dict = {}
    try:
        store_path = _hash_store_path()
        with open(store_path, encoding="utf-8") as fh:
            loaded = json.load(fh)
        if isinstance(loaded, dict):
            store = loaded
    except (OSError, ValueError):
        store_path = None
    if isinstance(store.get(store_key), str):
        digest = store[store_key]
    else:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while True:
                block = fh.read(chunk)
                if not block:
                    break
                h.update(block)
        digest = h.hexdigest()
        try:
            store[store_key] = digest
            target = _hash_store_path()
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(store, fh)
            os.replace(tmp, target)
        except OSError:
            pass
    with _hash_lock:
        _hash_memo[memo_key] = digest
    return digest


_meta_shapes: dict[Callable[[], Any], dict[str, tuple[int, ...]]] = {}
_meta_lock = threading.Lock()


def meta_state_dict_shapes(build: Callable[[], Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict of the ``nn.Module`` that ``build()`` returns, built on the
    meta device (no memory, fast); computed once per ``build`` function, a fresh dict each call."""
    with _meta_lock:
        shapes = _meta_shapes.get(build)
        if shapes is None:
            import torch

            with torch.device("meta"):
                model = build()
            shapes = _meta_shapes[build] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return dict(shapes)
