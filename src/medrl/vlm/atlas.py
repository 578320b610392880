"""Anatomy for the VLM tasks: the Harvard-Oxford cortical atlas by hemisphere, AFIDs names.

The atlas image (FSL MNI152, close to MNI152NLin6Asym) is not lateralised: one value per
structure for both hemispheres. medrl splits each structure by the sign of world x (RAS), so
``"left Insular Cortex"`` and ``"right Insular Cortex"`` are separate structures with region
ids ``label`` (right) and ``label + 100`` (left). Applying the atlas to MNI152NLin2009cAsym by
world coordinates is an approximation (the two templates differ by a few mm).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from medrl.errors import InputError

if TYPE_CHECKING:  # SimpleITK is needed only to render items, not to train on exported ones
    from medrl.io.images import Volume

LEFT_OFFSET = 100
SIDES = ("right", "left")


@cache
def cortical_label_names() -> dict[int, str]:
    """Atlas value -> structure name (48 cortical structures), from the embedded label list."""
    text = (
        resources.files("medrl.vlm")
        .joinpath("resources", "harvard_oxford_cortical_labels.tsv")
        .read_text(encoding="utf-8")
    )
    names: dict[int, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            value, name = line.split("\t", 1)
            names[int(value)] = name.strip()
    return names


@cache
def region_names() -> dict[int, str]:
    """Region id -> hemisphere-specific name, e.g. ``102 -> "left Insular Cortex"``."""
    out: dict[int, str] = {}
    for value, name in cortical_label_names().items():
        out[value] = f"right {name}"
        out[value + LEFT_OFFSET] = f"left {name}"
    return out


def region_id(structure: str) -> int:
    """Region id of a structure name (case-insensitive); InputError names close matches."""
    wanted = structure.strip().lower()
    for rid, name in region_names().items():
        if name.lower() == wanted:
            return rid
    words = set(re.findall(r"[a-z]+", wanted)) - {"left", "right"}
    close = [n for n in region_names().values() if words & set(re.findall(r"[a-z]+", n.lower()))]
    hint = f"; did you mean one of: {', '.join(close[:6])}" if close else ""
    raise InputError(
        f"unknown structure {structure!r}: Harvard-Oxford cortical names are 'left NAME' or "
        f"'right NAME'{hint}"
    )


def region_map(labels: np.ndarray, points_ras: np.ndarray) -> np.ndarray:
    """Region ids of atlas labels sampled at ``points_ras`` (same leading shape + (3,))."""
    labels = np.asarray(labels).astype(np.int64)
    left = (points_ras[..., 0] < 0) & (labels > 0)
    return np.where(left, labels + LEFT_OFFSET, labels)


_AFIDS_WORDS = {
    "AC": "anterior commissure",
    "PC": "posterior commissure",
    "PMJ": "pontomesencephalic junction",
    "LMS": "lateral mesencephalic sulcus",
    "MB": "mammillary body",
    "LV": "lateral ventricle",
    "CC": "corpus callosum",
    "AL": "anterolateral",
    "AM": "anteromedial",
    "R": "right",
    "L": "left",
}


def landmark_phrase(description: str) -> str:
    """AFIDs short description -> words: ``"R superior LMS"`` -> ``"right superior lateral
    mesencephalic sulcus"``."""
    return " ".join(_AFIDS_WORDS.get(word, word) for word in description.split())


@dataclass(frozen=True)
class Anatomy:
    """One template with the atlas and landmarks used on it."""

    template: str
    image: Volume
    atlas: Volume
    landmark_names: tuple[str, ...]
    landmarks_ras: np.ndarray
    intensity_scale: float


def load_anatomy(template: str, cache_dir: str | None = None) -> Anatomy:
    """Read a built-in template's T1w, the Harvard-Oxford atlas and the template's AFIDs.

    Raises:
        InputError: unknown template; DataUnavailableError: ``medrl data fetch afids`` not run.
    """
    from medrl.data import builtin

    files = {"MNI152NLin2009cAsym": builtin.MNI2009C_T1W, "MNI152NLin6Asym": builtin.MNI6_T1W}
    if template not in files:
        raise InputError(f"unknown template {template!r}; known: {', '.join(files)}")
    from medrl.io.images import read_image

    image = read_image(builtin.afids_file(files[template], cache_dir))
    atlas = read_image(builtin.afids_file(builtin.HARVARD_OXFORD_ATLAS, cache_dir))
    landmarks = builtin.afids_landmarks(template)
    names = tuple(landmark_phrase(d) for d in landmarks.descriptions) or landmarks.names
    positive = image.array[image.array > 0]
    scale = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    return Anatomy(template, image, atlas, names, np.asarray(landmarks.points_ras), scale)
