"""Greedy-decoding evaluation on a split: grounding Acc@0.5, mean IoU, centre distance in mm,
IoU histogram, predicted/true box area ratio and accuracy by true-box size, VQA accuracy per
question type, parse failures. Written as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medrl.utils.atomic import atomic_open
from medrl.vlm.boxes import BoxFrame, box_area, box_centre, box_iou, pixel_to_ras
from medrl.vlm.config import decoding_settings
from medrl.vlm.parsing import answer_content, choice_letter, has_think_answer_format
from medrl.vlm.rewards import predicted_box_px

ACC_IOU = 0.5
"""A grounding answer is a hit when its IoU with the true box is above this."""

IOU_BIN_EDGES = (0.0, 1e-9, 0.1, 0.3, 0.5, 0.7, 1.0)
"""Edges of the IoU histogram. Bins are closed on the right, ``(lo, hi]``, except the first,
``[0, 1e-9]``, which holds IoU exactly 0 (misses and unparsable answers). So the bins above
0.5 add up to the hits of Acc@0.5 (IoU > 0.5)."""

TINY_AREA_RATIO = 0.25
"""A parsed box whose area is below this share of the true box's area counts as tiny."""

SIZE_BIN_EDGES_PX = (12.0, 20.0)
"""True-box size bins by side ``sqrt(area)`` in original pixels: small below 12 px, medium
12 to below 20 px, large 20 px and more (see :data:`SIZE_BIN_NAMES`)."""

SIZE_BIN_NAMES = ("small", "medium", "large")


def _messages(prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in prompt:
        content = message["content"]
        if message["role"] == "user" and isinstance(content, str):
            content = [{"type": "image"}, {"type": "text", "text": content}]
        elif isinstance(content, str):
            content = [{"type": "text", "text": content}]
        out.append({"role": message["role"], "content": content})
    return out


def generate(
    model: Any,
    processor: Any,
    rows: list[dict[str, Any]],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = True,
) -> list[str]:
    """Greedy completions of the rows' prompts and images."""
    import torch
    from tqdm import tqdm

    processor.tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    texts: list[str] = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="evaluate", disable=not progress, file=sys.stderr):
        batch = rows[start : start + batch_size]
        prompts = [
            processor.apply_chat_template(
                _messages(r["prompt"]), add_generation_prompt=True, tokenize=False
            )
            for r in batch
        ]
        images = [[r["image"]] for r in batch]
        inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
        inputs = inputs.to(device)
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts.extend(processor.batch_decode(new_tokens, skip_special_tokens=True))
    return texts


def score_row(row: dict[str, Any], text: str) -> dict[str, Any]:
    """Per-item result: parse status, correctness or IoU and centre distance in mm.

    Grounding rows also get ``true_area_px`` (the true box's area in original pixels) and
    ``area_ratio`` (predicted / true box area, in original pixels; NaN when unparsed).
    """
    result: dict[str, Any] = {
        "item_id": row["item_id"],
        "question_type": row["question_type"],
        "task": row["task"],
        "format_ok": has_think_answer_format(text),
        "completion": text,
    }
    content = answer_content(text)
    if row["task"] == "grounding":
        frame = BoxFrame(row["box_format"], tuple(row["image_size"]), tuple(row["model_size"]))
        pred = predicted_box_px(text, frame)
        result["parsed"] = pred is not None
        true_area_px = box_area(row["box_px"])
        result["true_area_px"] = true_area_px
        if pred is None:
            result.update(iou=0.0, hit=False, centre_mm=math.nan, area_ratio=math.nan)
        else:
            iou = box_iou(pred, row["box_px"])
            centres = np.stack([box_centre(pred), box_centre(row["box_px"])])
            world = pixel_to_ras(centres, row["pixel_to_ras"])
            distance = float(np.linalg.norm(world[0] - world[1]))
            ratio = box_area(pred) / true_area_px if true_area_px > 0 else math.nan
            result.update(iou=iou, hit=iou > ACC_IOU, centre_mm=distance, area_ratio=ratio)
    else:
        if content is None:
            content = text.strip() or None
        letter, _ = choice_letter(content, len(row["options"]))
        result["parsed"] = letter is not None
        result["correct"] = letter == row["answer"]
    return result


def size_bin(true_area_px: float) -> str:
    """Name of the size bin of a true box of ``true_area_px`` (see :data:`SIZE_BIN_EDGES_PX`)."""
    side_px = math.sqrt(max(float(true_area_px), 0.0))
    index = int(np.searchsorted(SIZE_BIN_EDGES_PX, side_px, side="right"))
    return SIZE_BIN_NAMES[index]


def _iou_histogram(ious: list[float]) -> list[dict[str, float | int]]:
    """Counts per IoU bin of :data:`IOU_BIN_EDGES` as ``[{"lo", "hi", "count"}, ...]``."""
    inner = np.asarray(IOU_BIN_EDGES[1:-1])
    counts = np.zeros(len(IOU_BIN_EDGES) - 1, dtype=np.int64)
    if ious:
        # side="left": a value equal to an inner edge falls in the bin below it, (lo, hi]
        np.add.at(counts, np.searchsorted(inner, np.asarray(ious, dtype=np.float64)), 1)
    return [
        {"lo": lo, "hi": hi, "count": int(c)}
        for lo, hi, c in zip(IOU_BIN_EDGES[:-1], IOU_BIN_EDGES[1:], counts, strict=True)
    ]


