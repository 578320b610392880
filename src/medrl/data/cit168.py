"""The CIT168 atlas of 32 subcortical nuclei, embedded in medrl (label map and names).

The atlas is the work of Pauli WM, Nili AN, Tyszka JM (2018), "A high-resolution probabilistic
in vivo atlas of human subcortical brain nuclei", Scientific Data 5:180063 (CC BY 4.0), as
converted by the niivue-demo-images project (commit f6f98294c1fa89a3a32e8a44eab92368374150a0).
medrl embeds a plain maximum-probability label map (structures of probability >= 25 %) on the
MNI152NLin2009cAsym world, 1 mm grid cropped to the nuclei, and the 32 structure names; see
``medrl/data/resources/cit168/ATTRIBUTION.md``. Credit the authors wherever the atlas, or boxes
derived from it, are used or redistributed.

Label values 1..32 alternate left and right: 1 = ``"L Putamen"``, 2 = ``"R Putamen"``, ...,
32 = ``"R Subthalamic Nucleus"`` (:data:`CIT168_NAMES` in label order).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from medrl.errors import InputError
from medrl.io.images import Volume, read_image
from medrl.utils.atomic import atomic_open

__all__ = [
    "CIT168_LABEL_MAP_FILE",
    "CIT168_NAMES",
    "CIT168_NAMES_FILE",
    "cit168_label_map",
    "cit168_label_map_path",
    "cit168_names",
    "cit168_names_path",
    "is_cit168_label_map",
]

CIT168_LABEL_MAP_FILE = "CIT168_maxprob-thr25_1mm.nii.gz"
CIT168_NAMES_FILE = "CIT168_names.json"
_SHA256 = {
    CIT168_LABEL_MAP_FILE: "fe50cf53ee753b9c7065f98bafa6b3d777396569ff1ef654c94cd4e5db7c4ccd",
    CIT168_NAMES_FILE: "366959216c303218202d82b53debe488aa0bdd55e4f190c891d56bf6b41f8db7",
}
_RESOURCE_PACKAGE = "medrl.data"
_RESOURCE_FOLDER = ("resources", "cit168")

#: The 32 structure names in label order (label value = position + 1).
CIT168_NAMES: tuple[str, ...] = tuple(
    f"{side} {structure}"
    for structure in (
        "Putamen",
        "Caudate",
        "Nucleus Accumbens",
        "Extended Amygdala",
        "Globus Pallidus externa",
        "Globus Pallidus interna",
        "Substantia Nigra pars compacta",
        "Red Nucleus",
        "Substantia-Nigra-pars-reticulata",
        "Parabrachial Pigmented",
        "Ventral Tegmental Area",
        "Ventral Pallidum",
        "Habenular Nucleus",
        "Hypothalamus",
        "Mammillary Nucleus",
        "Subthalamic Nucleus",
    )
    for side in ("L", "R")
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _resource_path(filename: str) -> Path:
    """A filesystem path to an embedded file (copied to the cache if the package is zipped)."""
    resource = resources.files(_RESOURCE_PACKAGE).joinpath(*_RESOURCE_FOLDER, filename)
    if isinstance(resource, Path):
        return resource
    from medrl.data.builtin import cache_root  # lazy: builtin imports the datalist module

    copy = cache_root() / "cit168" / filename
    data = resource.read_bytes()
    if not copy.is_file() or copy.read_bytes() != data:
        with atomic_open(copy, "wb") as handle:
            handle.write(data)
    return copy


def _checked_bytes(filename: str) -> tuple[Path, bytes]:
    """The path and content of an embedded file; InputError if its sha256 is not the pinned one."""
    path = _resource_path(filename)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the embedded CIT168 file: {exc.strerror}", path) from None
    actual = _sha256(data)
    if actual != _SHA256[filename]:
        raise InputError(
            f"the embedded CIT168 file is corrupt or was modified: sha256 {actual}, expected "
            f"{_SHA256[filename]}; reinstall medrl",
            path,
        )
    return path, data


def cit168_label_map_path() -> Path:
    """Filesystem path of the embedded label map (unchecked; :func:`cit168_label_map` checks)."""
    return _resource_path(CIT168_LABEL_MAP_FILE)


def cit168_names_path() -> Path:
    """Filesystem path of the embedded names file (JSON ``{"1": "L Putamen", ...}``)."""
    return _resource_path(CIT168_NAMES_FILE)


def cit168_label_map() -> Volume:
    """The embedded CIT168 label map (values 0..32, MNI152NLin2009cAsym world, 1 mm grid).

    Raises:
        InputError: the embedded file's sha256 is not the pinned one.
    """
    path, _ = _checked_bytes(CIT168_LABEL_MAP_FILE)
    return read_image(path)


def cit168_names() -> dict[int, str]:
    """Label value -> structure name, ``{1: "L Putamen", ..., 32: "R Subthalamic Nucleus"}``.

    Raises:
        InputError: the embedded names file's sha256 is not the pinned one.
    """
    _, data = _checked_bytes(CIT168_NAMES_FILE)
    return {int(value): str(name) for value, name in json.loads(data.decode("utf-8")).items()}


def is_cit168_label_map(path: str | Path) -> bool:
    """Whether ``path`` holds exactly the embedded CIT168 label map (same bytes, by sha256)."""
    try:
        if Path(path).stat().st_size != cit168_label_map_path().stat().st_size:
            return False  # cheap test first: a user's label map may be large
        data = Path(path).read_bytes()
    except OSError:
        return False
    return _sha256(data) == _SHA256[CIT168_LABEL_MAP_FILE]
