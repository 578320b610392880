"""Reading YAML headers fast: libyaml's parser where PyYAML was built with it.

``yaml.safe_load`` parses in pure Python; a model's ``model.yaml`` (its config, reference
layout and training notes, a few hundred lines) then costs about 0.15 s per load, a tenth of a
scan's search. :func:`safe_load` gives the same Python objects (the same safe constructor and
resolver, only the scanner and parser are in C) and raises the same ``yaml.YAMLError``s.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["safe_load"]

_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``, with libyaml's parser when available."""
    return yaml.load(text, Loader=_LOADER)  # a safe loader, C or Python
