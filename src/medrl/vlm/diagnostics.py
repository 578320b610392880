"""Per-step grounding diagnostics for GRPO, logged through TRL's reward-function ``log_metric``.

:func:`make_grounding_diagnostics` builds a reward function of weight 0 (it returns 0.0 for
every completion, so it never changes an advantage) that scores the batch's grounding
completions and logs, per GRPO step (TRL averages the values over the logging interval):

* ``diag/parse_rate``: share of grounding completions with a usable box;
* ``diag/mean_iou``, ``diag/hit_share`` (IoU > 0.5), ``diag/iou_zero_share``;
* ``diag/median_log_area_ratio`` (log of predicted / true box area, parsed boxes) and
  ``diag/tiny_box_share`` (parsed boxes under a quarter of the true area);
* ``diag/centre_error_px`` (median distance of box centres, original pixels);
* per group of ``G`` completions of one prompt (grounding groups only):
  ``diag/group_reward_std`` (mean s.d. of the weighted reward sum), ``diag/zero_variance_groups``
  (share with s.d. < :data:`ZERO_STD`: GRPO learns nothing from them),
  ``diag/distinct_boxes`` (mean number of different parsed boxes) and
  ``diag/groups_with_hit`` (share with at least one IoU > 0.5).

TRL itself logs entropy, KL (beta > 0), clip ratios, completion lengths and the share of
completions cut by the length limit (``completions/clipped_ratio``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medrl.vlm.boxes import box_area, box_centre, box_iou
from medrl.vlm.evaluate import ACC_IOU as HIT_IOU
from medrl.vlm.evaluate import TINY_AREA_RATIO

ZERO_STD = 1e-3
"""A group whose reward s.d. is below this carries no usable signal (TRL only counts exact 0)."""
NAME = "grounding_diagnostics"


def _group_keys(columns: dict[str, Any], n: int, group_size: int) -> list[Any]:
    """The prompt each completion answers: its ``item_id``, else its position // G."""
    ids = columns.get("item_id")
    if ids is not None and len(ids) == n:
        return list(ids)
    return [i // max(1, group_size) for i in range(n)]


def grounding_statistics(
    pred_px: Sequence[np.ndarray | None],
    true_px: Sequence[Sequence[float]],
    totals: Sequence[float],
    groups: Sequence[Any],
) -> dict[str, float]:
    """The diagnostics of grounding completions (every argument: one entry per completion).

    ``pred_px`` holds the parsed boxes (None: unusable), ``true_px`` the true boxes, ``totals``
    the weighted reward sums GRPO normalises, ``groups`` the prompt key of each completion.
    """
    n = len(pred_px)
    if n == 0:
        return {}
    ious = np.array(
        [0.0 if p is None else box_iou(p, t) for p, t in zip(pred_px, true_px, strict=True)]
    )
    parsed = [(p, t) for p, t in zip(pred_px, true_px, strict=True) if p is not None]
    stats: dict[str, float] = {
        "parse_rate": len(parsed) / n,
        "mean_iou": float(ious.mean()),
        "hit_share": float((ious > HIT_IOU).mean()),
        "iou_zero_share": float((ious <= 0.0).mean()),
    }
    if parsed:
        ratios = np.array([box_area(p) / max(box_area(t), 1e-9) for p, t in parsed])
        errors = [float(np.linalg.norm(box_centre(p) - box_centre(t))) for p, t in parsed]
        stats["median_log_area_ratio"] = float(np.median(np.log(np.maximum(ratios, 1e-9))))
        stats["tiny_box_share"] = float((ratios < TINY_AREA_RATIO).mean())
        stats["centre_error_px"] = float(np.median(errors))
    members: dict[Any, list[int]] = defaultdict(list)
    for index, key in enumerate(groups):
        members[key].append(index)
    stds, distinct, hits = [], [], []
    for rows in members.values():
        stds.append(float(np.std([totals[i] for i in rows])))
        boxes = {tuple(np.round(pred_px[i], 1)) for i in rows if pred_px[i] is not None}
        distinct.append(len(boxes))
        hits.append(bool((ious[rows] > HIT_IOU).any()))
    stats["group_reward_std"] = float(np.mean(stds))
    stats["zero_variance_groups"] = float(np.mean([s < ZERO_STD for s in stds]))
    stats["distinct_boxes"] = float(np.mean(distinct))
    stats["groups_with_hit"] = float(np.mean(hits))
    return stats


def make_grounding_diagnostics(
    reward_funcs: dict[str, Callable[..., list[float | None]]],
    reward_weights: dict[str, float],
    group_size: int,
) -> Callable[..., list[float]]:
    """A weight-0 TRL reward function that logs :func:`grounding_statistics` each step.

    ``reward_funcs``/``reward_weights``: the rewards GRPO trains with, recomputed here to get
    each completion's weighted sum (None counts as 0, as in TRL's sum).
    """
    from medrl.vlm.boxes import BoxFrame
    from medrl.vlm.rewards import predicted_box_px

    weighted = {name: float(w) for name, w in reward_weights.items() if float(w) != 0.0}

    def grounding_diagnostics(
        prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float]:
        n = len(completions)
        log_metric = columns.get("log_metric")
        boxes = list(columns.get("box_px") or [None] * n)
        rows = [i for i in range(n) if boxes[i] is not None and len(boxes[i]) == 4]
        if log_metric is None or not rows:
            return [0.0] * n
        totals = np.zeros(n)
        clean = {k: v for k, v in columns.items() if k not in ("log_metric", "log_extra")}
        for name, weight in weighted.items():
            values = reward_funcs[name](prompts, completions, **clean)
            totals += weight * np.array([0.0 if v is None else float(v) for v in values])
        preds: list[np.ndarray | None] = []
        for i in rows:
            try:
                frame = BoxFrame(
                    str(columns["box_format"][i]),
                    tuple(columns["image_size"][i]),
                    tuple(columns["model_size"][i]),
                )
            except (KeyError, TypeError, ValueError):
                preds.append(None)
                continue
            preds.append(predicted_box_px(completions[i], frame))
        keys = _group_keys(columns, n, group_size)
        stats = grounding_statistics(
            preds, [boxes[i] for i in rows], totals[rows].tolist(), [keys[i] for i in rows]
        )
        for name, value in stats.items():
            if math.isfinite(value):
                log_metric(f"diag/{name}", value)
        return [0.0] * n

    grounding_diagnostics.__name__ = NAME
    return grounding_diagnostics
