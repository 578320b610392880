"""Training the supervised heatmap detector on a landmark preset's scans, with its augmentation.

Every step draws fresh augmented samples from the preset's training scans
(:func:`medrl.data.augment.batch_params` with the preset's ``augment`` section, local warps
centred near the scan's landmarks and contrast blends with the scan's siblings as for the
agent): ``coarse_batch`` whole-head patches for the
coarse network and ``local_batch`` local patches (a random landmark each, centred up to
``local_jitter_mm`` from its true position, as a coarse estimate would be) for the local one.
Loss per stage: the mean L1 distance (mm) between the expected position under the softmax and
the truth, divided by the stage's spacing, plus the cross-entropy against a Gaussian heatmap
(sigma: one heatmap voxel) that keeps the heatmaps unimodal.

A step's random draws depend only on (seed, step), so a run resumed from its checkpoint
(``checkpoint.pt`` in the run folder, written every ``checkpoint_every`` steps and at the end)
continues exactly as if uninterrupted, within floating-point reduction order.

With ``cooldown_steps`` > 0 the learning rate, constant until then, falls linearly to zero over
the last ``cooldown_steps`` of ``max_steps`` (a constant-then-decay schedule: the cool-down
settles the weights that the constant rate keeps moving; it is a function of the step, so a
resumed run follows it too; a run stopped by its time budget before then never cools down).
On the left-out templates 500 cool-down steps fitted the training brains closer and the new
ones worse than 500 more steps at the constant rate (BENCHMARKS.md), so it is off by default.

With ``average_decay`` > 0 the run also keeps an exponential moving average of the weights
(Polyak averaging: ``avg <- d avg + (1 - d) w`` after every step) and writes it as the model:
with a constant learning rate and batches of a few patches the last iterate carries the noise
of its last steps, which the average smooths at no cost at inference. The checkpoint holds
both; a run resumed from a checkpoint without an average starts it from the weights. On the
left-out templates it did not beat the last weights of the same runs (BENCHMARKS.md): the
detector is still learning at 3,500 steps and the average lags it, so it is off by default.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrl.config import Config
from medrl.data.augment import batch_params, inverse_transform_points
from medrl.data.sources import load_split
from medrl.data.tissue import with_tissue_siblings
from medrl.envs.pyramid import ScanPyramid, attach_siblings, build_pyramid
from medrl.envs.sampler import episode_noise
from medrl.errors import InputError
from medrl.io.images import Volume
from medrl.supervised.detector import DetectorSettings, HeatmapDetector
from medrl.supervised.network import expected_offsets, gaussian_target, heatmap_axes_mm
from medrl.tasks.landmark import landmark_table
from medrl.utils.atomic import atomic_path

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainSettings:
    minutes: float = 20.0
    """Wall-time budget (the run stops at the first step past it)."""
    max_steps: int = 100_000
    coarse_batch: int = 2
    local_batch: int = 16
    local_jitter_mm: float = 6.0
    """Local patches are centred at the truth plus a Gaussian offset of this sigma per axis
    (clipped at 2.5 sigma): the coarse stage's errors."""
    lr: float = 1e-3
    cooldown_steps: int = 0
    """The learning rate falls linearly from ``lr`` to 0 over the last this many of
    ``max_steps``; 0: constant."""
    average_decay: float = 0.0
    """Decay ``d`` of the moving average of the weights written as the model (horizon about
    ``1 / (1 - d)`` steps); 0: the last weights."""
    checkpoint_every: int = 100
    log_every: int = 20

    def __post_init__(self) -> None:  # before any run folder is made
        if not 0 <= self.cooldown_steps <= self.max_steps:
            raise InputError(
                f"the cool-down ({self.cooldown_steps} steps) must be within the step budget "
                f"({self.max_steps})"
            )
        if not 0.0 <= self.average_decay < 1.0:
            raise InputError(
                f"the weight average's decay must be in [0, 1), not {self.average_decay}"
            )


INFERENCE_ONLY = ("local_rounds",)
"""Detector settings that change how a trained detector reads a scan, not what it trains: a
run resumes across them and writes the current value."""


def _trained_shape(settings: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if key not in INFERENCE_ONLY}


def training_pyramid(
    volume: Volume, settings: DetectorSettings, normalise: bool = True
) -> ScanPyramid:
    """The coarse and local levels exactly as :meth:`HeatmapDetector.detect` builds them,
    plus the blur copy (level 2) for the augmentation, built on its own."""
    scan = build_pyramid(volume, settings.spacings_mm[:2], normalise=normalise)
    blur = build_pyramid(
        volume, [settings.local_spacing_mm, settings.blur_spacing_mm], normalise=normalise
    )
    return replace(scan, levels=(*scan.levels, blur.levels[1]))


