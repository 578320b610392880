"""Supervised training (TRL ``SFTTrainer``): the warm start of GRPO and its control arms.

Completion-only loss on ``prompt``/``completion``/``image``. With ``sft.curriculum`` the
earlier stages train on large targets only (``RUN/stages/N``), each starting from the last;
``init_model`` continues an existing model (the "SFT continued" control of the GRPO
benchmark, with ``sft.max_steps`` and a constant ``sft.lr_scheduler``); ``sft.train_items``
keeps the first N training items (the low-data arms). Runs resume from ``RUN/checkpoints``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from medrl.errors import InputError
from medrl.vlm.dataset import load_split, read_meta
from medrl.vlm.loading import check_processor_size
from medrl.vlm.tiny_model import SIZES, build_model_dir, corpus_from_items
from medrl.vlm.train import (
    _dtype,
    _last_checkpoint,
    _limit,
    _load_for_resume,
    _lora_config,
    _save_final,
    _trainer_arguments,
    _write_json,
    setup_torch,
    validation_callback,
)


def _initial_model(config: dict[str, Any], run: Path, train: Any, seed: int) -> str:
    """The start folder: a built-from-config model (``model.init`` a size) or ``model.init``."""
    init = str(config["model"]["init"])
    if init not in SIZES:
        return init
    init_dir = run / "init"
    if not (init_dir / "config.json").is_file():
        data = config.get("data", {})
        build_model_dir(
            init_dir,
            corpus_from_items(train),
            init,
            seed,
            int(data.get("min_pixels", 56 * 56)),
            int(data.get("max_pixels", 28 * 28 * 1280)),
        )
    return str(init_dir)


def curriculum_stages(sft: dict[str, Any]) -> list[tuple[float, float]]:
    """``(min_box_area_px, epochs)`` per SFT stage: the curriculum, then all items.

    ``sft.curriculum`` lists the smallest true-box area (original pixels) of each stage, large
    structures first; each such stage trains ``sft.curriculum_epochs`` epochs, and the last
    stage trains ``sft.epochs`` on every item.
    """
    thresholds = [float(a) for a in sft.get("curriculum") or []]
    if any(b >= a for a, b in itertools.pairwise(thresholds)):
        raise InputError(f"sft.curriculum must decrease (large targets first), got {thresholds}")
    epochs = float(sft.get("curriculum_epochs", 1))
    return [(area, epochs) for area in thresholds] + [(0.0, float(sft["epochs"]))]


def _box_area_at_least(min_area_px: float) -> Any:
    def keep(row: dict[str, Any]) -> bool:
        box = row["box_px"]
        if not box or len(box) != 4:
            return True  # VQA rows stay in every stage
        return (box[2] - box[0]) * (box[3] - box[1]) >= min_area_px

    return keep


def run_sft(
    config: dict[str, Any],
    data_dir: str | Path,
    run_dir: str | Path,
    seed: int = 0,
    init_model: str | Path | None = None,
) -> Path:
    """Supervised training on the train split; returns ``RUN/model``.

    Starts from ``init_model`` when given (e.g. SFT continued from an SFT model, the control
    arm of the GRPO benchmark), else from ``model.init``. With ``sft.curriculum``, earlier
    stages (large targets first) run in ``RUN/stages/N`` and each starts from the last.
    """
    run = Path(run_dir)
    device = setup_torch(config, seed, run)
    read_meta(data_dir)
    train = _limit(load_split(data_dir, "train"), config["sft"].get("train_items"))
    start = str(init_model) if init_model else _initial_model(config, run, train, seed)
    stages = curriculum_stages(config["sft"])
    for number, (min_area_px, epochs) in enumerate(stages):
        last = number == len(stages) - 1
        stage_run = run if last else run / "stages" / str(number)
        if not last and (stage_run / "model" / "config.json").is_file():
            start = str(stage_run / "model")
            continue
        subset = train if min_area_px <= 0 else train.filter(_box_area_at_least(min_area_px))
        # a step budget (sft.max_steps) applies to the last stage; earlier stages run epochs
        max_steps = int(config["sft"].get("max_steps", -1)) if last else -1
        out = _sft_stage(
            config, data_dir, subset, start, stage_run, seed, device, epochs, max_steps
        )
        start = str(out)
    return run / "model"


def _sft_stage(
    config: dict[str, Any],
    data_dir: str | Path,
    train: Any,
    init: str,
    run: Path,
    seed: int,
    device: str,
    epochs: float,
    max_steps: int = -1,
) -> Path:
    from trl import SFTConfig, SFTTrainer

    checkpoint = _last_checkpoint(run / "checkpoints")
    model, processor = _load_for_resume(config, init, checkpoint, _dtype(config, device))
    check_processor_size(processor, train, data_dir)
    sft = config["sft"]
    args = SFTConfig(
        output_dir=str(run / "checkpoints"),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=int(sft["batch_size"]),
        gradient_accumulation_steps=int(sft.get("gradient_accumulation_steps", 1)),
        learning_rate=float(sft["learning_rate"]),
        lr_scheduler_type=str(sft.get("lr_scheduler", "cosine")),
        warmup_steps=float(sft.get("warmup_ratio", 0.0)),  # a float < 1: share of steps
        max_length=int(sft["max_length"]),
        completion_only_loss=True,
        logging_steps=int(sft.get("logging_steps", 5)),
        save_strategy="epoch" if max_steps <= 0 else "steps",
        save_steps=int(sft.get("save_steps", 50)),
        **_trainer_arguments(config, seed, device),
        disable_tqdm=False,
    )
    columns = ["prompt", "completion", "image"]
    train = train.remove_columns([c for c in train.column_names if c not in columns])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=processor,
        peft_config=_lora_config(config),
    )
    validation = validation_callback(config, data_dir, processor, run, "sft")
    if validation is not None:
        validation.attach(trainer)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    out = _save_final(trainer, processor, run / "model")
    _write_json(
        run / "sft_summary.json",
        {"seed": seed, "seconds": time.perf_counter() - start, "steps": trainer.state.global_step,
         "items": len(train), "log_history": trainer.state.log_history},
    )  # fmt: skip
    return out
