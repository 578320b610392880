"""Validation without test data: quick validation during training and the search-level choice.

Every ``train.eval_every`` steps the trainer runs the inference search (one start, every
level) with its current network on ``train.eval_scans`` copies of the validation cases, each
moved by a fixed random rigid transform (annotations move with it: landmarks exactly, label
maps by nearest neighbour, boxes recomputed from them), and logs the task's scores (mean
error in mm for landmarks, IoU for boxes). The validation cases are the datalist's ``val``
split if it has one, else the *training* cases (never the test split). The moved scans are
made once; the search is deterministic and uses no random stream of the training run, so
evaluating does not change what the run learns, and a resumed run logs the very same
figures. :func:`select_search_levels` picks, at export, how many levels the search uses, on
the training scans under other rigid moves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from medrl.agents.checkpoint import Model
from medrl.agents.search import search
from medrl.config import Config
from medrl.data.datalist import Case
from medrl.data.scenarios import ScenarioScan, scenario_scans
from medrl.data.sources import load_split, resolve_datalist
from medrl.envs.pyramid import ScanPyramid, build_pyramid
from medrl.errors import InputError
from medrl.io.images import Volume
from medrl.tasks import Task, make_task

VALIDATION_SEED = 5000
"""Seeds of the rigid moves (5000, 5001, ...): apart from evaluate's (1000...) and the search
level choice's (77, 78)."""
MAX_ROTATION_DEG = 15.0
MAX_TRANSLATION_MM = 20.0


def validation_split(datalist: str) -> str:
    """``val`` if the datalist has cases in it, else ``train``."""
    return "val" if any(spec.split == "val" for spec in resolve_datalist(datalist)) else "train"


def moved_truth(task: Task, scan: ScenarioScan, names: tuple[str, ...]) -> np.ndarray:
    """(T, D) the task's targets in a moved scan, NaN where it lacks one."""
    case = Case(scan.case_id, scan.volume, scan.landmarks, "val", scan.labels, scan.label_names)
    known = _known_names(task, case, names)
    table = task.target_table([case], known)
    truth = np.full((len(names), task.pose_dim), np.nan)
    for row, name in enumerate(known):
        truth[names.index(name)] = table.poses[0][row]
    return truth


def _known_names(task: Task, case: Case, names: tuple[str, ...]) -> tuple[str, ...]:
    present = task.present_names(case)
    return tuple(n for n in names if n in present)


def _moved(task: Task, case: Case, trials: int, seed: int) -> list[ScenarioScan]:
    """The case moved ``trials`` times, with the annotation the task learns from."""
    landmark = task.annotation == "landmarks"
    names = case.landmarks.names if landmark and case.landmarks is not None else None
    return scenario_scans(
        [case],
        trials,
        MAX_ROTATION_DEG,
        MAX_TRANSLATION_MM,
        seed,
        landmark_names=names,
        with_labels=not landmark,
    )


@dataclass
class ValidationScan:
    case_id: str
    volume: Volume
    scan: ScanPyramid
    truth: np.ndarray
    """(targets, D) in the model's target order, NaN where the case lacks one."""

    @property
    def truth_ras(self) -> np.ndarray:  # the landmark-era name
        return self.truth


