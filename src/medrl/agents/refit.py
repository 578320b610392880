"""Bring a trained model's search up to date without retraining its network.

A model folder keeps, beside the network, what the search learned from the training targets
(the task state: the box task's start prior and reference layout) and the search settings the
export chose on validation data (``search.levels``, ``search.consensus_level``). When a newer
medrl adds to either, :func:`refit_model` re-learns the task state from the model's training
data and re-chooses ``search.consensus_level`` on the same validation moves the export uses
(on a tie the model keeps its setting), and rewrites the folder atomically; the network
weights are copied unchanged. This is how the shipped box model received its reference layout
(BENCHMARKS.md).

    python -m medrl.agents.refit MODEL_DIR [--datalist DATALIST]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from medrl.agents.checkpoint import load_model, save_model_files
from medrl.agents.validation import select_consensus_level
from medrl.data.sources import load_split
from medrl.envs.pyramid import build_pyramid
from medrl.errors import MedrlError
from medrl.utils.atomic import atomic_dir
from medrl.utils.folder_lock import folder_lock


def refit_model(model_dir: str | Path, datalist: str | None = None) -> dict[str, float]:
    """Re-learn the task state of ``model_dir`` from the training split of ``datalist`` (the
    model's own training datalist by default) and re-choose ``search.consensus_level``.
    Returns the validation mean primary score of every consensus option (empty when the task
    has no reference layout)."""
    folder = Path(model_dir)
    model = load_model(folder)
    config = model.config
    cases = load_split(datalist or config.train.datalist, "train")
    table = model.task.target_table(cases, model.names)
    spacings = [level.spacing_mm for level in config.env.levels]
    scans = [build_pyramid(case.volume, spacings, "cpu") for case in cases]
    model.task.fit(scans, table)
    unset = replace(config, search=replace(config.search, consensus_level=None))
    with torch.inference_mode():
        level, scores = select_consensus_level(replace(model, config=unset), cases)
    current = config.search.consensus_level
    if current is not None and current in scores and scores[current] == scores.get(level):
        level = current  # a tie: the model keeps its setting
    chosen = replace(config, search=replace(config.search, consensus_level=level))
    key = model.task.primary_score[0]
    meta = dict(model.meta)
    if scores:
        meta[f"consensus_level_validation_mean_{key}"] = {str(k): v for k, v in scores.items()}
    with atomic_dir(folder) as tmp:
        save_model_files(
            tmp, model.network, chosen, model.names, model.descriptions, meta, model.task
        )
        for extra in folder.iterdir():  # anything else the folder held (a README, a detector)
            if extra.name in ("model.yaml", "model.safetensors"):
                continue
            if extra.is_dir():
                shutil.copytree(extra, tmp / extra.name)
            else:
                shutil.copy2(extra, tmp / extra.name)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medrl.agents.refit", description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("--datalist", default=None)
    args = parser.parse_args(argv)
    try:
        with folder_lock(Path(args.model_dir).parent, "refit"):
            scores = refit_model(args.model_dir, args.datalist)
    except MedrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for option, mean in scores.items():
        print(f"search.consensus_level {option:>2}: validation mean {mean:.4f}")
    print(f"refitted {args.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
