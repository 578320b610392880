"""Built-in test data of other anatomies: the SPM12 brain averages with their AFIDs.

``avg152T1/T2/PD.nii`` (the ICBM152 *linear* average, "MNI152Lin", in three contrasts) and
``avg305T1.nii`` (the MNI305 average), 2 mm, from the SPM12 repository (github.com/spm/spm12,
commit :data:`SPM12_COMMIT`, folder ``canonical/``; GNU GPL v2; credit SPM12, Wellcome Centre
for Human Neuroimaging, and the MNI/ICBM for the averages). They are different averages from
the two MNI templates medrl trains on, further away anatomically (no affine map brings MNI305's
AFIDs within about 2.5 mm of MNI152NLin2009cAsym's), which makes them the held-out test
brains of the plane and landmark benchmarks. Their AFIDs are embedded
(``medrl/data/resources/afids/``, the AFIDs project, GPL-3.0).

:func:`fetch_spm12` takes the four files from a local folder (``folder=`` or
``$MEDRL_SPM12_DIR``) or downloads them from their pinned upstream location, checks each
file's sha256 and keeps them in ``<cache_root()>/spm12/v1/``; once cached nothing is downloaded
again. ``builtin:spm12`` is the datalist of the four cases (all ``split: test``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from pathlib import Path

from medrl.data.builtin import afids_landmarks_path, cache_root
from medrl.data.datalist import CaseSpec
from medrl.errors import DataUnavailableError, InputError
from medrl.utils.atomic import atomic_path

__all__ = ["SPM12_CASES", "SPM12_COMMIT", "SPM12_FILES", "fetch_spm12", "spm12_datalist"]

SPM12_COMMIT = "03ac9473cad402407b6472228377c0167fdc54b8"
SPM12_URL = f"https://raw.githubusercontent.com/spm/spm12/{SPM12_COMMIT}/canonical/{{name}}"
SPM12_FILES: dict[str, str] = {
    "avg152T1.nii": "213557a43d4387243c51bf208b3a672ae2eb68091f7ffe47c28a9f69d9e3d9fd",
    "avg152T2.nii": "6466e5f99fbfd73ee0da5a34bf6c6ade22eea4399bcb9bb002ab5831d925e877",
    "avg152PD.nii": "8450df557b6694dc9bb0d7b18ffe4b8df2182a1a9a9d3e0a4b76f58192e69f46",
    "avg305T1.nii": "2eebd107022ca64c2d3928aa1d7904c22651a2cc27c0d98da0eeba535c4340b9",
}
#: case id -> (file, AFIDs template)
SPM12_CASES: dict[str, tuple[str, str]] = {
    "MNI152Lin_T1w": ("avg152T1.nii", "MNI152Lin"),
    "MNI152Lin_T2w": ("avg152T2.nii", "MNI152Lin"),
    "MNI152Lin_PD": ("avg152PD.nii", "MNI152Lin"),
    "MNI305_T1w": ("avg305T1.nii", "MNI305"),
}
CACHE_SUBDIR = Path("spm12") / "v1"
LOCAL_ENV = "MEDRL_SPM12_DIR"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(cache: Path) -> bool:
    return all((cache / name).is_file() for name in SPM12_FILES)


def fetch_spm12(folder: str | Path | None = None, cache: str | Path | None = None) -> Path:
    """The cached folder of the four SPM12 averages, filling it first if needed.

    Sources, in order: ``folder``, ``$MEDRL_SPM12_DIR``, the pinned upstream URL. Every file is
    sha256-checked before it enters the cache (written atomically, so an interrupted fetch
    leaves no partial file). Raises DataUnavailableError naming the file when a source lacks a
    file, it cannot be downloaded, or its checksum differs.
    """
    target = (cache_root() if cache is None else Path(cache)) / CACHE_SUBDIR
    if _cached(target):
        return target
    local = folder or os.environ.get(LOCAL_ENV)
    for name, expected in SPM12_FILES.items():
        destination = target / name
        if destination.is_file():
            continue
        with atomic_path(destination) as tmp:
            if local:
                source = Path(local) / name
                if not source.is_file():
                    raise DataUnavailableError(f"the SPM12 folder {local} has no {name}", source)
                shutil.copyfile(source, tmp)
                where = str(source)
            else:
                where = SPM12_URL.format(name=name)
                try:
                    with (
                        urllib.request.urlopen(where, timeout=60) as response,
                        open(tmp, "wb") as handle,
                    ):
                        shutil.copyfileobj(response, handle)
                except OSError as exc:
                    raise DataUnavailableError(
                        f"cannot download {name} from {where} ({exc}); put the SPM12 "
                        f"'canonical' files in a folder and set {LOCAL_ENV}",
                        where,
                    ) from exc
            digest = _sha256(Path(tmp))
            if digest != expected:
                raise DataUnavailableError(
                    f"{name} from {where} has sha256 {digest}, expected {expected}", where
                )
    return target


def spm12_datalist(cache: str | Path | None = None) -> list[CaseSpec]:
    """The four SPM12 cases (``split: test``) with their embedded AFIDs; fetches if needed."""
    folder = fetch_spm12(cache=cache)
    specs = []
    for case_id, (name, template) in SPM12_CASES.items():
        specs.append(
            CaseSpec(
                case_id=case_id,
                image=folder / name,
                landmarks=afids_landmarks_path(template),
                split="test",
            )
        )
    if not specs:
        raise InputError("no SPM12 cases")
    return specs
