"""Learning the regularisation weight lambda by bilevel optimisation, and its grid-search rival.

The inner problem trains the network weights ``w`` on training pairs::

    L_train(w, lambda) = similarity(fixed, moving o phi_w) + lambda * diffusion(v_w)

The outer problem chooses ``lambda`` to minimise a validation loss of the trained weights,
measured on held-out pairs against truth the inner problem never sees::

    L_val(w) = tre_weight * mean landmark TRE (mm) + dice_weight * (1 - mean soft label Dice)

The hypergradient ``d L_val / d log(lambda)`` is taken through ``K`` unrolled inner steps
(truncated unrolling): starting from the current weights, ``K`` preconditioned gradient steps
``w_{k+1} = w_k - lr * grad_w L_train(w_k, lambda) / s`` are written functionally
(:func:`torch.func.functional_call`) with ``create_graph=True``, so that autograd follows
lambda through every update into ``L_val(w_K)``. During training ``lr`` and ``s`` are the
inner Adam's learning rate and current ``sqrt(second moment) + eps``, held constant (Adam
without momentum: steps of the real optimiser's size); without them (``s = 1``) it is plain
SGD at ``unroll_lr``. :mod:`medrl.registration.deformable.train`
alternates inner phases (Adam on ``w`` at the current lambda, ``outer_every`` steps) with outer
steps (Adam on ``log(lambda)`` with this hypergradient); the unrolled copy is only a probe and
is discarded. Known limitation: a short horizon ``K`` biases the hypergradient towards what
helps within ``K`` steps (Wu et al. 2018, "short-horizon bias").

:func:`grid_search` is the plain alternative: train once per fixed lambda with the same inner
budget and keep the lambda of the lowest validation loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from medrl.registration.deformable.integrate import (
    integrate_velocity,
    twice_differentiable,
    warp,
    warp_points,
)
from medrl.registration.deformable.losses import (
    NCC_WINDOW_VOX,
    diffusion_loss,
    landmark_distances_mm,
    one_hot,
    similarity_loss,
    soft_dice,
)
from medrl.registration.deformable.pairs import Pair

__all__ = [
    "BilevelSettings",
    "Crop",
    "GridRow",
    "HyperGradient",
    "Preconditioner",
    "adam_preconditioner",
    "grid_search",
    "hypergradient",
    "inner_loss",
    "label_dice",
    "outer_loss",
    "predict",
    "similarity_for",
    "unrolled_validation",
]

Crop = tuple[slice, slice, slice]
"""A (z, y, x) box of the working grid."""


@dataclass(frozen=True)
class BilevelSettings:
    """The outer problem and its optimisation."""

    outer_every: int = 20
    """Inner (Adam) steps between two outer steps."""
    unroll_steps: int = 3
    """K: unrolled inner SGD steps the hypergradient flows through."""
    unroll_lr: float = 0.05
    """Learning rate of unrolled plain SGD steps, used only without an Adam preconditioner
    (training passes its Adam's learning rate and second moments instead)."""
    lambda_lr: float = 0.05
    """Adam learning rate on log(lambda): about the change of log(lambda) per outer step."""
    tre_weight: float = 1.0
    """Outer loss per mm of mean landmark TRE (validation pairs with landmarks)."""
    dice_weight: float = 5.0
    """Outer loss per unit of (1 - mean soft Dice) (validation pairs with labels; see
    :func:`label_dice`)."""
    min_lambda: float = 1e-3
    max_lambda: float = 1e3
    amortised_steps: int = 100
    """Outer Adam steps on log(lambda) after training a lambda-conditioned network
    (:mod:`.amortised`)."""
    dice_margin_vox: int = 8
    """Labels are compared in their bounding box grown by this margin (saves memory)."""


@dataclass(frozen=True)
class HyperGradient:
    """One outer probe: the validation loss after the unrolled steps and its derivative."""

    val_loss: float
    d_val_d_log_lambda: float
    parts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GridRow:
    """One fixed lambda of a grid search."""

    lam: float
    val_loss: float
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)


def similarity_for(similarity: str, pair: Pair) -> str:
    """The similarity of a pair: ``"auto"`` is NCC for one contrast, MIND-SSC across two."""
    if similarity == "auto":
        return "ncc" if pair.same_contrast else "mind"
    if similarity not in ("ncc", "mind"):
        raise ValueError(f"unknown similarity {similarity!r} (known: 'ncc', 'mind', 'auto')")
    return similarity


