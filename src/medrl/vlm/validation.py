"""Greedy validation during SFT and GRPO: the same fixed items every ``every`` steps.

Each evaluation decodes the first ``items`` rows of the ``val`` split greedily (as
``medrl vlm evaluate`` does) and computes the cross-entropy of the gold completions (the SFT
loss on validation answers: a drift meter for GRPO, the plateau for SFT). Results go to
TensorBoard (``val/*``) and, one JSON line per evaluation, to ``RUN/validation.jsonl``; the
benchmarks read the curves from there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

VAL_FILE = "validation.jsonl"


def gold_cross_entropy(model: Any, processor: Any, rows: list[dict[str, Any]]) -> float:
    """Mean per-token cross-entropy of the rows' gold completions given prompt and image."""
    import torch

    from medrl.vlm.evaluate import _messages

    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for row in rows:
        messages = _messages(row["prompt"])
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        answer = str(row["completion"][0]["content"]) + "<|im_end|>"
        inputs = processor(text=[prompt + answer], images=[[row["image"]]], return_tensors="pt")
        prompt_ids = processor(text=[prompt], images=[[row["image"]]], return_tensors="pt")
        start = int(prompt_ids["input_ids"].shape[1])
        inputs = inputs.to(device)
        labels = inputs["input_ids"].clone()
        labels[:, :start] = -100
        with torch.no_grad():
            logits = model(**inputs).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        )
        total += float(loss)
        tokens += int((target != -100).sum())
    return total / tokens if tokens else math.nan


def evaluate_rows(
    model: Any, processor: Any, rows: list[dict[str, Any]], max_new_tokens: int, batch_size: int
) -> dict[str, Any]:
    """Greedy metrics (:func:`medrl.vlm.evaluate.summarise`) plus the gold cross-entropy."""
    from medrl.vlm.evaluate import generate, score_row, summarise

    was_training = model.training
    model.eval()
    try:
        texts = generate(model, processor, rows, max_new_tokens, batch_size, progress=False)
        metrics = summarise([score_row(r, t) for r, t in zip(rows, texts, strict=True)])
        metrics["gold_ce"] = gold_cross_entropy(model, processor, rows)
    finally:
        if was_training:
            model.train()
    return metrics


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers logged per evaluation (None left out)."""
    grounding, vqa = metrics["grounding"], metrics["vqa"]
    values = {
        "mean_iou": grounding.get("mean_iou"),
        "acc_at_0.5": grounding.get("acc_at_0.5"),
        "grounding_parse_rate": None
        if grounding.get("parse_failure_rate") is None
        else 1.0 - grounding["parse_failure_rate"],
        "median_area_ratio": grounding.get("median_area_ratio"),
        "vqa_accuracy": vqa.get("accuracy"),
        "gold_ce": metrics.get("gold_ce"),
    }
    return {k: float(v) for k, v in values.items() if v is not None}


class ValidationCallback:
    """Evaluates fixed validation rows at step 0 and every ``every`` steps of a trainer."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        processor: Any,
        run: Path,
        every: int,
        max_new_tokens: int,
        batch_size: int,
        phase: str,
    ) -> None:
        self.rows = rows
        self.processor = processor
        self.path = run / VAL_FILE
        self.every = max(1, every)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.phase = phase
        self._writer: Any = None
        self._log_dir = run / "logs" / "validation"

    def evaluate(self, model: Any, step: int) -> dict[str, float]:
        metrics = evaluate_rows(model, self.processor, self.rows, self.max_new_tokens,
                                self.batch_size)  # fmt: skip
        values = scalars(metrics)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"phase": self.phase, "step": step, **values}) + "\n")
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self._log_dir))
        for name, value in values.items():
            self._writer.add_scalar(f"val/{self.phase}/{name}", value, step)
        self._writer.flush()
        return values

    def forget_after(self, step: int) -> None:
        """Drop this phase's evaluations after ``step`` (all of them at 0): a resumed run
        redoes those steps, a restarted one starts over, and the curve must not repeat."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line:
                continue
            entry = json.loads(line)
            if entry.get("phase") != self.phase or (step > 0 and entry["step"] <= step):
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def attach(self, trainer: Any) -> None:
        from transformers import TrainerCallback

        callback = self

        class _Hook(TrainerCallback):
            # only the main process evaluates and writes (several under accelerate/torchrun)
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if not state.is_world_process_zero:
                    return
                callback.forget_after(state.global_step)
                if state.global_step == 0:
                    callback.evaluate(kw["model"], 0)

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                step = state.global_step
                due = step % callback.every == 0 or step == state.max_steps
                if due and state.is_world_process_zero:
                    callback.evaluate(kw["model"], step)

        trainer.add_callback(_Hook())


def read_curve(run: str | Path, phase: str | None = None) -> list[dict[str, Any]]:
    """The validation evaluations of a run (one dict per evaluation), oldest first."""
    path = Path(run) / VAL_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if phase is None or r.get("phase") == phase]
