"""Tests for lambda learned through a lambda-conditioned network
(medrl.registration.deformable.amortised and the conditioned VelocityUNet).

Tiny volumes (16 voxels a side) and networks, one thread, a few seconds each.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medrl.registration.deformable.amortised import (
    draw_lambda,
    learn_lambda,
    training_scale,
    validation_curve,
)
from medrl.registration.deformable.bilevel import BilevelSettings, outer_loss
from medrl.registration.deformable.model_folder import HEADER, load_model
from medrl.registration.deformable.network import NetworkSettings, VelocityUNet
from medrl.registration.deformable.train import train
from test_registration_deformable import TINY, tiny_pair_set, tiny_train_config

RANGE = (0.1, 1000.0)
CONDITIONED = replace(TINY, lambda_range=RANGE)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _deforming(settings: NetworkSettings, seed: int = 0) -> VelocityUNet:
    """A conditioned network whose output depends on lambda (random FiLM and head)."""
    torch.manual_seed(seed)
    network = VelocityUNet(settings).double()
    assert network.film is not None
    with torch.no_grad():
        network.head.weight.normal_(0.0, 0.05)
        network.film[-1].weight.normal_(0.0, 0.3)
    return network


def test_the_untrained_modulation_is_the_identity_and_lambda_is_required() -> None:
    torch.manual_seed(0)
    conditioned = VelocityUNet(CONDITIONED)
    plain = VelocityUNet(TINY)
    state = {k: v for k, v in conditioned.state_dict().items() if not k.startswith("film.")}
    plain.load_state_dict(state)
    pair = torch.rand(1, 2, 12, 14, 10)
    for lam in (0.1, 3.0, 1000.0):
        assert torch.allclose(conditioned(pair, lam), plain(pair), atol=1e-7)
    with pytest.raises(ValueError, match="lam="):
        conditioned(pair)
    # an unconditioned network ignores lambda
    assert torch.equal(plain(pair, 5.0), plain(pair))
    # once the modulation is learned, lambda changes the field
    network = _deforming(CONDITIONED).float()
    assert not torch.allclose(network(pair, 0.1), network(pair, 1000.0), atol=1e-6)
    with pytest.raises(ValueError, match="lambda_range"):
        NetworkSettings(lambda_range=(10.0, 1.0))


def test_lambda_draws_are_log_uniform_in_the_range_and_repeatable() -> None:
    draws = np.array([draw_lambda(RANGE, 7, step) for step in range(3000)])
    assert draws.min() >= RANGE[0] and draws.max() <= RANGE[1]
    assert draws[11] == draw_lambda(RANGE, 7, 11)
    assert draws[11] != draw_lambda(RANGE, 8, 11)
    code = (np.log(draws) - math.log(RANGE[0])) / math.log(RANGE[1] / RANGE[0])
    assert abs(code.mean() - 0.5) < 0.02 and abs(np.mean(code < 0.25) - 0.25) < 0.03
    assert training_scale(0.0) == 1.0 and math.isclose(training_scale(999.0), 1e-3)


def test_the_outer_gradient_is_the_derivative_of_the_validation_loss() -> None:
    pairs = tiny_pair_set(16, val_pairs=2)
    network = _deforming(CONDITIONED)
    settings = BilevelSettings(tre_weight=1.0, dice_weight=2.0, lambda_lr=0.2)
    lam, trajectory = learn_lambda(network, pairs.val, settings, 5, steps=1, start=2.0)
    assert lam == 2.0 and len(trajectory) == 1

    def loss_at(value: float) -> float:
        with torch.no_grad():
            loss, _ = outer_loss(network, pairs.val, settings, 5, lam=value)
        return float(loss)

    h = 1e-4
    finite = (loss_at(2.0 * math.exp(h)) - loss_at(2.0 * math.exp(-h))) / (2 * h)
    gradient = trajectory[0]["d_val_d_log_lambda"]
    assert abs(gradient) > 1e-6
    assert math.isclose(gradient, finite, rel_tol=1e-3), (gradient, finite)
    assert math.isclose(trajectory[0]["loss"], loss_at(2.0), rel_tol=1e-9)


def test_learned_lambda_is_a_minimum_of_the_validation_curve() -> None:
    pairs = tiny_pair_set(16, val_pairs=2)
    network = _deforming(CONDITIONED, seed=5)  # its minimum lies inside the range
    settings = BilevelSettings(tre_weight=1.0, dice_weight=2.0, lambda_lr=0.2)
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    lam, trajectory = learn_lambda(network, pairs.val, settings, 5, steps=80)
    assert RANGE[0] * 1.5 < lam < RANGE[1] / 1.5
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in weights.items())
    start = trajectory[0]["loss"]
    [here, lower, upper] = validation_curve(
        network, pairs.val, settings, 5, [lam, lam * math.exp(-0.2), lam * math.exp(0.2)]
    )
    assert here["loss"] <= start
    # a minimum: no lower loss nearby, unless lambda sits at the edge of the range
    for side, neighbour in (("low", lower), ("high", upper)):
        at_edge = math.isclose(lam, RANGE[0 if side == "low" else 1], rel_tol=1e-3)
        assert at_edge or neighbour["loss"] >= here["loss"] - 1e-6, (side, lam, trajectory[-3:])


def test_amortised_training_learns_lambda_resumes_and_writes_a_conditioned_model(
    tmp_path: Path,
) -> None:
    pairs = tiny_pair_set(16)
    config = tiny_train_config(
        network=CONDITIONED,
        initial_lambda=10.0,
        bilevel=BilevelSettings(lambda_lr=0.2, amortised_steps=5),
    )
    lines: list[str] = []

    class Log:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    whole = train(config, tmp_path / "whole", pairs, log=Log())  # type: ignore[arg-type]
    assert whole.steps == 6 and whole.history == []  # no unrolled probes
    assert RANGE[0] <= whole.lam <= RANGE[1]
    drawn = {line.split("lambda ")[1].split()[0] for line in lines if "deformable step" in line}
    assert len(drawn) == 3  # every logged step drew its own lambda
    header = json.loads((whole.model_dir / HEADER).read_text())
    assert header["network"]["lambda_range"] == list(RANGE)
    assert header["lambda"] == pytest.approx(whole.lam)
    facts = header["training"]["amortised"]
    assert [row["lambda"] for row in facts["curve"]] == [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0,
                                                         300.0, 1000.0]  # fmt: skip
    assert len(facts["outer"]) == 5
    model = load_model(whole.model_dir)
    assert model.network.conditioned and model.lam == pytest.approx(whole.lam)
    # interrupted after 4 steps, then resumed: the same weights and lambda
    train(replace(config, steps=4), tmp_path / "split", pairs, log=None)
    resumed = train(config, tmp_path / "split", pairs, log=None)
    assert math.isclose(resumed.lam, whole.lam, rel_tol=1e-6)
    other = load_model(resumed.model_dir)
    for key, value in model.network.state_dict().items():
        assert torch.allclose(value, other.network.state_dict()[key], atol=1e-6), key
    # without learn_lambda the model keeps initial_lambda
    fixed = train(replace(config, learn_lambda=False), tmp_path / "fixed", pairs, log=None)
    assert fixed.lam == 10.0
    with pytest.raises(ValueError, match="outside"):
        replace(config, initial_lambda=5000.0)