def _stage_loss(
    logits: torch.Tensor, offsets_mm: torch.Tensor, size: int, spacing_mm: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean L1 distance mm) of (B, K, H, H, H) logits against true offsets (B, K, 3)."""
    axis = heatmap_axes_mm(size, spacing_mm, logits.device)
    expected = expected_offsets(logits, axis)
    distance = (expected - offsets_mm).abs().sum(-1)
    target = gaussian_target(offsets_mm, axis, 2.0 * spacing_mm)
    log_prob = torch.log_softmax(logits.flatten(2), dim=-1)
    cross_entropy = -(target.flatten(2) * log_prob).sum(-1)
    return distance.mean() / spacing_mm + cross_entropy.mean(), distance.mean()


class DetectorTrainer:
    """One training run of the detector in ``run_dir`` (resumed when its checkpoint exists)."""

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        settings: TrainSettings | None = None,
        detector_settings: DetectorSettings | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.settings = settings or TrainSettings()
        self.seed = config.train.seed
        torch.manual_seed(self.seed)
        cases = load_split(config.train.datalist, "train")
        self.table = landmark_table(cases)
        self.truth = [np.asarray(p, dtype=np.float64) for p in self.table.poses]
        if not any(np.isfinite(t).all() for t in self.truth):
            raise InputError("no training case has every landmark", config.train.datalist)
        self.detector = HeatmapDetector.new(
            self.table.names, self.table.descriptions, detector_settings or DetectorSettings()
        )
        s = self.detector.settings
        # with their siblings (the same brain's other contrasts), for augment.contrast_mix
        self.scans: list[ScanPyramid] = attach_siblings(
            [training_pyramid(c.volume, s) for c in cases], cases
        )
        if config.augment.tissue_maps:
            self.scans = with_tissue_siblings(
                self.scans, cases, lambda volume: training_pyramid(volume, s, normalise=False)
            )
        self.sources = [c.volume.source for c in cases]
        parameters = [*self.detector.coarse.parameters(), *self.detector.local.parameters()]
        self.optimizer = torch.optim.Adam(parameters, lr=self.settings.lr)
        self.average: dict[str, dict[str, torch.Tensor]] | None = None
        self.step = 0
        self.seconds = 0.0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ samples
    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        complete = [i for i, t in enumerate(self.truth) if np.isfinite(t).all()]
        scans = rng.choice(complete, size=n)
        seeds = rng.integers(0, 2**31 - 1, size=n)
        return scans, seeds

    def _params(self, scans: np.ndarray, seeds: np.ndarray):  # type: ignore[no-untyped-def]
        centres = np.stack([self.scans[s].centre_ras for s in scans])
        anchors = [self.truth[s] for s in scans]
        return batch_params(self.config.augment, seeds, centres, "cpu", anchors)

    def _moved_truth(self, params, scans: np.ndarray) -> torch.Tensor:  # type: ignore[no-untyped-def]
        points = torch.as_tensor(np.stack([self.truth[s] for s in scans]), dtype=torch.float32)
        return inverse_transform_points(params, points)  # (B, K, 3)

    def learning_rate(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): constant, then the cool-down."""
        s = self.settings
        start = s.max_steps - s.cooldown_steps
        if s.cooldown_steps == 0 or step < start:
            return s.lr
        return s.lr * (s.max_steps - step) / (s.cooldown_steps + 1)

    def train_step(self) -> dict[str, float]:
        s, d = self.settings, self.detector.settings
        rng = np.random.default_rng([self.seed, self.step])
        self.detector.coarse.train()
        self.detector.local.train()
        # coarse: whole-head patches centred where inference centres them
        scans, seeds = self._draw(rng, s.coarse_batch)
        params = self._params(scans, seeds)
        moved = self._moved_truth(params, scans)
        centres = torch.as_tensor(
            np.stack([self.scans[i].intensity_centre_ras for i in scans]), dtype=torch.float32
        )
        noise = episode_noise(seeds, np.zeros_like(seeds), d.coarse_size**3, "cpu")
        index = torch.as_tensor(scans, dtype=torch.long)
        logits = self.detector.coarse_logits(self.scans, index, centres, params, noise)
        coarse_loss, coarse_mm = _stage_loss(
            logits, moved - centres[:, None], d.coarse_size, d.coarse_spacing_mm
        )
        # local: one landmark per patch, centred near its true position
        scans, seeds = self._draw(rng, s.local_batch)
        params = self._params(scans, seeds)
        moved = self._moved_truth(params, scans)
        landmark = torch.as_tensor(rng.integers(0, len(self.table.names), size=len(scans)))
        truth = moved[torch.arange(len(scans)), landmark]  # (B, 3)
        jitter = np.clip(rng.normal(0.0, s.local_jitter_mm, size=(len(scans), 3)),
                         -2.5 * s.local_jitter_mm, 2.5 * s.local_jitter_mm)  # fmt: skip
        centres = truth + torch.as_tensor(jitter, dtype=torch.float32)
        noise = episode_noise(seeds, np.ones_like(seeds), d.local_size**3, "cpu")
        index = torch.as_tensor(scans, dtype=torch.long)
        logits = self.detector.local_logits(self.scans, index, centres, landmark, params, noise)
        local_loss, local_mm = _stage_loss(
            logits, (truth - centres)[:, None], d.local_size, d.local_spacing_mm
        )
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        (coarse_loss + local_loss).backward()
        self.optimizer.step()
        self._update_average()
        self.step += 1
        return {
            "coarse_loss": float(coarse_loss.detach()),
            "coarse_l1_mm": float(coarse_mm.detach()),
            "local_loss": float(local_loss.detach()),
            "local_l1_mm": float(local_mm.detach()),
        }

    # ------------------------------------------------------------------ weight average
    def _networks(self) -> dict[str, torch.nn.Module]:
        return {"coarse": self.detector.coarse, "local": self.detector.local}

    def _weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            name: {k: v.detach().clone() for k, v in net.state_dict().items()}
            for name, net in self._networks().items()
        }

    def _update_average(self) -> None:
        decay = self.settings.average_decay
        if decay == 0.0:
            return
        if self.average is None:
            self.average = self._weights()
            return
        with torch.no_grad():
            for name, net in self._networks().items():
                for key, value in net.state_dict().items():
                    self.average[name][key].lerp_(value, 1.0 - decay)

    # ------------------------------------------------------------------ run
    def run(self, progress: bool = True) -> HeatmapDetector:
        """Train until the time or step budget is spent; the detector is written to
        ``run_dir/model`` (with how it was trained)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.load_checkpoint()
        if resumed and progress:
            print(f"resumed at step {self.step} ({self.seconds / 60:.1f} min trained)", flush=True)
        s = self.settings
        window: list[dict[str, float]] = []
        started = time.perf_counter() - self.seconds
        while self.step < s.max_steps and self.seconds < s.minutes * 60:
            window.append(self.train_step())
            self.seconds = time.perf_counter() - started
            if self.step % s.log_every == 0:
                mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                self.history.append({"step": self.step, "minutes": self.seconds / 60, **mean})
                window = []
                if progress:
                    print(
                        f"step {self.step}  {self.seconds / 60:5.1f} min  coarse L1 "
                        f"{mean['coarse_l1_mm']:6.2f} mm  local L1 {mean['local_l1_mm']:5.2f} mm",
                        flush=True,
                    )
            if self.step % s.checkpoint_every == 0:
                self.save_checkpoint()
        self.save_checkpoint()
        self.detector.training = {
            "datalist": self.config.train.datalist,
            "scans": self.sources,
            "seed": self.seed,
            "steps": self.step,
            "minutes": round(self.seconds / 60, 2),
            "settings": asdict(s),
            "augment": asdict(self.config.augment),
        }
        if self.average is not None:  # the averaged weights are the model
            for name, net in self._networks().items():
                net.load_state_dict(self.average[name])
        self.detector.save(self.run_dir / "model")
        return self.detector

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "seconds": self.seconds,
            "history": self.history,
            "coarse": self.detector.coarse.state_dict(),
            "local": self.detector.local.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "average": self.average,
            "settings": asdict(self.settings),
            "detector_settings": asdict(self.detector.settings),
            "names": list(self.table.names),
        }
        with atomic_path(self.run_dir / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> bool:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return False
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        if state["names"] != list(self.table.names) or _trained_shape(
            state["detector_settings"]
        ) != _trained_shape(asdict(self.detector.settings)):
            raise InputError(
                "the run folder holds a detector checkpoint of other landmarks or settings; "
                "use another --run-dir",
                self.run_dir,
            )
        self.detector.coarse.load_state_dict(state["coarse"])
        self.detector.local.load_state_dict(state["local"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.history = list(state["history"])
        self.average = None  # a run resumed without the average writes its last weights
        if self.settings.average_decay > 0.0:  # a checkpoint without one: from its weights
            self.average = state.get("average") or self._weights()
        return True
