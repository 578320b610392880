"""The blind baseline of grounding: the training items' mean box for the phrase and the plane.

Brain structures sit at nearly the same place in every slice of a template, so a model that
never looks at the image can still score: it answers the mean training box of the named
structure in the named plane (else of the structure, else of every item). A grounding model
is only looking at the image where it beats this.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from medrl.vlm.boxes import box_iou
from medrl.vlm.evaluate import ACC_IOU


class MeanBoxPrior:
    """Mean true box (original pixels) per (structure, plane), per structure, and overall."""

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        by_pair: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
        by_name: dict[str, list[list[float]]] = defaultdict(list)
        every: list[list[float]] = []
        for row in rows:
            box = row.get("box_px")
            if not box or len(box) != 4:
                continue
            by_pair[(row["structure"], row["plane"])].append(list(box))
            by_name[row["structure"]].append(list(box))
            every.append(list(box))
        if not every:
            raise ValueError("no grounding rows to build a prior from")
        self._pair = {k: np.mean(v, axis=0) for k, v in by_pair.items()}
        self._name = {k: np.mean(v, axis=0) for k, v in by_name.items()}
        self._all = np.mean(every, axis=0)

    def box(self, structure: str, plane: str) -> np.ndarray:
        if (structure, plane) in self._pair:
            return self._pair[(structure, plane)]
        return self._name.get(structure, self._all)


def prior_scores(train: Iterable[dict[str, Any]], test: Iterable[dict[str, Any]]) -> dict:
    """Mean IoU, Acc@0.5 and per-item IoUs of :class:`MeanBoxPrior` on the grounding rows."""
    prior = MeanBoxPrior(train)
    items: dict[str, float] = {}
    for row in test:
        box = row.get("box_px")
        if box and len(box) == 4:
            items[row["item_id"]] = box_iou(prior.box(row["structure"], row["plane"]), box)
    ious = np.array(list(items.values()))
    return {
        "n": len(items),
        "mean_iou": float(ious.mean()) if len(ious) else None,
        "acc_at_0.5": float((ious > ACC_IOU).mean()) if len(ious) else None,
        "items": items,
    }
