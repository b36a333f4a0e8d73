"""The label table: which integer values a label map uses, with names and colours.

A label map is an integer array (z, y, x) where 0 is background and each other value is one
structure. The table holds one :class:`LabelInfo` per structure (value >= 1; background is
never in the table). Colours are RGBA floats in 0..1 (napari's convention); the ITK-SNAP
label description format stores them as 0..255 integers plus an alpha float, and
:mod:`medsam_gui.io.label_files` converts.

Iteration is always in increasing label value. Numpy only; no Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Sequence

from ..errors import MedsamGuiError

MAX_LABEL_VALUE = 65535  # label maps are written as uint8 or uint16

Color = tuple[float, float, float, float]

# A colour cycle of well separated, saturated-but-not-garish colours (RGB 0..255). Label value v
# gets DEFAULT_COLORS_255[(v - 1) % len(DEFAULT_COLORS_255)].
DEFAULT_COLORS_255: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),    # red
    (60, 180, 75),    # green
    (0, 130, 200),    # blue
    (255, 225, 25),   # yellow
    (245, 130, 48),   # orange
    (145, 30, 180),   # purple
    (70, 240, 240),   # cyan
    (240, 50, 230),   # magenta
    (210, 245, 60),   # lime
    (250, 190, 212),  # pink
    (0, 128, 128),    # teal
    (170, 110, 40),   # brown
    (128, 0, 0),      # maroon
    (170, 255, 195),  # mint
    (128, 128, 0),    # olive
    (0, 0, 128),      # navy
)


class LabelTableError(MedsamGuiError, ValueError):
    """A label table operation was refused (duplicate value, unknown value, bad colour)."""


def default_color(value: int) -> Color:
    """The default RGBA colour (floats 0..1, alpha 1) of label ``value`` (>= 1)."""
    r, g, b = DEFAULT_COLORS_255[(int(value) - 1) % len(DEFAULT_COLORS_255)]
    return (r / 255.0, g / 255.0, b / 255.0, 1.0)


def _check_value(value: Any) -> int:
    try:
        iv = int(value)
    except (TypeError, ValueError):
        raise LabelTableError(f"Label value must be an integer, got {value!r}.") from None
    if iv != value or not 1 <= iv <= MAX_LABEL_VALUE:
        raise LabelTableError(
            f"Label value must be a whole number from 1 to {MAX_LABEL_VALUE} (0 is background), got {value!r}."
        )
    return iv


def normalize_color(color: Sequence[float]) -> Color:
    """RGB or RGBA floats in 0..1 -> RGBA tuple of floats (alpha defaults to 1)."""
    try:
        vals = [float(c) for c in color]
    except (TypeError, ValueError):
        raise LabelTableError(f"A colour is 3 or 4 numbers from 0 to 1, got {color!r}.") from None
    if len(vals) == 3:
        vals.append(1.0)
    if len(vals) != 4 or any(not (0.0 <= c <= 1.0) for c in vals):
        raise LabelTableError(f"A colour is 3 or 4 numbers from 0 to 1 (r, g, b[, a]), got {color!r}.")
    return (vals[0], vals[1], vals[2], vals[3])


@dataclass
class LabelInfo:
    """One structure of a label map.

    ``value``: the integer in the label map (1..65535); ``name``: shown to the user;
    ``color``: (r, g, b, a) floats in 0..1; ``visible``: drawn in the viewer;
    ``mesh_visible``: ITK-SNAP's "MSH" flag (kept so label description files round-trip).
    """

    value: int
    name: str
    color: Color = (1.0, 0.0, 0.0, 1.0)
    visible: bool = True
    mesh_visible: bool = True

    def __post_init__(self) -> None:
        self.value = _check_value(self.value)
        self.name = _clean_name(self.name)
        self.color = normalize_color(self.color)
        self.visible = bool(self.visible)
        self.mesh_visible = bool(self.mesh_visible)

    @property
    def color_255(self) -> tuple[int, int, int]:
        """RGB as 0..255 integers (rounded)."""
        return tuple(int(round(c * 255.0)) for c in self.color[:3])  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "name": self.name,
            "color": list(self.color),
            "visible": self.visible,
            "mesh_visible": self.mesh_visible,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabelInfo":
        try:
            return cls(
                value=data["value"],
                name=data.get("name", f"label {data['value']}"),
                color=tuple(data.get("color", default_color(data["value"]))),
                visible=data.get("visible", True),
                mesh_visible=data.get("mesh_visible", True),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise LabelTableError(f"Not a valid label entry: {data!r} ({exc}).") from None


def _clean_name(name: Any) -> str:
    text = " ".join(str(name).split())  # one line, no tabs/newlines (label files are line based)
    return text


class LabelTable:
    """Labels by value, iterated in increasing value. Background (0) is never in the table."""

    def __init__(self, labels: Iterable[LabelInfo] = ()) -> None:
        self._labels: dict[int, LabelInfo] = {}
        for info in labels:
            self.add(info)

    # --- container protocol -------------------------------------------------------------
    def __iter__(self) -> Iterator[LabelInfo]:
        return iter([self._labels[v] for v in sorted(self._labels)])

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, value: object) -> bool:
        return value in self._labels

    def __getitem__(self, value: int) -> LabelInfo:
        try:
            return self._labels[int(value)]
        except (KeyError, TypeError, ValueError):
            raise KeyError(value) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelTable) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"LabelTable({list(self)!r})"

    def values(self) -> list[int]:
        """Label values in increasing order."""
        return sorted(self._labels)

    def get(self, value: int, default: LabelInfo | None = None) -> LabelInfo | None:
        """The label with this value, or ``default`` when there is none."""
        try:
            return self._labels.get(int(value), default)
        except (TypeError, ValueError):
            return default

    def copy(self) -> "LabelTable":
        return LabelTable(replace(info) for info in self)

    # --- editing --------------------------------------------------------------------------
    def next_free_value(self) -> int:
        """The smallest value >= 1 not yet used."""
        v = 1
        while v in self._labels:
            v += 1
        if v > MAX_LABEL_VALUE:
            raise LabelTableError(f"All label values 1..{MAX_LABEL_VALUE} are used.")
        return v

    def add(self, label: LabelInfo | int | None = None, name: str | None = None,
            color: Sequence[float] | None = None, *, visible: bool = True) -> LabelInfo:
        """Add a label and return it.

        ``add(LabelInfo(...))`` adds that entry; ``add()`` / ``add(value, name, color)`` make one,
        with the next free value, the name ``"label <value>"`` and the default colour of that value
        when not given. A value already in the table raises :class:`LabelTableError`.
        """
        if isinstance(label, LabelInfo):
            info = replace(label)
        else:
            value = self.next_free_value() if label is None else _check_value(label)
            info = LabelInfo(
                value=value,
                name=f"label {value}" if name is None else name,
                color=default_color(value) if color is None else tuple(color),
                visible=visible,
            )
        if info.value in self._labels:
            raise LabelTableError(
                f"Label value {info.value} is already used by {self._labels[info.value].name!r}; "
                f"pick another value (next free: {self.next_free_value()})."
            )
        self._labels[info.value] = info
        return info

    def _require(self, value: int) -> LabelInfo:
        info = self.get(value)
        if info is None:
            raise LabelTableError(f"There is no label with value {value!r}.")
        return info

    def rename(self, value: int, name: str) -> LabelInfo:
        info = self._require(value)
        info.name = _clean_name(name)
        return info

    def recolour(self, value: int, color: Sequence[float]) -> LabelInfo:
        """Set the (r, g, b[, a]) colour (floats 0..1) of a label."""
        info = self._require(value)
        info.color = normalize_color(color)
        return info

    recolor = recolour

    def set_visible(self, value: int, visible: bool) -> LabelInfo:
        info = self._require(value)
        info.visible = bool(visible)
        return info

    def remove(self, value: int) -> LabelInfo:
        """Remove a label from the table and return it (the label map is not changed)."""
        info = self._require(value)
        del self._labels[info.value]
        return info

    def color_of(self, value: int) -> Color:
        """The colour of a label; the default colour for values not in the table."""
        info = self.get(value)
        return info.color if info is not None else default_color(value)

    # --- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"labels": [{"value", "name", "color" [r,g,b,a], "visible", "mesh_visible"}, ...]}``."""
        return {"labels": [info.to_dict() for info in self]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabelTable":
        if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
            raise LabelTableError("Not a label table: expected {'labels': [...]}.")
        return cls(LabelInfo.from_dict(d) for d in data["labels"])


def default_table(n: int = 1) -> LabelTable:
    """A new table with labels 1..n named "label 1", "label 2", ... in the default colours."""
    table = LabelTable()
    for v in range(1, int(n) + 1):
        table.add(v)
    return table
