"""Where cases come from: a datalist file, or ``builtin:afids`` for the built-in templates."""

from __future__ import annotations

import numpy as np

from medrl.data.datalist import Case, CaseSpec, load_case, read_datalist
from medrl.errors import InputError

BUILTIN_PREFIX = "builtin:"


def resolve_datalist(source: str) -> list[CaseSpec]:
    """Case specs of a datalist file or a built-in data set name (``builtin:afids``)."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        if name != "afids":
            raise InputError(f"unknown built-in data set {name!r} (known: afids)", source)
        from medrl.data.builtin import afids_datalist

        return afids_datalist()
    return read_datalist(source)


def load_split(source: str, split: str) -> list[Case]:
    """Load every case of one split; an error if the split is empty."""
    specs = [spec for spec in resolve_datalist(source) if spec.split == split]
    if not specs:
        raise InputError(f"the datalist has no cases with split {split!r}", source)
    return [load_case(spec) for spec in specs]


def landmark_table(
    cases: list[Case], names: tuple[str, ...] = ()
) -> tuple[tuple[str, ...], tuple[str, ...], list[np.ndarray]]:
    """Names, descriptions, and per-case targets (L, 3) RAS with NaN where a case lacks one."""
    labelled = [case for case in cases if case.landmarks is not None]
    if not labelled:
        raise InputError("no case has landmarks to learn from")
    first = labelled[0].landmarks
    assert first is not None
    names = names or first.names
    unknown = [n for n in names if not any(n in c.landmarks.names for c in labelled)]
    if unknown:
        raise InputError(f"landmark(s) {', '.join(unknown)} appear in no training case")
    descriptions = []
    for name in names:
        desc = ""
        for case in labelled:
            if name in case.landmarks.names and case.landmarks.descriptions:
                desc = case.landmarks.descriptions[case.landmarks.names.index(name)]
                break
        descriptions.append(desc)
    targets = []
    for case in cases:
        table = np.full((len(names), 3), np.nan)
        if case.landmarks is not None:
            for row, name in enumerate(names):
                if name in case.landmarks.names:
                    table[row] = case.landmarks.points_ras[case.landmarks.names.index(name)]
        targets.append(table)
    return tuple(names), tuple(descriptions), targets
