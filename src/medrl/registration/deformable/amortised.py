"""Learning lambda through one network trained for every lambda (amortised bilevel learning).

The bilevel problem of :mod:`.bilevel` chooses lambda to minimise a validation loss of the
weights trained at that lambda, ``L_val(w*(lambda))``. Instead of following the inner training
steps (truncated unrolling), the inner problem can be solved for every lambda at once: a
lambda-conditioned network (:class:`.network.VelocityUNet` with ``lambda_range``) is trained
on ``similarity + lambda * diffusion`` with lambda drawn afresh at every step, log-uniformly
over the range, so that ``w(lambda)`` approximates ``w*(lambda)`` across it (Hoopes et al.,
"HyperMorph", IPMI 2021; Mok & Chung, MICCAI 2021). The training loss is divided by
``1 + lambda`` (the same minimiser for each lambda), so steps at large lambda do not dwarf the
others in the shared optimiser.

The outer problem is then solved by gradient descent on ``log(lambda)`` with the exact gradient
of ``L_val(w(lambda))`` through the network (:func:`learn_lambda`): one training run plus a
few hundred cheap validation passes, where a grid search trains one network per value.
:func:`validation_curve` evaluates the same network on a list of lambdas (the grid search's
values, at no training cost), to show where the learned lambda lands.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medrl.registration.deformable.bilevel import BilevelSettings, outer_loss
from medrl.registration.deformable.network import VelocityUNet
from medrl.registration.deformable.pairs import Pair

__all__ = [
    "CURVE_LAMBDAS",
    "amortised_lambda",
    "draw_lambda",
    "learn_lambda",
    "training_scale",
    "validation_curve",
]

CURVE_LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
"""Lambdas at which a conditioned network's validation loss is recorded (those in its range)."""


def draw_lambda(lambda_range: tuple[float, float], seed: int, step: int) -> float:
    """The lambda of one inner step: log-uniform over ``lambda_range``, a function of
    (seed, step) only (so a resumed run draws the same values)."""
    low, high = (math.log(v) for v in lambda_range)
    u = float(np.random.default_rng([seed, 2, step]).random())
    return math.exp(low + u * (high - low))


def training_scale(lam: float) -> float:
    """The factor ``1 / (1 + lambda)`` of the amortised training loss (module docstring)."""
    return 1.0 / (1.0 + lam)


def _require_conditioned(network: VelocityUNet) -> tuple[float, float]:
    lambda_range = network.settings.lambda_range
    if lambda_range is None:
        raise ValueError("the network is not conditioned on lambda (NetworkSettings.lambda_range)")
    return lambda_range


def learn_lambda(
    network: VelocityUNet,
    val_pairs: Sequence[Pair],
    settings: BilevelSettings,
    integration_steps: int,
    *,
    steps: int,
    start: float | None = None,
) -> tuple[float, list[dict[str, float]]]:
    """Adam on ``log(lambda)`` (learning rate ``settings.lambda_lr``) against the validation
    loss of the conditioned ``network``, ``steps`` steps from ``start`` (default: the middle
    of the range in log scale), kept inside the range. The network's weights are not changed.
    Returns the lambda of the lowest validation loss met and every step's facts."""
    low, high = _require_conditioned(network)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    first = math.sqrt(low * high) if start is None else float(start)
    if not (low <= first <= high):
        raise ValueError(f"start lambda {first} lies outside the network's range {low}..{high}")
    reference = next(network.parameters())
    log_lam = torch.nn.Parameter(torch.tensor(math.log(first), dtype=reference.dtype))
    optimizer = torch.optim.Adam([log_lam], lr=settings.lambda_lr)
    was_training = network.training
    network.eval()
    history: list[dict[str, float]] = []
    best_loss, best_lam = math.inf, first
    try:
        for step in range(steps):
            lam = float(log_lam.detach().exp())
            loss, parts = outer_loss(
                network, val_pairs, settings, integration_steps, lam=log_lam.exp()
            )
            (gradient,) = torch.autograd.grad(loss, log_lam)
            history.append(
                {"step": step, "lambda": lam, "d_val_d_log_lambda": float(gradient), **parts}
            )
            if parts["loss"] < best_loss:
                best_loss, best_lam = parts["loss"], lam
            optimizer.zero_grad(set_to_none=True)
            log_lam.grad = gradient
            optimizer.step()
            with torch.no_grad():
                log_lam.clamp_(math.log(low), math.log(high))
    finally:
        network.train(was_training)
    return best_lam, history


def validation_curve(
    network: VelocityUNet,
    val_pairs: Sequence[Pair],
    settings: BilevelSettings,
    integration_steps: int,
    lambdas: Sequence[float],
) -> list[dict[str, float]]:
    """The validation loss and its parts of the conditioned ``network`` at each lambda."""
    _require_conditioned(network)
    rows = []
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for lam in lambdas:
                _, parts = outer_loss(network, val_pairs, settings, integration_steps, lam=lam)
                rows.append({"lambda": float(lam), **parts})
    finally:
        network.train(was_training)
    return rows


def amortised_lambda(
    network: VelocityUNet,
    val_pairs: Sequence[Pair],
    settings: BilevelSettings,
    integration_steps: int,
    *,
    learn: bool,
    initial_lambda: float,
    say: Callable[[str], None] = lambda line: None,
) -> tuple[float, dict[str, Any]]:
    """The lambda of a trained conditioned network: learned through it on ``val_pairs``
    (``learn``, :func:`learn_lambda` with ``settings.amortised_steps`` steps) or
    ``initial_lambda``; and the facts: the range, the validation curve at
    :data:`CURVE_LAMBDAS`, the outer trajectory and the seconds it all took."""
    low, high = _require_conditioned(network)
    started = time.perf_counter()
    curve = validation_curve(
        network,
        val_pairs,
        settings,
        integration_steps,
        [v for v in CURVE_LAMBDAS if low <= v <= high],
    )
    facts: dict[str, Any] = {"lambda_range": [low, high], "curve": curve}
    lam = initial_lambda
    if learn:
        lam, trajectory = learn_lambda(
            network, val_pairs, settings, integration_steps, steps=settings.amortised_steps
        )
        facts["outer"] = [{k: round(float(v), 6) for k, v in row.items()} for row in trajectory]
    facts["outer_seconds"] = round(time.perf_counter() - started, 1)
    for row in curve:
        say(f"deformable: lambda {row['lambda']:g}: validation loss {row['loss']:.4f}")
    say(f"deformable: lambda {lam:.4g} ({'learned' if learn else 'fixed'})")
    return lam, facts