def _reference(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def predict(
    model: nn.Module,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    integration_steps: int,
    params: dict[str, torch.Tensor] | None = None,
    lam: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(velocity, displacement) of the pair (both (1, 3, D, H, W) working voxels); with
    ``params`` the network runs with those weights (functional call); ``lam`` is what a
    lambda-conditioned network predicts for (ignored by others)."""
    reference = _reference(model)
    pair = torch.cat([fixed, moving], dim=1).to(reference.device, reference.dtype)
    arguments = (pair, lam)
    velocity = model(*arguments) if params is None else functional_call(model, params, arguments)
    return velocity, integrate_velocity(velocity, integration_steps)


def inner_loss(
    model: nn.Module,
    pair: Pair,
    lam: float | torch.Tensor,
    similarity: str,
    integration_steps: int,
    *,
    params: dict[str, torch.Tensor] | None = None,
    crop: Crop | None = None,
    window: int = NCC_WINDOW_VOX,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``similarity + lambda * diffusion`` on a pair (optionally a ``crop`` of it)."""
    reference = _reference(model)
    box = (slice(None), slice(None), *(crop or (slice(None),) * 3))
    fixed = pair.fixed[box].to(reference.device, reference.dtype)
    moving = pair.moving[box].to(reference.device, reference.dtype)
    velocity, displacement = predict(model, fixed, moving, integration_steps, params, lam)
    warped = warp(moving, displacement)
    sim = similarity_loss(similarity_for(similarity, pair), fixed, warped, window)
    smooth = diffusion_loss(velocity)
    loss = sim + lam * smooth
    return loss, {"similarity": float(sim.detach()), "smoothness": float(smooth.detach())}


def label_dice(displacement: torch.Tensor, pair: Pair, margin: int) -> torch.Tensor:
    """Soft Dice of the pair's moving labels (one-hot, warped trilinearly by ``displacement``)
    against the truth, inside the labels' bounding box grown by ``margin`` voxels.

    With a known true displacement (synthetic pairs) the truth is the moving one-hot warped the
    same way by the true field and the Dice has squared denominators (V-Net's
    ``2 sum(ab) / (sum(a^2) + sum(b^2))``): exactly 1 at the true field, so trilinear blur is not
    mistaken for misalignment. Otherwise the truth is the one-hot fixed labels (plain soft
    Dice), which slightly favours whole-voxel shifts for structures of a few voxels."""
    assert pair.fixed_labels is not None and pair.moving_labels is not None
    present = (pair.fixed_labels > 0) | (pair.moving_labels > 0)
    nonzero = present.nonzero()
    if len(nonzero) == 0:
        return torch.ones((), device=displacement.device, dtype=displacement.dtype)
    lo = (nonzero.min(0).values - margin).clamp(min=0)
    hi = nonzero.max(0).values + margin + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    field_box = (slice(None), slice(None), *box)
    device, dtype = displacement.device, displacement.dtype
    fixed_box, moving_box = pair.fixed_labels[box], pair.moving_labels[box]
    if pair.true_displacement_vox is not None:
        values = sorted(set(torch.unique(moving_box).tolist()) - {0})
        moving_hot = one_hot(moving_box.to(device), values).to(dtype)
        truth = warp(moving_hot, pair.true_displacement_vox.to(device, dtype)[field_box])
        return soft_dice(warp(moving_hot, displacement[field_box]), truth, squared=True)
    values = sorted(set(torch.unique(fixed_box).tolist()) - {0})
    moving_hot = one_hot(moving_box.to(device), values).to(dtype)
    truth = one_hot(fixed_box.to(device), values).to(dtype)
    return soft_dice(warp(moving_hot, displacement[field_box]), truth)


def outer_loss(
    model: nn.Module,
    val_pairs: Sequence[Pair],
    settings: BilevelSettings,
    integration_steps: int,
    params: dict[str, torch.Tensor] | None = None,
    lam: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The validation loss (differentiable in ``params``, and in ``lam`` for a
    lambda-conditioned network) and its parts: mean TRE (mm) over the pairs with landmarks,
    mean soft Dice over the pairs with labels."""
    reference = _reference(model)
    tres, dices = [], []
    for pair in val_pairs:
        _, displacement = predict(model, pair.fixed, pair.moving, integration_steps, params, lam)
        if pair.fixed_points_vox is not None and pair.moving_points_vox is not None:
            fixed_points = pair.fixed_points_vox.to(reference.device, reference.dtype)
            target = pair.moving_points_vox.to(reference.device, reference.dtype)
            moved = warp_points(fixed_points, displacement)
            tres.append(landmark_distances_mm(moved, target, pair.spacing_mm).mean())
        if pair.fixed_labels is not None and pair.moving_labels is not None:
            dices.append(label_dice(displacement, pair, settings.dice_margin_vox))
    loss = torch.zeros((), device=reference.device, dtype=reference.dtype)
    parts: dict[str, float] = {}
    if tres:
        tre = torch.stack(tres).mean()
        loss = loss + settings.tre_weight * tre
        parts["tre_mm"] = float(tre.detach())
    if dices:
        dice = torch.stack(dices).mean()
        loss = loss + settings.dice_weight * (1.0 - dice)
        parts["dice"] = float(dice.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


Preconditioner = dict[str, torch.Tensor]
"""Per parameter name, the divisor of the gradient in an unrolled step (e.g. Adam's
``sqrt(second moment) + eps``); held constant."""


ADAM_STEP_BOUND = 1.0 / math.sqrt(1.0 - 0.999)
"""Largest ``|g| / s`` of an unrolled preconditioned step (about 31.6): a real Adam step
(beta2 = 0.999) never moves a weight by more than about ``lr / sqrt(1 - beta2)``, because the
current gradient is part of its second moment. The unrolled steps hold the second moments
fixed, so a weight whose history had tiny gradients would otherwise take an unbounded step."""


def adam_preconditioner(model: nn.Module, optimizer: torch.optim.Adam) -> Preconditioner | None:
    """``sqrt(v_hat) + eps`` of each parameter from an Adam optimiser's state (None before its
    first step): the step sizes of the real inner optimiser, for the unrolled steps."""
    group = optimizer.param_groups[0]
    _, beta2 = group["betas"]
    out = {}
    for name, parameter in model.named_parameters():
        state = optimizer.state.get(parameter)
        if not state or "exp_avg_sq" not in state:
            return None
        step = float(state["step"])
        second = state["exp_avg_sq"] / (1.0 - beta2**step)
        out[name] = (second.sqrt() + group["eps"]).detach()
    return out


def _unroll(
    model: nn.Module,
    lam: float | torch.Tensor,
    batches: Sequence[tuple[Pair, Crop | None]],
    similarity: str,
    integration_steps: int,
    lr: float,
    preconditioner: Preconditioner | None,
    create_graph: bool,
) -> dict[str, torch.Tensor]:
    """The weights after the unrolled steps on ``batches`` from the model's current weights:
    ``w - lr * g / s`` (``s`` from ``preconditioner``, else 1; ``g / s`` clipped to
    :data:`ADAM_STEP_BOUND` with a preconditioner, as a real Adam step is bounded)."""
    params = {name: p.detach().requires_grad_(True) for name, p in model.named_parameters()}
    for pair, crop in batches:
        loss, _ = inner_loss(
            model, pair, lam, similarity, integration_steps, params=params, crop=crop
        )
        grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph)
        updated = {}
        for (name, p), g in zip(params.items(), grads, strict=True):
            if preconditioner is None:
                step = g
            else:
                step = (g / preconditioner[name].to(g.dtype)).clamp(
                    -ADAM_STEP_BOUND, ADAM_STEP_BOUND
                )
            updated[name] = p - lr * step
        params = updated
        if not create_graph:
            params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    return params


def hypergradient(
    model: nn.Module,
    log_lambda: torch.Tensor,
    batches: Sequence[tuple[Pair, Crop | None]],
    val_pairs: Sequence[Pair],
    settings: BilevelSettings,
    similarity: str,
    integration_steps: int,
    *,
    lr: float | None = None,
    preconditioner: Preconditioner | None = None,
) -> HyperGradient:
    """``d L_val(w_K) / d log(lambda)`` through ``len(batches)`` unrolled steps (one per
    batch) from the model's current weights; the model itself is not changed. ``lr`` and
    ``preconditioner``: the step (default: plain SGD at ``settings.unroll_lr``)."""
    log_lambda = log_lambda.detach().to(_reference(model).dtype).requires_grad_(True)
    with twice_differentiable():  # second derivatives through the sampling, on any device
        params = _unroll(
            model,
            log_lambda.exp(),
            batches,
            similarity,
            integration_steps,
            settings.unroll_lr if lr is None else lr,
            preconditioner,
            create_graph=True,
        )
        loss, parts = outer_loss(model, val_pairs, settings, integration_steps, params)
        (gradient,) = torch.autograd.grad(loss, log_lambda, allow_unused=True)
    value = 0.0 if gradient is None else float(gradient)
    return HyperGradient(float(loss.detach()), value, parts)


def unrolled_validation(
    model: nn.Module,
    lam: float,
    batches: Sequence[tuple[Pair, Crop | None]],
    val_pairs: Sequence[Pair],
    settings: BilevelSettings,
    similarity: str,
    integration_steps: int,
    *,
    lr: float | None = None,
    preconditioner: Preconditioner | None = None,
) -> float:
    """The validation loss after the same unrolled steps as :func:`hypergradient`, without
    the second-order graph (for finite differences in lambda)."""
    params = _unroll(
        model,
        lam,
        batches,
        similarity,
        integration_steps,
        settings.unroll_lr if lr is None else lr,
        preconditioner,
        create_graph=False,
    )
    with torch.no_grad():
        loss, _ = outer_loss(model, val_pairs, settings, integration_steps, params)
    return float(loss)


def grid_search(
    lambdas: Sequence[float], train_one: Callable[[float], tuple[float, dict[str, Any]]]
) -> list[GridRow]:
    """Train once per fixed lambda (``train_one(lam) -> (validation loss, facts)``, the same
    inner budget each) and time it; rows in the order of ``lambdas``."""
    rows = []
    for lam in lambdas:
        if not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"lambda must be positive, got {lam}")
        started = time.perf_counter()
        val_loss, facts = train_one(float(lam))
        rows.append(GridRow(float(lam), float(val_loss), time.perf_counter() - started, facts))
    return rows