def _grounding_diagnostics(grounding: list[dict[str, Any]]) -> dict[str, Any]:
    """IoU histogram, area ratios and accuracy by true-box size of the grounding results."""
    n = len(grounding)
    ious = [float(r["iou"]) for r in grounding]
    histogram = _iou_histogram(ious)
    ratios = np.array(
        [r.get("area_ratio", math.nan) for r in grounding if r["parsed"]], dtype=np.float64
    )
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size:
        q25, q50, q75 = (float(q) for q in np.percentile(ratios, [25, 50, 75]))
        area = {
            "median_area_ratio": q50,
            "area_ratio_iqr": q75 - q25,
            "tiny_box_share": float(np.mean(ratios < TINY_AREA_RATIO)),
        }
    else:
        area = {"median_area_ratio": None, "area_ratio_iqr": None, "tiny_box_share": None}
    by_size: dict[str, dict[str, Any]] = {}
    for name in SIZE_BIN_NAMES:
        rows = [
            r
            for r in grounding
            if r.get("true_area_px") is not None and size_bin(r["true_area_px"]) == name
        ]
        by_size[name] = {
            "n": len(rows),
            "acc_at_0.5": float(np.mean([r["hit"] for r in rows])) if rows else None,
            "mean_iou": float(np.mean([r["iou"] for r in rows])) if rows else None,
        }
    return {
        "iou_histogram": histogram,
        "iou_zero_share": histogram[0]["count"] / n if n else None,
        **area,
        "by_size": by_size,
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate metrics; unparsable answers count as wrong (IoU 0).

    The ``grounding`` entry also holds diagnostics (None where there is nothing to count):

    * ``iou_histogram``: ``[{"lo", "hi", "count"}, ...]`` over :data:`IOU_BIN_EDGES`
      (unparsable answers in the IoU = 0 bin), and ``iou_zero_share``;
    * ``median_area_ratio``, ``area_ratio_iqr`` (75th - 25th percentile) of predicted / true
      box area and ``tiny_box_share`` (ratio < :data:`TINY_AREA_RATIO`), parsed answers only;
    * ``by_size``: ``n``, ``acc_at_0.5`` and ``mean_iou`` per true-box size bin
      (:data:`SIZE_BIN_EDGES_PX`), unparsable answers included as misses.
    """
    grounding = [r for r in results if r["task"] == "grounding"]
    vqa = [r for r in results if r["task"] == "vqa"]
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_type[r["question_type"]].append(r)
    distances = [r["centre_mm"] for r in grounding if r["parsed"]]

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    per_type = {}
    for name, rows in sorted(by_type.items()):
        entry: dict[str, Any] = {
            "n": len(rows),
            "parse_failure_rate": mean([not r["parsed"] for r in rows]),
        }
        if rows[0]["task"] == "grounding":
            entry["acc_at_0.5"] = mean([r["hit"] for r in rows])
            entry["mean_iou"] = mean([r["iou"] for r in rows])
        else:
            entry["accuracy"] = mean([r["correct"] for r in rows])
        per_type[name] = entry
    return {
        "n": len(results),
        "format_rate": mean([r["format_ok"] for r in results]),
        "parse_failure_rate": mean([not r["parsed"] for r in results]),
        "grounding": {
            "n": len(grounding),
            "acc_at_0.5": mean([r["hit"] for r in grounding]),
            "mean_iou": mean([r["iou"] for r in grounding]),
            "mean_centre_mm": mean(distances),
            "median_centre_mm": float(np.median(distances)) if distances else None,
            "parse_failure_rate": mean([not r["parsed"] for r in grounding]),
            **_grounding_diagnostics(grounding),
        },
        "vqa": {
            "n": len(vqa),
            "accuracy": mean([r["correct"] for r in vqa]),
            "parse_failure_rate": mean([not r["parsed"] for r in vqa]),
        },
        "per_question_type": per_type,
    }


def write_results(
    out_dir: str | Path, results: list[dict[str, Any]], metrics: dict[str, Any]
) -> None:
    """``metrics.json``, ``metrics.csv`` (one row per question type) and ``predictions.csv``."""
    out = Path(out_dir)
    with atomic_open(out / "metrics.json") as handle:
        json.dump(metrics, handle, indent=2)
        handle.write("\n")
    buffer = io.StringIO()
    fields = ["question_type", "n", "parse_failure_rate", "accuracy", "acc_at_0.5", "mean_iou"]
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    for name, entry in metrics["per_question_type"].items():
        writer.writerow({"question_type": name, **entry})
    with atomic_open(out / "metrics.csv") as handle:
        handle.write(buffer.getvalue())
    buffer = io.StringIO()
    fields = ["item_id", "question_type", "task", "format_ok", "parsed", "correct", "iou", "hit",
              "centre_mm", "area_ratio", "completion"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", extrasaction="ignore")
    writer.writeheader()
    for r in results:
        writer.writerow(r)
    with atomic_open(out / "predictions.csv") as handle:
        handle.write(buffer.getvalue())


def run_evaluate(
    config: dict[str, Any],
    data_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    split: str = "test",
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on ``split`` of ``data_dir``; write and return the metrics."""
    from medrl.vlm.dataset import load_split
    from medrl.vlm.loading import check_processor_size, load_model
    from medrl.vlm.train import _dtype, setup_torch

    device = setup_torch(config, 0, Path(out_dir))
    dataset = load_split(data_dir, split)
    rows = [dataset[i] for i in range(len(dataset) if limit is None else min(limit, len(dataset)))]
    model, processor = load_model(model_dir, _dtype(config, device), config)
    check_processor_size(processor, dataset, data_dir)
    model.to(device).eval()
    max_new_tokens, batch_size = decoding_settings(config)
    texts = generate(model, processor, rows, max_new_tokens, batch_size, progress)
    results = [score_row(row, text) for row, text in zip(rows, texts, strict=True)]
    metrics = summarise(results)
    metrics.update(model=str(model_dir), split=split, data=str(data_dir))
    write_results(out_dir, results, metrics)
    return metrics
