"""Reward functions with TRL's signature ``f(prompts, completions, **columns) -> list``.

Each returns one value per completion: a float in [0, 1], or None for rows the reward does
not apply to (TRL then leaves that reward out for the row). Whatever the model wrote, they
never raise: an unreadable answer scores 0. Columns (see :mod:`medrl.vlm.tasks`):

* ``answer``: the correct letter (VQA rows); ``options``: the option texts;
* ``box_px``: the true box in original pixels (grounding rows); ``box_format``,
  ``image_size``, ``model_size``: how to read the model's box (:class:`BoxFrame`);
* ``target_mask``: run lengths of the named structure's pixels (:mod:`medrl.vlm.masks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from medrl.vlm.boxes import BoxFrame, box_area, box_centre, box_iou, clip_box, valid_box
from medrl.vlm.masks import box_dice, rle_to_mask
from medrl.vlm.parsing import (
    answer_content,
    choice_letter,
    completion_text,
    has_think_answer_format,
    parse_box,
)

__all__ = [
    "MISS_FEEDBACK_MAX",
    "choice_accuracy_reward",
    "format_reward",
    "iou_reward",
    "predicted_box_px",
    "semantic_reward",
    "semantic_score",
    "spatial_score",
]

MISS_FEEDBACK_MAX = 0.2
"""Most the distance feedback of :func:`spatial_score` can give (a box scores its IoU above it)."""


def _column(columns: dict[str, Any], name: str, n: int) -> list[Any]:
    values = columns.get(name)
    if values is None:
        return [None] * n
    values = list(values)
    return values if len(values) == n else [None] * n


def _is_grounding(box_px: Any) -> bool:
    return box_px is not None and len(box_px) == 4


def format_reward(
    prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
) -> list[float]:
    """1 for ``<think>...</think><answer>...</answer>`` (nothing else around it), else 0."""
    return [1.0 if has_think_answer_format(completion_text(c)) else 0.0 for c in completions]


def choice_accuracy_reward(
    prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
) -> list[float | None]:
    """1 for exactly the right letter, 0.5 for the right letter with extra text, else 0.

    The letter is read from ``<answer>...</answer>`` (or the whole text if there is none);
    rows without options (grounding) get None.
    """
    n = len(completions)
    answers = _column(columns, "answer", n)
    options = _column(columns, "options", n)
    rewards: list[float | None] = []
    for completion, answer, opts in zip(completions, answers, options, strict=True):
        if not opts:
            rewards.append(None)
            continue
        text = completion_text(completion)
        content = answer_content(text)
        if content is None:
            content = text.strip() or None
        letter, exact = choice_letter(content, len(opts))
        if letter is None or letter != str(answer).strip():
            rewards.append(0.0)
        else:
            rewards.append(1.0 if exact else 0.5)
    return rewards


def predicted_box_px(completion: Any, frame: BoxFrame) -> np.ndarray | None:
    """The completion's box in original pixels, clipped to the image; None if unusable.

    Unusable: no ``<answer>`` with four numbers, degenerate, non-finite, or entirely outside
    the image the model saw.
    """
    box = parse_box(answer_content(completion_text(completion)))
    if box is None or not valid_box(box, frame.model_extent):
        return None
    box_px = clip_box(
        frame.to_pixels(box), (float(frame.image_size[0]), float(frame.image_size[1]))
    )
    return box_px if valid_box(box_px) else None


def spatial_score(
    pred_px: Sequence[float], true_px: Sequence[float], image_size: Sequence[int]
) -> float:
    """``max(IoU, feedback)``: continuous and monotone as a box slides onto the truth.

    ``feedback = 0.2 * max(0, 1 - d / diagonal) * min(a, t) / max(a, t)``, d the distance
    between the box centres, a and t the areas of the predicted and true boxes. It applies to
    every box, overlapping or not, so the score does not drop at the first overlap; the area
    ratio keeps a box of the wrong size (the whole image, a dot on the centre) from collecting
    the feedback by its centre alone.
    """
    iou = box_iou(pred_px, true_px)
    distance = float(np.linalg.norm(box_centre(pred_px) - box_centre(true_px)))
    diagonal = math.hypot(float(image_size[0]), float(image_size[1]))
    areas = box_area(pred_px), box_area(true_px)
    size_match = min(areas) / max(areas) if max(areas) > 0 else 0.0
    feedback = MISS_FEEDBACK_MAX * max(0.0, 1.0 - distance / diagonal) * size_match
    return max(iou, feedback)


def _frame(box_format: Any, image_size: Any, model_size: Any) -> BoxFrame | None:
    try:
        return BoxFrame(str(box_format), tuple(image_size), tuple(model_size))
    except (TypeError, ValueError):
        return None


def _boxed_rows(
    completions: Sequence[Any],
    columns: dict[str, Any],
    target_column: str,
    applies: Callable[[Any], bool],
) -> Iterator[tuple[Any, Any, np.ndarray | None]]:
    """Per completion: its row's ``target_column`` value, the row's box frame and the
    predicted box in original pixels (None when the frame or the answer is unreadable).
    Rows where ``applies(target)`` is false yield ``(target, None, None)`` unparsed."""
    n = len(completions)
    rows = zip(
        completions,
        _column(columns, target_column, n),
        _column(columns, "box_format", n),
        _column(columns, "image_size", n),
        _column(columns, "model_size", n),
        strict=True,
    )
    for completion, target, box_format, image_size, model_size in rows:
        if not applies(target):
            yield target, None, None
            continue
        frame = _frame(box_format, image_size, model_size)
        pred = None if frame is None else predicted_box_px(completion, frame)
        yield target, frame, pred


def iou_reward(
    prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
) -> list[float | None]:
    """IoU of the predicted and true boxes, or centre-distance feedback where it is higher.

    See :func:`spatial_score`.

    Rows without a true box (VQA) get None; a missing or malformed box scores 0.
    """
    rewards: list[float | None] = []
    for true_px, frame, pred in _boxed_rows(completions, columns, "box_px", _is_grounding):
        if not _is_grounding(true_px):
            rewards.append(None)
        else:
            rewards.append(0.0 if pred is None else spatial_score(pred, true_px, frame.image_size))
    return rewards


def semantic_score(
    mask: np.ndarray, pred_px: Sequence[float], true_px: Sequence[float] | None
) -> float:
    """Dice of the predicted box against the structure's mask, relative to the true box's.

    ``box_dice(mask, pred) / box_dice(mask, true)`` clipped to [0, 1]: 1 at the structure's
    own bounding box (``true_px``), less for a box that is too small (it misses mask pixels),
    too large (it holds background) or misplaced. A ribbon-like structure never fills its
    bounding box, so its plain Dice stays below 1 even for the right box; dividing by the true
    box's Dice puts the right box at 1 for every structure. (A ribbon's Dice can peak slightly
    inside its bounding box; the clip makes that a plateau at 1, not a gain for shrinking.)
    Without a usable true box (none, degenerate, or Dice 0) the plain Dice is returned. Boxes
    must lie within the image.
    """
    dice = box_dice(mask, pred_px)
    if true_px is None or not valid_box(true_px):
        return dice
    height, width = mask.shape
    reference = box_dice(mask, clip_box(true_px, (float(width), float(height))))
    if reference <= 0:
        return dice
    return min(1.0, max(0.0, dice / reference))


def semantic_reward(
    prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
) -> list[float | None]:
    """How well the predicted box matches the named structure's pixels (``target_mask``).

    :func:`semantic_score`: the box's Dice with the mask divided by the Dice of the true box
    (``box_px``), so the structure's bounding box scores 1 and smaller, larger or shifted
    boxes less. (A box's precision alone, the share of it on the mask, paid shrinking: a small
    box inside a ribbon-like cortical label scored 1, the right box about 0.6.) A box on a
    neighbouring structure scores about 0 even when it is close; rows without a target mask
    (VQA) get None; a missing or malformed box scores 0.
    """
    true_boxes = _column(columns, "box_px", len(completions))
    rows = zip(_boxed_rows(completions, columns, "target_mask", bool), true_boxes, strict=True)
    rewards: list[float | None] = []
    for (runs, frame, pred), true_px in rows:
        if not runs:
            rewards.append(None)
            continue
        if pred is None:
            rewards.append(0.0)
            continue
        width, height = frame.image_size
        mask = rle_to_mask(runs, (height, width))
        rewards.append(semantic_score(mask, pred, true_px if _is_grounding(true_px) else None))
    return rewards