def _summary(per_level: list[dict[str, list[float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, values in per_level[-1].items():
        final = np.asarray(values)
        out.update(
            {
                f"mean_{key}": float(final.mean()),
                f"median_{key}": float(np.median(final)),
                f"max_{key}": float(final.max()),
                f"min_{key}": float(final.min()),
            }
        )
    for level, scores in enumerate(per_level):
        out.update({f"mean_{key}/level{level}": float(np.mean(v)) for key, v in scores.items()})
    return out


def score_levels(
    model: Model, items: list[tuple[Volume, ScanPyramid | None, np.ndarray]], device
) -> list[dict[str, list[float]]]:
    """Per level of the search (one start, every level): the task's scores of every target."""
    per_level: list[dict[str, list[float]]] = [{} for _ in model.config.env.levels]
    for volume, pyramid, truth in items:
        result = search(model, volume, device, scan=pyramid, num_starts=1)
        known = np.isfinite(truth).all(axis=1)
        for level, estimate in enumerate(result.level_estimates):
            for key, values in model.task.scores(estimate[known], truth[known]).items():
                per_level[level].setdefault(key, []).extend(values.tolist())
    return per_level


class Validator:
    """The moved validation scans of one run and the search that scores a network on them."""

    def __init__(
        self,
        cases: list[Case],
        config: Config,
        names: tuple[str, ...],
        device: torch.device | str = "cpu",
        count: int | None = None,
    ) -> None:
        self.task = make_task(config)
        labelled = [c for c in cases if _known_names(self.task, c, names)]
        if not labelled:
            raise InputError(
                f"no validation case has any of the targets learned ({', '.join(names[:3])}...)"
            )
        count = config.train.eval_scans if count is None else count
        spacings = [lv.spacing_mm for lv in config.env.levels]
        self.names = names
        self.device = torch.device(device)
        self.scans: list[ValidationScan] = []
        for index in range(count):
            case = labelled[index % len(labelled)]
            (moved,) = _moved(self.task, case, 1, VALIDATION_SEED + index)
            truth = moved_truth(self.task, moved, names)
            pyramid = build_pyramid(moved.volume, spacings, self.device)
            case_id = f"{case.case_id}_rigid{index}"
            self.scans.append(ValidationScan(case_id, moved.volume, pyramid, truth))

    @classmethod
    def from_config(
        cls, config: Config, names: tuple[str, ...], device: torch.device | str = "cpu"
    ) -> Validator:
        split = validation_split(config.train.datalist)
        return cls(load_split(config.train.datalist, split), config, names, device)

    @torch.no_grad()
    def evaluate(
        self, network: torch.nn.Module, config: Config, task: Task | None = None
    ) -> dict[str, float]:
        """Scores of a search with ``network`` (landmarks: ``mean_error_mm``, ...; boxes:
        ``mean_iou``, ...): over the final estimates and after each level."""
        started = time.perf_counter()
        run_config = replace(config, search=replace(config.search, levels=0, num_starts=1))
        model = Model(network, run_config, self.names, self.names, {}, task or self.task)  # type: ignore[arg-type]
        was_training = network.training
        network.eval()
        try:
            items = [(s.volume, s.scan, s.truth) for s in self.scans]
            per_level = score_levels(model, items, self.device)
        finally:
            network.train(was_training)
        return {**_summary(per_level), "seconds": time.perf_counter() - started}


def _validation_items(
    model: Model, cases: list[Case], trials: int, seed: int
) -> list[tuple[Volume, ScanPyramid | None, np.ndarray]]:
    items: list[tuple[Volume, ScanPyramid | None, np.ndarray]] = []
    for case in cases:
        if not _known_names(model.task, case, model.names):
            continue
        for moved in _moved(model.task, case, trials, seed):
            items.append((moved.volume, None, moved_truth(model.task, moved, model.names)))
    return items


def model_scores(
    model: Model, cases: list[Case], trials: int = 2, seed: int = VALIDATION_SEED
) -> np.ndarray:
    """The primary score (landmarks: error in mm) of every target of ``cases``, each moved
    ``trials`` times at random, as the model searches (its own levels and second search)."""
    key = model.task.primary_score[0]
    values: list[float] = []
    with torch.inference_mode():
        for volume, _, truth in _validation_items(model, cases, trials, seed):
            known = np.isfinite(truth).all(axis=1)
            estimate = search(model, volume, "cpu").estimate
            values.extend(np.asarray(model.task.scores(estimate[known], truth[known])[key]))
    return np.asarray(values, dtype=float)


def select_search_levels(
    model: Model,
    cases: list[Case],
    trials: int = 2,
    seed: int = 77,
    device: str = "cpu",
) -> tuple[int, list[float]]:
    """How many levels the search should use: the count with the best mean primary score
    (landmarks: error in mm; boxes: IoU) on ``cases`` (the training scans) under random rigid
    moves, never on test data. Returns the chosen count and the mean score after each level.
    """
    config = model.config
    search_config = replace(config.search, levels=0, consensus_level=-1)
    model = replace(model, config=replace(config, search=search_config))
    key, higher_is_better = model.task.primary_score
    items = _validation_items(model, cases, trials, seed)
    with torch.inference_mode():
        per_level = score_levels(model, items, device)
    means = [float(np.mean(s[key])) if s.get(key) else float("nan") for s in per_level]
    ranked = [(-m if higher_is_better else m) for m in means]
    return int(np.nanargmin(ranked)) + 1, means


def has_reference_layout(task: Task) -> bool:
    """Whether the task can fit a reference layout of its targets for a second search."""
    return type(task).consensus_starts is not Task.consensus_starts


def select_consensus_level(
    model: Model,
    cases: list[Case],
    trials: int = 2,
    seed: int = 77,
    device: str = "cpu",
) -> tuple[int, dict[int, float]]:
    """Whether (and from which level) the search should search again from the task's fitted
    reference layout (``search.consensus_level``): the option with the best mean primary
    score on ``cases`` (the training scans) under random rigid moves, never on test data; on a
    tie, no second search. Returns the choice and the mean score of every option (-1: off);
    -1 and no scores for a task without a reference layout.
    """
    if not has_reference_layout(model.task):
        return -1, {}
    levels = model.config.search.levels or len(model.config.env.levels)
    key, higher_is_better = model.task.primary_score
    items = _validation_items(model, cases, trials, seed)
    if not items:
        return -1, {}
    scores: dict[int, list[float]] = {option: [] for option in range(-1, levels)}
    with torch.inference_mode():
        for volume, _, truth in items:
            known = np.isfinite(truth).all(axis=1)
            for option in scores:
                estimate = search(model, volume, device, consensus_level=option).estimate
                if option == -1 and model.task.consensus_starts(estimate) is None:
                    return -1, {}
                values = model.task.scores(estimate[known], truth[known])[key]
                scores[option].extend(np.asarray(values).tolist())
    means = {option: float(np.mean(v)) for option, v in scores.items()}
    sign = 1.0 if higher_is_better else -1.0
    best = -1
    for option, mean in means.items():
        if sign * mean > sign * means[best]:
            best = option
    return best, means
