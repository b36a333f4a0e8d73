"""The automatic segmentation models the app knows, their catalogues and their loaders.

    catalogue("universal")                       -> every Structure the model segments
    find_structures("hermes", ["liver", 19, "Left kidney"])  -> [Structure, ...]
    load_auto_model("universal", "clip_driven_universal_swin_unetr.pth",
                    text_embedding="txt_encoding.pth")        -> AutoSegmenter

Each model is an :class:`AutoModelSpec` in a small registry: its catalogue and its loader are
imported only when called (``models.hermes`` / ``models.universal``), so listing the models
costs nothing. :func:`registered` puts another spec in place of one while a block runs (tests
use a stand-in segmenter this way; a plugin could add a model).

:func:`label_map` turns the masks into one label map (values 1..N in the order given; where
structures overlap, e.g. an organ and its tumour, the smaller structure wins).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, MedsamGuiError
from .auto_model import AutoSegmenter, Structure

AUTO_MODELS = ("hermes", "universal")
MODALITIES = ("CT", "MR", "PET")  # what Structure.modalities and the ``modality`` arguments name


@dataclass(frozen=True)
class AutoModelSpec:
    """One automatic model. ``weights``: the model manager's name of its checkpoint;
    ``text_embedding``: the model manager's name of the extra file it needs (or None);
    ``catalogue()`` -> its structures; ``load(checkpoint, text_embedding, device)`` -> the
    loaded :class:`~medsam_gui.models.auto_model.AutoSegmenter`."""

    name: str
    title: str
    weights: str
    text_embedding: str | None
    default_overlap: float
    catalogue: Callable[[], tuple[Structure, ...]]
    load: Callable[[Path, "Path | None", "str | None"], AutoSegmenter]


def _hermes_catalogue() -> tuple[Structure, ...]:
    from .hermes.catalogue import STRUCTURES

    return tuple(STRUCTURES)


def _hermes_load(checkpoint: Path, text_embedding: Path | None, device: str | None) -> AutoSegmenter:
    from .hermes.segmenter import HermesSegmenter

    return HermesSegmenter.from_checkpoint(checkpoint, device=device)


def _universal_catalogue() -> tuple[Structure, ...]:
    from .universal.catalogue import STRUCTURES

    return tuple(STRUCTURES)


def _universal_load(checkpoint: Path, text_embedding: Path | None, device: str | None) -> AutoSegmenter:
    from .universal.segmenter import UniversalSegmenter

    return UniversalSegmenter.from_checkpoint(checkpoint, text_embedding, device=device)


_SPECS: dict[str, AutoModelSpec] = {
    "hermes": AutoModelSpec("hermes", "Hermes-R (71 structures: CT, MR, PET)", "hermes_r", None, 0.5,
                            _hermes_catalogue, _hermes_load),
    "universal": AutoModelSpec("universal", "CLIP-Driven Universal Model (32 abdominal structures, CT)",
                               "universal_model", "universal_text_embedding", 0.5,
                               _universal_catalogue, _universal_load),
}


@contextlib.contextmanager
def registered(spec: AutoModelSpec) -> Iterator[AutoModelSpec]:
    """Use ``spec`` for ``spec.name`` inside the block (the previous spec comes back after)."""
    previous = _SPECS.get(spec.name)
    _SPECS[spec.name] = spec
    try:
        yield spec
    finally:
        if previous is None:
            del _SPECS[spec.name]
        else:
            _SPECS[spec.name] = previous


def model_spec(model: str) -> AutoModelSpec:
    """The spec of ``model`` ("hermes" | "universal"); MedsamGuiError for another name."""
    spec = _SPECS.get(str(model).strip().lower())
    if spec is None:
        raise MedsamGuiError(f"unknown automatic model {model!r}; choose one of {', '.join(_SPECS)}.")
    return spec


def catalogue(model: str) -> tuple[Structure, ...]:
    """Every structure ``model`` segments, in its official order."""
    return tuple(model_spec(model).catalogue())


def _norm(text: str) -> str:
    return "_".join(text.strip().lower().replace("-", " ").replace("_", " ").split())


def find_structures(model: str, names: Sequence[str | int]) -> list[Structure]:
    """The structures of ``model`` named by ``names``: catalogue keys, titles (any case, spaces
    or underscores) or official indices (ints or digit strings), in the order given, each once.
    Raises one MedsamGuiError naming every unknown name with its closest matches."""
    spec = model_spec(model)
    return select_structures(catalogue(spec.name), names, spec.name)


def select_structures(structures: Sequence[Structure], names: Sequence[str | int], model: str) -> list[Structure]:
    """:func:`find_structures` in the catalogue ``structures`` (e.g. a loaded segmenter's)."""
    by_name: dict[str, Structure] = {}
    for s in structures:
        by_name.setdefault(_norm(s.title), s)
    for s in structures:
        by_name[s.key] = s
    by_index = {s.index: s for s in structures}
    found: list[Structure] = []
    unknown: list[str] = []
    for name in names:
        text = str(name).strip()
        hit = by_index.get(int(text)) if text.lstrip("-").isdigit() else by_name.get(_norm(text))
        if hit is None:
            close = difflib.get_close_matches(_norm(text), list(by_name), n=3, cutoff=0.6)
            unknown.append(f"{text!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        elif hit not in found:
            found.append(hit)
    if unknown:
        raise MedsamGuiError(
            f"{model} does not know {len(unknown)} of the structures asked for: {'; '.join(unknown)}. "
            f"List them with `medsam-gui auto --model {model} --list-structures`.")
    if not found:
        raise MedsamGuiError(f"name at least one {model} structure (e.g. {structures[0].key}).")
    return found


def installed_weights(model: str, checkpoint=None, text_embedding=None) -> tuple[Path, Path | None]:
    """(checkpoint, text embedding or None) for ``model``: the files given (they must exist),
    else the model manager's installed files; CheckpointError says how to get them."""
    from . import weights as manager

    spec = model_spec(model)
    if text_embedding is not None and spec.text_embedding is None:
        raise MedsamGuiError(f"{spec.name} takes no text embedding; leave it out.")
    files = []
    for name, given in ((spec.weights, checkpoint), (spec.text_embedding, text_embedding)):
        if name is None:
            files.append(None)
            continue
        known = manager.get_model(name)
        if given is not None:
            path = Path(given).expanduser()
            if not path.is_file():
                raise CheckpointError(f"{known.title} file not found: {path} does not exist.")
        else:
            path = manager.resolve(name, verify=True)
            if path is None:
                raise CheckpointError(
                    f"no {known.title} file ({known.filename}) installed: pass the file, or install it once "
                    f"with `medsam-gui weights download {name}` (or `medsam-gui weights import {name} FILE`).")
        files.append(path)
    return files[0], files[1]


def load_auto_model(model: str, checkpoint, *, text_embedding=None, device: str | None = None) -> AutoSegmenter:
    """Load ``model`` from ``checkpoint`` (a file in the official layout); the Universal Model
    also needs its text embedding (default: the installed ``txt_encoding.pth``)."""
    spec = model_spec(model)
    ckpt, text = installed_weights(spec.name, checkpoint, text_embedding)
    return spec.load(ckpt, text, device)


def modality_mismatches(structures: Sequence[Structure], modality: str | None) -> list[Structure]:
    """The structures not made for ``modality`` (none when the modality is unknown)."""
    if modality not in MODALITIES:
        return []
    return [s for s in structures if modality not in s.modalities]


def label_map(masks: Sequence[np.ndarray]) -> np.ndarray:
    """One label map from masks of one shape: mask i is value i + 1 (uint8, uint16 beyond
    255). Where masks overlap the smaller one wins (an organ's tumour stays visible)."""
    if not masks:
        raise MedsamGuiError("no structure to write.")
    shape = np.shape(masks[0])
    out = np.zeros(shape, dtype=np.uint8 if len(masks) <= 255 else np.uint16)
    sizes = [int(np.count_nonzero(m)) for m in masks]
    for i in sorted(range(len(masks)), key=lambda j: (-sizes[j], j)):
        out[np.asarray(masks[i], dtype=bool)] = i + 1
    return out
