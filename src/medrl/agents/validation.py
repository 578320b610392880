"""Quick validation during training: search a few rigidly moved validation scans.

Every ``train.eval_every`` steps the trainer runs the inference search (one start, every
level) with its current network on ``train.eval_scans`` copies of the validation cases, each
moved by a fixed random rigid transform (the landmarks move with it), and logs the mean
error in mm. The validation cases are the datalist's ``val`` split if it has one, else the
*training* cases (never the test split). The moved scans are made once; the search is
deterministic and uses no random stream of the training run, so evaluating does not change
what the run learns, and a resumed run logs the very same figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from medrl.agents.checkpoint import LandmarkModel
from medrl.agents.search import search
from medrl.config import Config
from medrl.data.datalist import Case
from medrl.data.sources import load_split, resolve_datalist
from medrl.envs.pyramid import ScanPyramid, build_pyramid
from medrl.errors import InputError
from medrl.evaluation import move_case, random_rigid
from medrl.io.images import Volume

VALIDATION_SEED = 5000
"""Seeds of the rigid moves (5000, 5001, ...): apart from evaluate's (1000...) and the search
level choice's (77, 78)."""
MAX_ROTATION_DEG = 15.0
MAX_TRANSLATION_MM = 20.0


def validation_split(datalist: str) -> str:
    """``val`` if the datalist has cases in it, else ``train``."""
    return "val" if any(spec.split == "val" for spec in resolve_datalist(datalist)) else "train"


@dataclass
class ValidationScan:
    case_id: str
    volume: Volume
    scan: ScanPyramid
    truth_ras: np.ndarray
    """(landmarks, 3) in the model's landmark order, NaN where the case lacks one."""


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
        labelled = [
            c for c in cases if c.landmarks is not None and set(c.landmarks.names) & set(names)
        ]
        if not labelled:
            raise InputError(
                f"no validation case has any of the landmarks learned ({', '.join(names[:3])}...)"
            )
        count = config.train.eval_scans if count is None else count
        spacings = [lv.spacing_mm for lv in config.env.levels]
        self.names = names
        self.device = torch.device(device)
        self.scans: list[ValidationScan] = []
        for index in range(count):
            case = labelled[index % len(labelled)]
            assert case.landmarks is not None
            known = [n for n in names if n in case.landmarks.names]
            rigid = random_rigid(VALIDATION_SEED + index, MAX_ROTATION_DEG, MAX_TRANSLATION_MM)
            volume, moved = move_case(case.volume, case.landmarks.subset(known), rigid)
            truth = np.full((len(names), 3), np.nan)
            for row, name in enumerate(names):
                if name in moved.names:
                    truth[row] = moved.points_ras[moved.names.index(name)]
            pyramid = build_pyramid(volume, spacings, self.device)
            case_id = f"{case.case_id}_rigid{index}"
            self.scans.append(ValidationScan(case_id, volume, pyramid, truth))

    @classmethod
    def from_config(
        cls, config: Config, names: tuple[str, ...], device: torch.device | str = "cpu"
    ) -> Validator:
        split = validation_split(config.train.datalist)
        return cls(load_split(config.train.datalist, split), config, names, device)

    @torch.no_grad()
    def evaluate(self, network: torch.nn.Module, config: Config) -> dict[str, float]:
        """Errors (mm) of a search with ``network``: overall and after each level."""
        started = time.perf_counter()
        search_config = replace(config.search, levels=0, num_starts=1)
        model = LandmarkModel(
            network,  # type: ignore[arg-type]
            replace(config, search=search_config),
            self.names,
            self.names,
            {},
        )
        was_training = network.training
        network.eval()
        try:
            per_level: list[list[float]] = [[] for _ in config.env.levels]
            for item in self.scans:
                result = search(model, item.volume, self.device, scan=item.scan, num_starts=1)
                known = np.isfinite(item.truth_ras).all(axis=1)
                for level, points in enumerate(result.level_points_ras):
                    error = np.linalg.norm(points[known] - item.truth_ras[known], axis=1)
                    per_level[level].extend(error.tolist())
        finally:
            network.train(was_training)
        final = np.asarray(per_level[-1])
        out = {
            "mean_error_mm": float(final.mean()),
            "median_error_mm": float(np.median(final)),
            "max_error_mm": float(final.max()),
            **{
                f"mean_error_mm/level{lv}": float(np.mean(errors))
                for lv, errors in enumerate(per_level)
            },
            "seconds": time.perf_counter() - started,
        }
        return out
