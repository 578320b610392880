"""GRPO (TRL ``GRPOTrainer``, pinned to TRL 1.16) and what SFT (:mod:`medrl.vlm.sft`) shares.

Every GRPO setting whose default moved between TRL releases (group size, beta, loss type,
clipping, reward scaling, sampling) is passed explicitly from the preset. Runs write
TensorBoard logs (loss, per-reward means and stds, sample completions) under ``RUN/logs`` and
resume from the last checkpoint in ``RUN/checkpoints`` when started again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from medrl.errors import InputError
from medrl.vlm import rewards
from medrl.vlm.config import decoding_settings
from medrl.vlm.dataset import load_split, read_meta
from medrl.vlm.diagnostics import make_grounding_diagnostics
from medrl.vlm.loading import check_processor_size, load_processor, load_weights

REWARD_FUNCS = {
    "format_reward": rewards.format_reward,
    "choice_accuracy_reward": rewards.choice_accuracy_reward,
    "iou_reward": rewards.iou_reward,
    "semantic_reward": rewards.semantic_reward,
}


def setup_torch(config: dict[str, Any], seed: int, run: Path) -> str:
    """Seed everything, set CPU threads, point TensorBoard at RUN/logs; return the device."""
    import os

    import torch

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run / "logs")
    from transformers import set_seed

    torch.set_num_threads(int(config.get("threads", 2)))
    set_seed(seed)
    return "cuda" if torch.cuda.is_available() else "cpu"


def _trainer_arguments(config: dict[str, Any], seed: int, device: str) -> dict[str, Any]:
    """The settings SFT and GRPO share: seeds, device, precision, logging, one checkpoint."""
    model = config["model"]
    return {
        "save_total_limit": 1,
        "report_to": ["tensorboard"],
        "seed": seed,
        "data_seed": seed,
        "use_cpu": device == "cpu",
        "bf16": device != "cpu" and model.get("dtype") == "bfloat16",
        "gradient_checkpointing": bool(model.get("gradient_checkpointing", False)),
        "dataloader_num_workers": 0,
    }


def _dtype(config: dict[str, Any], device: str) -> Any:
    import torch

    name = config["model"].get("dtype", "float32")
    if device == "cpu":
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def _lora_config(config: dict[str, Any]) -> Any:
    model_cfg = config["model"]
    if not model_cfg.get("lora"):
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=int(model_cfg.get("lora_r", 16)),
        lora_alpha=int(model_cfg.get("lora_alpha", 32)),
        lora_dropout=float(model_cfg.get("lora_dropout", 0.05)),
        target_modules=list(model_cfg.get("lora_target_modules", ["q_proj", "v_proj"])),
        task_type="CAUSAL_LM",
    )


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _load_for_resume(
    config: dict[str, Any], start: str | Path, checkpoint: str | None, dtype: Any
) -> tuple[Any, Any]:
    """The model to train: from the last checkpoint when resuming a full fine-tune.

    ``Trainer(resume_from_checkpoint=...)`` restores Qwen2.5-VL weights with the saved key
    names (``visual.*``), which transformers 5.23 does not map back (``model.visual.*``):
    the weights would silently stay as they were. ``from_pretrained`` maps them, so the
    model is loaded from the checkpoint and the trainer restores optimizer and schedule.
    TRL 1.16's ``GRPOTrainer`` builds the KL reference model (beta > 0) from
    ``model.config._name_or_path``, so that is set back to the start model: the reference
    stays the model GRPO started from, not the checkpoint. The processor always comes from
    the start model, resizing as the config's ``data`` section says.
    """
    processor = load_processor(start, config)
    if checkpoint is not None and not config["model"].get("lora"):
        model = load_weights(checkpoint, dtype)
        model.config._name_or_path = str(start)
    else:
        model = load_weights(start, dtype)
    return model, processor


def _save_final(trainer: Any, processor: Any, out: Path) -> Path:
    from medrl.utils.atomic import atomic_dir

    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from medrl.utils.atomic import atomic_open

    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def _limit(dataset: Any, items: Any) -> Any:
    """The first ``items`` rows (all when ``items`` is None or 0): the low-data arms."""
    if not items or int(items) >= len(dataset):
        return dataset
    return dataset.select(range(int(items)))


def validation_callback(
    config: dict[str, Any], data_dir: str | Path, processor: Any, run: Path, phase: str
) -> Any:
    """A :class:`ValidationCallback` on the data's ``val`` split, or None.

    None when the data has no validation split or ``evaluate.val_every_steps`` is 0.
    """
    from medrl.vlm.validation import ValidationCallback

    evaluation = config.get("evaluate", {})
    every = int(evaluation.get("val_every_steps", 0))
    if every <= 0 or "val" not in read_meta(data_dir).get("sizes", {}):
        return None
    val = load_split(data_dir, "val")
    rows = [val[i] for i in range(min(len(val), int(evaluation.get("val_items", 128))))]
    max_new_tokens, batch_size = decoding_settings(config)
    return ValidationCallback(rows, processor, run, every, max_new_tokens, batch_size, phase)


class CompletionSamplesCallback:
    """Writes a few prompt/completion/reward samples to TensorBoard text at each log."""

    def __init__(self, log_dir: Path, every: int = 1, samples: int = 4) -> None:
        self.log_dir = log_dir
        self.every = every
        self.samples = samples
        self.trainer: Any = None
        self._writer: Any = None

    def attach(self, trainer: Any) -> None:
        from transformers import TrainerCallback

        callback = self

        class _Hook(TrainerCallback):
            def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                callback.write(state.global_step)

        trainer.add_callback(_Hook())
        self.trainer = trainer

    def write(self, step: int) -> None:
        if self.trainer is None or step % self.every:
            return
        logs = getattr(self.trainer, "_logs", None) or {}
        completions = list(logs.get("completion", []))[-self.samples :]
        prompts = list(logs.get("prompt", []))[-self.samples :]
        reward_logs = {k: list(v)[-self.samples :] for k, v in logs.get("rewards", {}).items()}
        if not completions:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir / "samples"))
        rows = ["| prompt | completion | rewards |", "|---|---|---|"]
        for i, completion in enumerate(completions):
            prompt = str(prompts[i] if i < len(prompts) else "")[-160:]
            scores = ", ".join(f"{k}={v[i]:.2f}" for k, v in reward_logs.items() if i < len(v))
            cells = [prompt, str(completion), scores]
            rows.append(
                "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
            )
        self._writer.add_text("grpo/completions", "\n".join(rows), step)
        self._writer.flush()


def grpo_args(config: dict[str, Any], run: Path, seed: int, device: str) -> Any:
    """The ``GRPOConfig`` of a preset, with every drifting default set explicitly."""
    from trl import GRPOConfig

    grpo = config["grpo"]
    weights = grpo["reward_weights"]
    unknown = set(weights) - set(REWARD_FUNCS)
    if unknown:
        raise InputError(f"unknown rewards {sorted(unknown)}; known: {sorted(REWARD_FUNCS)}")
    reward_weights = [float(weights[name]) for name in weights]
    if grpo.get("diagnostics", True):
        reward_weights.append(0.0)  # grounding_diagnostics: logs, never rewards
    group = int(grpo["num_generations"])
    extra: dict[str, Any] = {}
    if grpo.get("use_vllm"):
        extra = {"use_vllm": True, "vllm_mode": grpo.get("vllm_mode", "colocate")}
    return GRPOConfig(
        output_dir=str(run / "checkpoints"),
        max_steps=int(grpo["max_steps"]),
        learning_rate=float(grpo["learning_rate"]),
        lr_scheduler_type="constant",
        per_device_train_batch_size=int(grpo["prompts_per_step"]) * group,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=group,
        beta=float(grpo["beta"]),
        loss_type=str(grpo["loss_type"]),
        epsilon=float(grpo["epsilon"]),
        epsilon_high=float(grpo["epsilon_high"]),
        scale_rewards=str(grpo["scale_rewards"]),
        num_iterations=int(grpo["num_iterations"]),
        importance_sampling_level="token",
        multi_objective_aggregation="sum_then_normalize",
        max_completion_length=int(grpo["max_completion_length"]),
        temperature=float(grpo["temperature"]),
        top_p=float(grpo["top_p"]),
        top_k=int(grpo["top_k"]),
        repetition_penalty=1.0,
        mask_truncated_completions=bool(grpo["mask_truncated_completions"]),
        reward_weights=reward_weights,
        disable_dropout=True,
        shuffle_dataset=True,
        log_completions=bool(grpo.get("log_completions", True)),
        num_completions_to_print=2,
        logging_steps=1,
        save_steps=int(grpo.get("save_steps", 20)),
        **_trainer_arguments(config, seed, device),
        remove_unused_columns=False,
        **extra,
    )


def run_grpo(
    config: dict[str, Any],
    data_dir: str | Path,
    model_dir: str | Path,
    run_dir: str | Path,
    seed: int = 0,
) -> Path:
    """GRPO from ``model_dir`` (usually the SFT run's ``model``); returns ``RUN/model``."""
    from trl import GRPOTrainer

    run = Path(run_dir)
    device = setup_torch(config, seed, run)
    train = _limit(load_split(data_dir, "train"), config["grpo"].get("train_items"))
    train = train.remove_columns(["completion"])
    checkpoint = _last_checkpoint(run / "checkpoints")
    model, processor = _load_for_resume(config, model_dir, checkpoint, _dtype(config, device))
    check_processor_size(processor, train, data_dir)
    processor.tokenizer.padding_side = "left"
    args = grpo_args(config, run, seed, device)
    weights = config["grpo"]["reward_weights"]
    funcs = [REWARD_FUNCS[name] for name in weights]
    if config["grpo"].get("diagnostics", True):
        funcs.append(make_grounding_diagnostics(REWARD_FUNCS, weights, args.num_generations))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=train,
        processing_class=processor,
        peft_config=_lora_config(config),
    )
    samples = CompletionSamplesCallback(run / "logs")
    samples.attach(trainer)
    validation = validation_callback(config, data_dir, processor, run, "grpo")
    if validation is not None:
        validation.attach(trainer)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    out = _save_final(trainer, processor, run / "model")
    steps = trainer.state.global_step
    _write_json(
        run / "grpo_summary.json",
        {"seed": seed, "seconds": seconds, "steps": steps,
         "steps_per_second": steps / seconds if seconds > 0 else None,
         "log_history": trainer.state.log_history},
    )  # fmt: skip
    return out
