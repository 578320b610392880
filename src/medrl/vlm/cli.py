"""``medrl vlm ...``: data, sft, grpo, evaluate. Parses arguments and calls one function."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _config(args: argparse.Namespace) -> dict[str, Any]:
    from medrl.vlm.config import load_vlm_config

    return load_vlm_config(args.config, args.set)


def cmd_data(args: argparse.Namespace) -> int:
    from medrl.vlm.config import task_config
    from medrl.vlm.dataset import write_dataset

    config = _config(args)
    data = config.get("data", {})
    num_train = args.num_train or int(data.get("num_train", 256))
    num_test = args.num_test or int(data.get("num_test", 64))
    num_val = args.num_val if args.num_val is not None else int(data.get("num_val", 0))
    out = write_dataset(
        args.out, num_train, num_test, args.seed, task_config(config), not args.quiet, num_val
    )
    print(out)
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from medrl.vlm.sft import run_sft

    print(run_sft(_config(args), args.data, args.run_dir, args.seed, args.init_model))
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    from medrl.vlm.train import run_grpo

    print(run_grpo(_config(args), args.data, args.model, args.run_dir, args.seed))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medrl.vlm.evaluate import run_evaluate

    metrics = run_evaluate(
        _config(args), args.data, args.model, args.out, args.split, args.limit, not args.quiet
    )
    summary = {
        k: metrics[k] for k in ("n", "format_rate", "parse_failure_rate", "grounding", "vqa")
    }
    print(json.dumps(summary, indent=2))
    print(f"\nmetrics written to {args.out}", file=sys.stderr)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="tiny-cpu", help="preset (tiny-cpu, qwen2.5-vl-3b) or YAML file"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. grpo.max_steps=10"
    )
    parser.add_argument("--seed", type=int, default=0)


def add_vlm_parser(sub: Any) -> None:
    """Register ``medrl vlm`` on the main parser's subcommands."""
    vlm = sub.add_parser("vlm", help="GRPO for vision-language models (needs the vlm extra)")
    actions = vlm.add_subparsers(dest="action", required=True)

    data = actions.add_parser("data", help="render grounding/VQA items from the templates")
    _common(data)
    data.add_argument("--out", default="runs/vlm/data")
    data.add_argument("--num-train", type=int, help="default: the preset's data.num_train")
    data.add_argument("--num-test", type=int, help="default: the preset's data.num_test")
    data.add_argument(
        "--num-val", type=int, help="validation items (default: the preset's data.num_val or 0)"
    )
    data.add_argument("--quiet", action="store_true")
    data.set_defaults(func=cmd_data)

    sft = actions.add_parser("sft", help="supervised warm start (TRL SFTTrainer)")
    _common(sft)
    sft.add_argument("--data", default="runs/vlm/data")
    sft.add_argument("--run-dir", default="runs/vlm/sft")
    sft.add_argument(
        "--init-model", help="start from this model folder (e.g. continue an SFT model)"
    )
    sft.set_defaults(func=cmd_sft)

    grpo = actions.add_parser("grpo", help="GRPO with the medrl rewards (TRL GRPOTrainer)")
    _common(grpo)
    grpo.add_argument("--data", default="runs/vlm/data")
    grpo.add_argument("--model", default="runs/vlm/sft/model", help="start model folder")
    grpo.add_argument("--run-dir", default="runs/vlm/grpo")
    grpo.set_defaults(func=cmd_grpo)

    evaluate = actions.add_parser("evaluate", help="greedy decoding metrics on a split")
    _common(evaluate)
    evaluate.add_argument("--data", default="runs/vlm/data")
    evaluate.add_argument("--model", default="runs/vlm/grpo/model")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--out", default="runs/vlm/evaluation")
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N items")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)
