"""Training the velocity network, with lambda learned by bilevel optimisation or fixed.

:func:`train` runs in a folder: ``checkpoint.pt`` (weights, both optimisers, lambda, step,
history) is written atomically every ``checkpoint_every`` steps and at the end, and a run
started again in the same folder resumes from it (the config must match, except the budget
fields ``steps``, ``max_minutes``, ``checkpoint_every``, ``log_every``). Every random draw of a
step depends only on (seed, step), so a resumed run continues as the uninterrupted one would.
The finished model is written to ``<run>/model`` (:mod:`.model_folder`).

Each inner step takes one pair: a synthetic warp of a training source (probability
``synthetic_fraction``) or a real cross-template training pair (:mod:`.pairs`), optionally a
random ``crop_vox`` cube of it, and makes one Adam step on ``similarity + lambda *
diffusion``. With ``learn_lambda``, every ``bilevel.outer_every`` inner steps an outer step
updates log(lambda) by the hypergradient of the validation loss (:mod:`.bilevel`).

With ``network.lambda_range`` set the network is conditioned on lambda (amortised,
:mod:`.amortised`): every inner step draws its own lambda from the range, there are no outer
steps during training, and after it ``learn_lambda`` learns lambda by gradient descent through
the network on the validation pairs (else the model keeps ``initial_lambda``).

Progress lines go to ``log`` (stderr by default)::

    deformable step 40/300 loss -0.4123 sim -0.4310 smooth 0.019 lambda 1.0000 val 3.210 \
(tre 2.90 mm, dice 0.712) 35.2 s
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from medrl.errors import CheckpointError
from medrl.registration.deformable.amortised import amortised_lambda, draw_lambda, training_scale
from medrl.registration.deformable.bilevel import (
    BilevelSettings,
    Crop,
    adam_preconditioner,
    hypergradient,
    inner_loss,
    outer_loss,
)
from medrl.registration.deformable.frames import WORKING_SPACING_MM
from medrl.registration.deformable.integrate import DEFAULT_INTEGRATION_STEPS
from medrl.registration.deformable.model_folder import DeformableModel, save_model
from medrl.registration.deformable.network import NetworkSettings, VelocityUNet
from medrl.registration.deformable.pairs import (
    Pair,
    PairSet,
    TemplateLibrary,
    build_pair_set,
    synthetic_pair,
)
from medrl.registration.deformable.synthetic import SyntheticWarpSettings, seed_for
from medrl.utils.atomic import atomic_path

__all__ = [
    "CHECKPOINT",
    "MODEL_SUBDIR",
    "TrainConfig",
    "TrainResult",
    "draw_batch",
    "prepare_pairs",
    "train",
    "validate",
    "with_lambda",
]

CHECKPOINT = "checkpoint.pt"
MODEL_SUBDIR = "model"
_BUDGET_FIELDS = ("steps", "max_minutes", "checkpoint_every", "log_every")


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults: a full run at 2 mm (hours on CPU, minutes on a GPU)."""

    seed: int = 0
    working_spacing_mm: float = WORKING_SPACING_MM
    steps: int = 3000
    """Inner (network) steps; the same budget for every lambda of a grid search."""
    lr: float = 1e-3
    """Adam learning rate of the network."""
    initial_lambda: float = 1.0
    """Start of lambda (learned) or its value (``learn_lambda=False``)."""
    learn_lambda: bool = True
    similarity: str = "ncc"
    """``"ncc"`` (same-contrast pairs only), ``"mind"`` or ``"auto"`` (NCC within a contrast,
    MIND-SSC across; these two also train on T1w <-> T2w pairs)."""
    integration_steps: int = DEFAULT_INTEGRATION_STEPS
    network: NetworkSettings = field(default_factory=NetworkSettings)
    crop_vox: int | None = None
    """Train on random cubes of this side (voxels), None: whole working grids."""
    synthetic_fraction: float = 0.5
    """Share of inner steps on synthetic warps (the rest on real cross-template pairs)."""
    synthetic: SyntheticWarpSettings = field(default_factory=SyntheticWarpSettings)
    bilevel: BilevelSettings = field(default_factory=BilevelSettings)
    val_synthetic_pairs: int = 4
    """Synthetic validation pairs (with labels and landmarks) next to the real ones."""
    variants: tuple[str, ...] = ("", "_brain")
    """Skull variants of the built-in cases: ``""`` with skull, ``"_brain"`` without."""
    train_template_pairs: tuple[tuple[str, str], ...] | None = None
    """(fixed, moving) templates of the real training pairs; None: every allowed pair."""
    contrasts: tuple[str, ...] | None = None
    """Contrasts used for training (e.g. ``("T1w",)``); None: all."""
    checkpoint_every: int = 50
    log_every: int = 10
    max_minutes: float | None = None
    """Wall-time budget over all sessions of the run; it stops at the first step past it."""

    def __post_init__(self) -> None:
        if self.working_spacing_mm <= 0 or self.steps < 0 or self.lr <= 0:
            raise ValueError("working_spacing_mm and lr must be positive, steps >= 0")
        if not (math.isfinite(self.initial_lambda) and self.initial_lambda > 0):
            raise ValueError(f"initial_lambda must be positive, got {self.initial_lambda}")
        if self.similarity not in ("ncc", "mind", "auto"):
            raise ValueError(f"similarity must be 'ncc', 'mind' or 'auto', got {self.similarity!r}")
        if self.crop_vox is not None and self.crop_vox < 8:
            raise ValueError(f"crop_vox must be >= 8 voxels, got {self.crop_vox}")
        lambda_range = self.network.lambda_range
        if lambda_range is not None and not (
            lambda_range[0] <= self.initial_lambda <= lambda_range[1]
        ):
            raise ValueError(
                f"initial_lambda {self.initial_lambda} lies outside network.lambda_range "
                f"{lambda_range}"
            )

    @property
    def amortised(self) -> bool:
        """True when one network is trained for every lambda of ``network.lambda_range``."""
        return self.network.lambda_range is not None

    @property
    def cross_contrast(self) -> bool:
        return self.similarity != "ncc"

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint."""
        values = asdict(self)
        for name in _BUDGET_FIELDS:
            values.pop(name)
        return _jsonable(values)


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively (what JSON and torch.save round trips give back)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class TrainResult:
    """A finished (or budget-stopped) run."""

    model_dir: Path
    lam: float
    steps: int
    seconds: float
    val: dict[str, float]
    history: list[dict[str, float]]
    stopped_early: bool


def prepare_pairs(
    config: TrainConfig, cache_dir: str | Path | None = None, log: TextIO | None = sys.stderr
) -> PairSet:
    """The built-in pairs a run of ``config`` uses (affines cached in ``cache_dir``)."""
    library = TemplateLibrary(
        config.working_spacing_mm, config.seed, cache_dir, lambda line: _emit(log, line)
    )
    return build_pair_set(
        library,
        cross_contrast=config.cross_contrast,
        val_synthetic_pairs=config.val_synthetic_pairs,
        synthetic_settings=config.synthetic,
        variants=config.variants,
        train_template_pairs=config.train_template_pairs,
        contrasts=config.contrasts,
    )


def _emit(log: TextIO | None, line: str) -> None:
    if log is not None:
        print(line, file=log, flush=True)


def draw_batch(
    pairs: PairSet, config: TrainConfig, index: int, stream: int = 0
) -> tuple[Pair, Crop | None]:
    """The ``index``-th training pair and crop of a stream (0: inner steps, 1: the unrolled
    steps of the outer probes): a function of (seed, stream, index) only."""
    rng = np.random.default_rng([config.seed, stream, index])
    synthetic = bool(pairs.train_sources) and (
        not pairs.train_real or rng.random() < config.synthetic_fraction
    )
    if synthetic:
        source = pairs.train_sources[int(rng.integers(len(pairs.train_sources)))]
        contrasts = list(source.images)
        fixed_contrast = moving_contrast = contrasts[0]
        if config.cross_contrast and len(contrasts) > 1:
            fixed_contrast = contrasts[int(rng.integers(len(contrasts)))]
            moving_contrast = contrasts[int(rng.integers(len(contrasts)))]
        pair = synthetic_pair(
            source,
            seed_for("train", config.seed, stream, index),
            config.synthetic,
            fixed_contrast,
            moving_contrast,
        )
    elif pairs.train_real:
        pair = pairs.train_real[int(rng.integers(len(pairs.train_real)))]
    else:
        raise ValueError("no training pairs")
    crop = None
    if config.crop_vox is not None:
        shape = pair.fixed.shape[2:]
        starts = [int(rng.integers(0, max(1, n - config.crop_vox) + 1)) for n in shape]
        crop = tuple(slice(s, s + config.crop_vox) for s in starts)
    return pair, crop  # type: ignore[return-value]


EXPLODED_FACTOR = 10.0
"""An outer probe whose validation loss exceeds this multiple of the last accepted probe's
is treated as diverged and does not update lambda."""


def _exploded(val_loss: float, gradient: float, history: list[dict[str, Any]]) -> str:
    """Why an outer probe must not update lambda ('' when it may): a non-finite value, or a
    validation loss far above the last accepted probe's (the unrolled steps diverged; one such
    gradient would also dominate the lambda optimiser's second moment for hundreds of steps)."""
    if not (math.isfinite(val_loss) and math.isfinite(gradient)):
        return f"non-finite probe: loss {val_loss}, gradient {gradient}"
    accepted = [h["val_loss_unrolled"] for h in history if not h.get("skipped")]
    if accepted and val_loss > EXPLODED_FACTOR * max(accepted[-1], 1e-6):
        return f"probe diverged: validation loss {val_loss:.4g} after {accepted[-1]:.4g}"
    return ""


