"""Where cases come from: a datalist file, or ``builtin:afids`` for the built-in templates.

What a task learns from the cases (landmarks, boxes of label maps) is read by the task:
:meth:`medrl.tasks.base.Task.target_table`.
"""

from __future__ import annotations

from medrl.data.datalist import Case, CaseSpec, load_case, read_datalist
from medrl.errors import InputError

BUILTIN_PREFIX = "builtin:"


def resolve_datalist(source: str) -> list[CaseSpec]:
    """Case specs of a datalist file or a built-in data set (``builtin:afids``,
    ``builtin:spm12``, ``builtin:afids4`` or ``builtin:afids4/TEMPLATE``: four brains,
    one left out for testing)."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        if name == "spm12":
            from medrl.data.spm12 import spm12_datalist

            return spm12_datalist()
        if name == "afids4" or name.startswith("afids4/"):
            from medrl.data.afids4 import afids4_datalist

            return afids4_datalist(name.partition("/")[2] or None)
        if name != "afids":
            raise InputError(
                f"unknown built-in data set {name!r} (known: afids, afids4, afids4/TEMPLATE, "
                "spm12)",
                source,
            )
        from medrl.data.builtin import afids_datalist

        return afids_datalist()
    return read_datalist(source)


def load_split(source: str, split: str) -> list[Case]:
    """Load every case of one split; an error if the split is empty."""
    specs = [spec for spec in resolve_datalist(source) if spec.split == split]
    if not specs:
        raise InputError(f"the datalist has no cases with split {split!r}", source)
    return [load_case(spec) for spec in specs]