def validate(
    network: VelocityUNet, pairs: PairSet, config: TrainConfig, lam: float | None = None
) -> dict[str, float]:
    """The outer (validation) loss and its parts for the current weights (at ``lam``, for a
    lambda-conditioned network)."""
    network.eval()
    with torch.no_grad():
        _, parts = outer_loss(network, pairs.val, config.bilevel, config.integration_steps, lam=lam)
    network.train()
    return parts


def _load_checkpoint(path: Path, config: TrainConfig) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["config"]
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"cannot resume: unreadable checkpoint ({exc})", path) from exc
    if saved != config.identity():
        changed = sorted(
            k
            for k in set(saved) | set(config.identity())
            if saved.get(k) != config.identity().get(k)
        )
        raise CheckpointError(
            f"cannot resume: the run was started with another config (differs in "
            f"{', '.join(changed)}); use a new folder",
            path,
        )
    return state


def train(
    config: TrainConfig,
    run_dir: str | Path,
    pairs: PairSet | None = None,
    log: TextIO | None = sys.stderr,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train (or resume) a run in ``run_dir``; returns where the model was written.

    ``pairs`` (default: :func:`prepare_pairs`) lets several runs share the prepared data."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT
    torch.manual_seed(config.seed)
    network = VelocityUNet(config.network).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    log_lambda = torch.nn.Parameter(torch.tensor(math.log(config.initial_lambda)))
    lambda_optimizer = torch.optim.Adam([log_lambda], lr=config.bilevel.lambda_lr)
    step, elapsed, history = 0, 0.0, []
    if checkpoint_path.is_file():
        state = _load_checkpoint(checkpoint_path, config)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        lambda_optimizer.load_state_dict(state["lambda_optimizer"])
        with torch.no_grad():
            log_lambda.fill_(float(state["log_lambda"]))
        step, elapsed, history = int(state["step"]), float(state["seconds"]), state["history"]
        _emit(log, f"deformable: resumed {run_dir} at step {step}")
    if pairs is None:
        pairs = prepare_pairs(config, run_dir / "affines", log)
    if not math.isclose(pairs.spacing_mm, config.working_spacing_mm):
        raise ValueError(
            f"pairs are on a {pairs.spacing_mm} mm grid, the config wants "
            f"{config.working_spacing_mm} mm"
        )

    def save_checkpoint() -> None:
        state = {
            "config": config.identity(),
            "network": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lambda_optimizer": lambda_optimizer.state_dict(),
            "log_lambda": float(log_lambda.detach()),
            "step": step,
            "seconds": elapsed + time.perf_counter() - session_start,
            "history": history,
        }
        with atomic_path(checkpoint_path) as tmp:
            torch.save(state, tmp)

    session_start = time.perf_counter()
    budget_s = None if config.max_minutes is None else 60.0 * config.max_minutes
    stopped_early = False
    low, high = math.log(config.bilevel.min_lambda), math.log(config.bilevel.max_lambda)
    network.train()
    last_val: dict[str, float] = {}
    while step < config.steps:
        seconds = elapsed + time.perf_counter() - session_start
        if budget_s is not None and seconds > budget_s:
            stopped_early = True
            _emit(log, f"deformable: stopping at step {step}: {config.max_minutes} min budget")
            break
        if config.amortised:
            assert config.network.lambda_range is not None
            lam = draw_lambda(config.network.lambda_range, config.seed, step)
        else:
            lam = float(log_lambda.detach().exp())
        pair, crop = draw_batch(pairs, config, step)
        loss, parts = inner_loss(
            network, pair, lam, config.similarity, config.integration_steps, crop=crop
        )
        if config.amortised:
            loss = loss * training_scale(lam)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        unrolled = config.learn_lambda and not config.amortised
        if unrolled and step % config.bilevel.outer_every == 0:
            first = step * config.bilevel.unroll_steps
            batches = [
                draw_batch(pairs, config, first + k, stream=1)
                for k in range(config.bilevel.unroll_steps)
            ]
            probe = hypergradient(
                network,
                log_lambda,
                batches,
                pairs.val,
                config.bilevel,
                config.similarity,
                config.integration_steps,
                lr=config.lr,
                preconditioner=adam_preconditioner(network, optimizer),
            )
            exploded = _exploded(probe.val_loss, probe.d_val_d_log_lambda, history)
            if exploded:
                _emit(log, f"deformable: step {step}: outer step skipped ({exploded})")
            else:
                lambda_optimizer.zero_grad(set_to_none=True)
                log_lambda.grad = torch.tensor(probe.d_val_d_log_lambda, dtype=log_lambda.dtype)
                lambda_optimizer.step()
                with torch.no_grad():
                    log_lambda.clamp_(low, high)
                last_val = dict(probe.parts)
            history.append(
                {
                    "step": step,
                    "lambda": float(log_lambda.detach().exp()),
                    "val_loss_unrolled": probe.val_loss,
                    "d_val_d_log_lambda": probe.d_val_d_log_lambda,
                    "skipped": bool(exploded),
                }
            )
        if step % config.log_every == 0 or step == config.steps:
            val_text = ""
            if last_val:
                extra = ", ".join(
                    f"tre {v:.2f} mm" if k == "tre_mm" else f"dice {v:.3f}"
                    for k, v in last_val.items()
                    if k in ("tre_mm", "dice")
                )
                val_text = f" val {last_val['loss']:.3f} ({extra})"
            _emit(
                log,
                f"deformable step {step}/{config.steps} loss {float(loss.detach()):.4f} "
                f"sim {parts['similarity']:.4f} smooth {parts['smoothness']:.3g} "
                f"lambda {lam:.4f}{val_text} "
                f"{elapsed + time.perf_counter() - session_start:.1f} s",
            )
        if step % config.checkpoint_every == 0:
            save_checkpoint()
    save_checkpoint()
    amortised: dict[str, Any] = {}
    if config.amortised:
        lam, amortised = amortised_lambda(
            network,
            pairs.val,
            config.bilevel,
            config.integration_steps,
            learn=config.learn_lambda,
            initial_lambda=config.initial_lambda,
            say=lambda line: _emit(log, line),
        )
    else:
        lam = float(log_lambda.detach().exp())
    seconds = elapsed + time.perf_counter() - session_start
    val = validate(network, pairs, config, lam)
    _emit(
        log,
        f"deformable: done, {step} steps, lambda {lam:.4f}, validation loss {val['loss']:.4f}, "
        f"{seconds:.1f} s",
    )
    training = {
        "steps": step,
        "seconds": round(seconds, 1),
        "stopped_early": stopped_early,
        "learned_lambda": config.learn_lambda,
        "initial_lambda": config.initial_lambda,
        "lambda_history": [[h["step"], round(h["lambda"], 6)] for h in history],
        **({"amortised": amortised} if amortised else {}),
        "validation": val,
        "pairs": pairs.facts,
        "config": config.identity() | {k: getattr(config, k) for k in _BUDGET_FIELDS},
        "torch": torch.__version__,
    }
    model = DeformableModel(
        network=network.cpu().eval(),
        lam=lam,
        working_spacing_mm=config.working_spacing_mm,
        integration_steps=config.integration_steps,
        similarity=config.similarity,
        training=training,
    )
    model_dir = save_model(model, run_dir / MODEL_SUBDIR)
    network.to(device)
    return TrainResult(model_dir, lam, step, seconds, val, history, stopped_early)


def with_lambda(config: TrainConfig, lam: float) -> TrainConfig:
    """``config`` with lambda fixed at ``lam`` (a grid-search run)."""
    return replace(config, initial_lambda=float(lam), learn_lambda=False)
