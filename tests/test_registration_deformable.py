"""Tests for medrl.registration.deformable: integration, warping, losses, synthetic warps,
bilevel hypergradient, training loop, model folders and the registered ``"deformable"`` method.

Small volumes only (16-32 voxels a side, or a template at 8 mm), one thread, a few seconds each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medrl.baselines.registration import affine_registration
from medrl.errors import CheckpointError
from medrl.io.images import Volume
from medrl.registration.base import METHODS, RegisterOptions
from medrl.registration.deformable.bilevel import (
    ADAM_STEP_BOUND,
    BilevelSettings,
    _unroll,
    grid_search,
    hypergradient,
    inner_loss,
    outer_loss,
    unrolled_validation,
)
from medrl.registration.deformable.evaluation import dice_by_label, hd95_mm, landmark_tre_mm
from medrl.registration.deformable.frames import affine_parts
from medrl.registration.deformable.integrate import (
    compose,
    identity_grid,
    integrate_velocity,
    trilinear,
    twice_differentiable,
    warp,
    warp_points,
)
from medrl.registration.deformable.losses import (
    diffusion_loss,
    folding_share,
    jacobian_determinant,
    local_ncc_loss,
    mind_loss,
    soft_dice,
)
from medrl.registration.deformable.method import deformable_fields, register_deformable
from medrl.registration.deformable.model_folder import (
    HEADER,
    WEIGHTS,
    DeformableModel,
    load_model,
    save_model,
)
from medrl.registration.deformable.network import NetworkSettings, VelocityUNet
from medrl.registration.deformable.pairs import PairSet, Source, synthetic_pair
from medrl.registration.deformable.synthetic import (
    SyntheticWarpSettings,
    apply_warp,
    random_warp,
)
from medrl.registration.deformable.train import (
    CHECKPOINT,
    TrainConfig,
    _exploded,
    draw_batch,
    train,
)

TINY = NetworkSettings(channels=(4, 8))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def phantom(size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A smooth image (1, 1, D, H, W) in [0, 1], its labels (D, H, W) (4 large blobs) and the
    blob centres (4, 3) in voxels (x, y, z)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(size, dtype=np.float64),) * 3, indexing="ij")
    centres = rng.uniform(0.3 * size, 0.7 * size, (4, 3))
    centres[:, 0] = [0.3 * size, 0.7 * size, 0.3 * size, 0.7 * size]
    centres[:, 1] = [0.3 * size, 0.3 * size, 0.7 * size, 0.7 * size]
    image = 0.2 * np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2 + (z - size / 2) ** 2) / 120)
    labels = np.zeros((size,) * 3, dtype=np.int64)
    for value, (cx, cy, cz) in enumerate(centres, start=1):
        r2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
        image += (0.3 + 0.15 * value) * np.exp(-r2 / (2 * (0.09 * size) ** 2))
        labels[r2 < (0.12 * size) ** 2] = value
    tensor = torch.from_numpy(image / image.max()).float()[None, None]
    return tensor, torch.from_numpy(labels), torch.from_numpy(centres).float()


def smooth_velocity(size: int, seed: int, max_mm: float = 3.0) -> torch.Tensor:
    settings = SyntheticWarpSettings(control_spacing_mm=12.0, max_velocity_mm=max_mm)
    return random_warp((size,) * 3, 1.0, seed, settings).velocity_vox


# ------------------------------------------------------------------ integration and warping
def test_zero_velocity_integrates_to_identity() -> None:
    velocity = torch.zeros(1, 3, 10, 12, 14)
    assert torch.equal(integrate_velocity(velocity, 7), torch.zeros_like(velocity))
    image = torch.rand(1, 1, 10, 12, 14)
    assert torch.allclose(warp(image, torch.zeros_like(velocity)), image, atol=1e-6)


def test_constant_velocity_integrates_to_its_translation() -> None:
    shift = torch.tensor([1.5, -0.75, 2.25])
    velocity = shift.view(1, 3, 1, 1, 1).expand(1, 3, 12, 14, 16).clone()
    displacement = integrate_velocity(velocity, 7)
    assert torch.allclose(displacement, velocity, atol=1e-5)
    # and it moves images and points by that shift: warped(p) = image(p + shift)
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 1, 16).expand(1, 1, 12, 14, 16)
    warped = warp(image, displacement, padding_mode="border")
    assert torch.allclose(warped[0, 0, 5, 5, 3:10], image[0, 0, 5, 5, 3:10] + 1.5, atol=1e-4)
    points = torch.tensor([[4.0, 5.0, 6.0], [7.5, 3.25, 2.0]])
    assert torch.allclose(warp_points(points, displacement), points + shift, atol=1e-5)


def test_warp_by_field_then_inverse_field_returns_the_original() -> None:
    image, _, _ = phantom(32)
    velocity = smooth_velocity(32, seed=3, max_mm=4.0)
    forward, inverse = integrate_velocity(velocity), integrate_velocity(-velocity)
    assert float(forward.norm(dim=1).max()) > 2.0  # a real warp, not a no-op
    there = warp(image, forward, padding_mode="border")
    back = warp(there, inverse, padding_mode="border")
    inside = (slice(None), slice(None), *(slice(6, -6),) * 3)
    moved, returned = (there - image)[inside].abs(), (back - image)[inside].abs()
    assert float(moved.max()) > 0.1
    # back close to the original, up to the blur of resampling twice
    assert float(returned.mean()) < 0.2 * float(moved.mean())
    assert float(returned.max()) < 0.3 * float(moved.max())
    # exp(v) o exp(-v) is the identity up to the integration error: resampled once, exact
    roundtrip = compose(forward, inverse)
    assert float(roundtrip[inside].abs().max()) < 0.02
    once = warp(image, roundtrip, padding_mode="border")
    assert float((once - image)[inside].abs().max()) < 0.005


# ------------------------------------------------------------------------------- losses
def test_ncc_of_an_image_with_itself_is_the_minimum() -> None:
    image, _, _ = phantom(24)
    generator = torch.Generator().manual_seed(0)
    itself = float(local_ncc_loss(image, image))
    assert itself < -0.99
    others = {
        "noisy": image + 0.05 * torch.randn(image.shape, generator=generator),
        "shifted": torch.roll(image, shifts=2, dims=4),
        "squared": image**2,
        "inverted": 1.0 - image,  # same |cc|: ties, never below
    }
    for name, other in others.items():
        assert float(local_ncc_loss(image, other)) >= itself - 1e-4, name
    assert float(local_ncc_loss(image, others["shifted"])) > itself + 0.01
    assert float(mind_loss(image, image)) == 0.0
    assert float(mind_loss(image, others["shifted"])) > 0.0
    # MIND is contrast-independent: an inverted image is closer than a shifted one
    assert float(mind_loss(image, others["inverted"])) < float(mind_loss(image, others["shifted"]))


def test_jacobian_of_a_linear_field_is_its_determinant() -> None:
    matrix = torch.tensor([[0.10, 0.05, -0.02], [0.00, -0.20, 0.07], [0.03, 0.01, 0.15]])
    points = identity_grid((9, 10, 11))  # (1, 3, D, H, W) voxel (x, y, z)
    displacement = torch.einsum("ab,nbdhw->nadhw", matrix, points)
    determinant = jacobian_determinant(displacement)
    expected = float(torch.linalg.det(torch.eye(3) + matrix))
    assert torch.allclose(determinant, torch.full_like(determinant, expected), atol=1e-5)
    assert folding_share(displacement) == 0.0
    folding = torch.einsum("ab,nbdhw->nadhw", torch.diag(torch.tensor([-1.5, 0.0, 0.0])), points)
    assert folding_share(folding) == 1.0
    assert float(diffusion_loss(displacement)) > 0
    assert float(diffusion_loss(torch.ones(1, 3, 5, 5, 5))) == 0.0


def test_soft_dice_and_hard_scores() -> None:
    a = torch.zeros(1, 2, 8, 8, 8)
    a[:, 0, :4] = 1
    a[:, 1, 4:] = 1
    assert math.isclose(float(soft_dice(a, a)), 1.0, abs_tol=1e-6)
    b = torch.roll(a, 2, dims=2)
    assert 0.0 < float(soft_dice(b, a)) < 1.0
    labels = np.zeros((10, 10, 10), dtype=int)
    labels[2:6, 2:6, 2:6] = 1
    moved = np.roll(labels, 2, axis=0)
    assert dice_by_label(labels, labels) == {1: 1.0}
    assert math.isclose(dice_by_label(moved, labels)[1], 0.5)
    assert math.isclose(hd95_mm(moved == 1, labels == 1, [2.0, 1.0, 1.0]), 4.0)
    assert hd95_mm(labels == 1, labels == 1, [1.0, 1.0, 1.0]) == 0.0


# ------------------------------------------------------------------------- synthetic warps
def test_synthetic_warps_move_labels_and_landmarks_consistently() -> None:
    image, labels, centres = phantom(32)
    settings = SyntheticWarpSettings(control_spacing_mm=16.0, max_velocity_mm=5.0)
    first = random_warp((32, 32, 32), 2.0, seed=11, settings=settings)
    again = random_warp((32, 32, 32), 2.0, seed=11, settings=settings)
    other = random_warp((32, 32, 32), 2.0, seed=12, settings=settings)
    assert torch.equal(first.displacement_vox, again.displacement_vox)  # seeded
    assert not torch.equal(first.displacement_vox, other.displacement_vox)
    assert 2.0 <= first.max_displacement_mm <= 6.0  # a few mm
    assert folding_share(first.displacement_vox) == 0.0  # diffeomorphic
    # landmarks: the blob centres and points well inside each blob
    offsets = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, -1.5, 1.0]])
    points = (centres[:, None, :] + offsets[None]).reshape(-1, 3)
    made = apply_warp(first, image, labels, points)
    assert made.fixed_points_vox is not None and made.moving_points_vox is not None
    assert made.fixed_labels is not None
    moved = (made.fixed_points_vox - points).norm(dim=1)
    assert float(moved.max()) > 1.0  # the landmarks did move
    # each moved landmark lands on the label value it had
    index = made.fixed_points_vox.round().long()
    found = made.fixed_labels[index[:, 2], index[:, 1], index[:, 0]]
    expected = labels[
        points[:, 2].round().long(), points[:, 1].round().long(), points[:, 0].round().long()
    ]
    assert torch.equal(found, expected)
    # the truth is exact: phi(fixed landmark) is the moving landmark, ~ the original point
    assert torch.allclose(
        warp_points(made.fixed_points_vox, first.displacement_vox), made.moving_points_vox
    )
    assert float((made.moving_points_vox - points).norm(dim=1).max()) < 0.1
    # and the true field registers the pair: moving o phi == fixed
    assert torch.allclose(warp(image, first.displacement_vox, padding_mode="border"), made.fixed)


# -------------------------------------------------------------------- training and bilevel
def tiny_pair_set(size: int = 20, val_pairs: int = 2) -> PairSet:
    image, labels, centres = phantom(size)
    second, _, _ = phantom(size, seed=1)
    settings = SyntheticWarpSettings(control_spacing_mm=10.0, max_velocity_mm=5.0)
    sources = [
        Source("a", {"T1w": image}, labels, centres, 2.0),
        Source("b", {"T1w": second}, labels, centres, 2.0),
    ]
    val = [synthetic_pair(sources[i % 2], 1000 + i, settings) for i in range(val_pairs)]
    return PairSet([], sources, val, 2.0, {"tiny": True})


def test_a_few_training_steps_reduce_the_loss() -> None:
    image, labels, centres = phantom(20)
    source = Source("phantom", {"T1w": image}, labels, centres, 2.0)
    pair = synthetic_pair(source, 5, SyntheticWarpSettings(control_spacing_mm=12.0))
    torch.manual_seed(0)
    network = VelocityUNet(TINY)
    optimizer = torch.optim.Adam(network.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        loss, _ = inner_loss(network, pair, 0.1, "ncc", 5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # NCC loss is >= -1: the gap to a perfect match shrinks by at least a fifth
    assert losses[-1] + 1.0 < 0.8 * (losses[0] + 1.0), losses
    # and the validation TRE against the known warp improved too
    settings = BilevelSettings(dice_weight=0.0)
    with torch.no_grad():
        _, trained = outer_loss(network, [pair], settings, 5)
        _, untrained = outer_loss(VelocityUNet(TINY), [pair], settings, 5)
    assert trained["tre_mm"] < untrained["tre_mm"]


def test_hypergradient_matches_a_finite_difference_in_lambda() -> None:
    pairs = tiny_pair_set(16, val_pairs=2)
    torch.manual_seed(1)
    network = VelocityUNet(TINY).double()
    with torch.no_grad():  # a network that already deforms (else lambda barely matters)
        network.head.weight.normal_(0.0, 0.05)
    settings = BilevelSettings(unroll_steps=2, unroll_lr=0.5, tre_weight=1.0, dice_weight=2.0)
    config = TrainConfig(seed=0, crop_vox=None, synthetic=SyntheticWarpSettings(10.0, 5.0))
    batches = [draw_batch(pairs, config, k, stream=1) for k in range(settings.unroll_steps)]
    lam = 0.5
    generator = torch.Generator().manual_seed(2)
    adam_like = {  # a fixed per-weight step divisor, as the Adam preconditioner gives
        name: 0.5 + torch.rand(p.shape, generator=generator, dtype=torch.float64)
        for name, p in network.named_parameters()
    }
    for step in ({}, {"lr": 0.3, "preconditioner": adam_like}):
        probe = hypergradient(
            network, torch.tensor(math.log(lam)), batches, pairs.val, settings, "ncc", 5, **step
        )

        def validation(value: float, step: dict = step) -> float:
            return unrolled_validation(
                network, value, batches, pairs.val, settings, "ncc", 5, **step
            )

        h = 1e-3
        finite = (validation(lam * math.exp(h)) - validation(lam * math.exp(-h))) / (2 * h)
        assert abs(probe.d_val_d_log_lambda) > 1e-6, probe
        assert math.copysign(1, probe.d_val_d_log_lambda) == math.copysign(1, finite)
        assert math.isclose(probe.d_val_d_log_lambda, finite, rel_tol=0.02), (probe, finite)
        # the probe leaves the network as it was
        assert math.isclose(probe.val_loss, validation(lam), rel_tol=1e-9)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_gather_trilinear_matches_grid_sample_and_is_twice_differentiable(padding: str) -> None:
    # CUDA has no derivative of grid_sampler_3d_backward, so the hypergradient samples with
    # gathers: the values and first derivatives must be grid_sample's, second ones must exist.
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 2, 4, 5, 6, generator=generator, dtype=torch.float64)
    displacement = 1.5 * torch.randn(1, 3, 4, 5, 6, generator=generator, dtype=torch.float64)
    image.requires_grad_(True)
    displacement.requires_grad_(True)
    reference = warp(image, displacement, padding_mode=padding)
    with twice_differentiable():
        gathered = warp(image, displacement, padding_mode=padding)
    assert torch.allclose(gathered, reference, atol=1e-12)
    weights = torch.rand(reference.shape, generator=generator, dtype=torch.float64)
    first_ref = torch.autograd.grad((reference * weights).sum(), (image, displacement))
    first = torch.autograd.grad(
        (gathered * weights).sum(), (image, displacement), create_graph=True
    )
    for ours, theirs in zip(first, first_ref, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-10)

    # second order: gradgradcheck against finite differences (positions off the voxel lattice)
    def sample(img: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        return trilinear(img, identity_grid((4, 5, 6), dtype=torch.float64) + disp, padding)

    small = 0.3 * torch.randn(1, 3, 4, 5, 6, generator=generator, dtype=torch.float64) + 0.37
    assert torch.autograd.gradgradcheck(sample, (image, small.requires_grad_(True)))
    # points (sample_field) too
    points = torch.tensor([[0.3, 1.7, 2.2], [5.5, -0.4, 3.9]], dtype=torch.float64)
    with twice_differentiable():
        moved = warp_points(points, displacement.detach())
    assert torch.allclose(moved, warp_points(points, displacement.detach()), atol=1e-12)


def test_unrolled_adam_steps_are_bounded_like_real_adam_steps() -> None:
    # A weight whose gradients were tiny so far has a tiny second moment; held fixed, it used to
    # turn the next ordinary gradient into a step of lr * 1e9 (a probe diverged to a TRE of
    # 5.8e5 mm in a 4 mm training run). Real Adam bounds the step by about lr / sqrt(1 - beta2).
    pairs = tiny_pair_set(16, val_pairs=1)
    torch.manual_seed(0)
    network = VelocityUNet(TINY)
    with torch.no_grad():
        network.head.weight.normal_(0.0, 0.05)
    config = TrainConfig(seed=0, crop_vox=None, synthetic=SyntheticWarpSettings(10.0, 5.0))
    batches = [draw_batch(pairs, config, 0, stream=1)]
    tiny = {name: torch.full_like(p, 1e-9) for name, p in network.named_parameters()}
    lr = 1e-3
    params = _unroll(network, 1.0, batches, "ncc", 5, lr, tiny, create_graph=False)
    moves = [
        float((params[name] - p).detach().abs().max()) for name, p in network.named_parameters()
    ]
    assert max(moves) <= lr * ADAM_STEP_BOUND * (1 + 1e-5), max(moves)
    assert max(moves) >= 0.5 * lr * ADAM_STEP_BOUND  # the bound is reached, not a no-op
    # without a preconditioner (plain SGD) nothing is clipped
    plain = _unroll(network, 1.0, batches, "ncc", 5, lr, None, create_graph=False)
    assert all(torch.isfinite(v).all() for v in plain.values())


def test_a_diverged_outer_probe_does_not_update_lambda() -> None:
    history = [{"val_loss_unrolled": 1.3, "skipped": False}]
    assert _exploded(1.4, -1e-3, history) == ""
    assert _exploded(1.4, 1e-3, []) == ""
    assert "diverged" in _exploded(582930.3, 4.2e5, history)
    assert "non-finite" in _exploded(float("nan"), 0.0, history)
    assert "non-finite" in _exploded(1.0, float("inf"), history)
    # the reference is the last *accepted* probe
    history.append({"val_loss_unrolled": 582930.3, "skipped": True})
    assert "diverged" in _exploded(500000.0, 1.0, history)


def tiny_train_config(**changes: Any) -> TrainConfig:
    """A 6-step training run on :func:`tiny_pair_set` (checkpoints every 2 steps)."""
    config = TrainConfig(
        seed=3,
        working_spacing_mm=2.0,
        steps=6,
        lr=3e-3,
        network=TINY,
        integration_steps=4,
        synthetic=SyntheticWarpSettings(10.0, 5.0),
        bilevel=BilevelSettings(outer_every=2, unroll_steps=1, lambda_lr=0.2),
        checkpoint_every=2,
        log_every=2,
    )
    return replace(config, **changes)


def test_training_learns_lambda_resumes_and_writes_a_model(tmp_path: Path) -> None:
    pairs = tiny_pair_set(16)
    config = tiny_train_config()
    whole = train(config, tmp_path / "whole", pairs, log=None)
    assert whole.steps == 6 and len(whole.history) == 3
    assert whole.lam != 1.0  # the outer steps moved lambda
    # interrupted after 4 steps, then resumed to 6: the same weights and lambda
    train(replace(config, steps=4), tmp_path / "split", pairs, log=None)
    resumed = train(config, tmp_path / "split", pairs, log=None)
    assert resumed.steps == 6 and math.isclose(resumed.lam, whole.lam, rel_tol=1e-6)
    a, b = load_model(whole.model_dir), load_model(resumed.model_dir)
    for key, value in a.network.state_dict().items():
        assert torch.allclose(value, b.network.state_dict()[key], atol=1e-6), key
    header = json.loads((whole.model_dir / HEADER).read_text())
    assert header["lambda"] == pytest.approx(whole.lam)
    assert header["working_spacing_mm"] == 2.0
    assert header["normalisation"]["kind"] == "percentile"
    assert header["training"]["steps"] == 6
    # another config cannot resume this run
    with pytest.raises(CheckpointError, match="another config"):
        train(replace(config, lr=1e-2), tmp_path / "split", pairs, log=None)
    assert (tmp_path / "split" / CHECKPOINT).is_file()


def test_grid_search_times_every_lambda() -> None:
    rows = grid_search([0.1, 1.0], lambda lam: (abs(math.log10(lam) + 0.5), {"lam": lam}))
    assert [r.lam for r in rows] == [0.1, 1.0]
    assert all(r.seconds >= 0 for r in rows)
    with pytest.raises(ValueError):
        grid_search([0.0], lambda lam: (0.0, {}))


# -------------------------------------------------------------------- model folder, method
def constant_velocity_model(
    shift_vox: tuple[float, float, float], spacing_mm: float
) -> DeformableModel:
    network = VelocityUNet(TINY)
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.copy_(torch.tensor(shift_vox))
    return DeformableModel(network, 0.5, spacing_mm, 7, "ncc", {"note": "test"})


def oblique_volume(
    values_of_lps: Callable[[np.ndarray], np.ndarray],
    shape_zyx: tuple[int, int, int],
    spacing_mm: list[float],
    direction: np.ndarray,
) -> Volume:
    """A volume whose voxel values are ``values_of_lps`` of their LPS centres."""
    volume = Volume(np.zeros(shape_zyx, np.float32), spacing_mm, [-20.0, 15.0, -30.0], direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
    lps = volume.index_to_world(index, "LPS")
    return Volume(
        values_of_lps(lps).reshape(shape_zyx).astype(np.float32),
        spacing_mm,
        volume.origin_lps,
        direction,
    )


def test_field_maps_fixed_points_to_moving_points_in_itk_direction(tmp_path: Path) -> None:
    angle = math.radians(20.0)
    direction = np.array(
        [
            [math.cos(angle), -math.sin(angle), 0.0],
            [math.sin(angle), math.cos(angle), 0.0],
            [0, 0, 1],
        ]
    )
    ramp = np.array([0.5, -0.25, 1.0])
    fixed = oblique_volume(lambda p: p @ ramp + 100.0, (14, 16, 18), [3.0, 3.5, 4.0], direction)
    moving = oblique_volume(lambda p: p @ ramp + 100.0, (15, 15, 15), [4.0, 4.0, 4.0], np.eye(3))
    shift_vox = (1.0, -0.5, 0.75)
    model = constant_velocity_model(shift_vox, spacing_mm=4.0)
    save_model(model, tmp_path / "model")
    model = load_model(tmp_path / "model")
    step = direction @ np.diag([4.0, 4.0, 4.0]) @ np.array(shift_vox)  # D u in LPS mm
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.05, 0.02, 0.0, -0.01, 0.98, 0.0, 0.0, 0.0, 1.0))
    affine.SetTranslation((2.0, -3.0, 1.5))
    for pre in (None, affine):
        result = deformable_fields(fixed, moving, model, pre)
        matrix, offset = affine_parts(pre)
        inside = fixed.index_to_world(np.array([[7.0, 6.0, 5.0], [9.5, 8.0, 7.0]]), "LPS")
        for x in inside:
            expected = matrix @ (x + step) + offset  # T(x) = A(x + D u)
            mapped = np.array(result.transform.TransformPoint(tuple(x)))
            assert np.allclose(mapped, expected, atol=1e-3), (pre, mapped, expected)
            back = np.array(result.inverse.TransformPoint(tuple(mapped)))
            assert np.allclose(back, x, atol=1e-2)
        assert result.details["lambda"] == 0.5
        assert result.details["folding_share"] == 0.0
    # ITK direction: sitk.Resample(moving, fixed, T) shows moving(T(x)) at fixed voxel x
    resampled = sitk.GetArrayFromImage(
        sitk.Resample(moving.to_sitk(), fixed.to_sitk(), result.transform)
    )
    k, j, i = 5, 7, 8
    x = fixed.index_to_world(np.array([[i, j, k]], dtype=float), "LPS")[0]
    expected = (matrix @ (x + step) + offset) @ ramp + 100.0
    assert resampled[k, j, i] == pytest.approx(expected, abs=1e-2)


def test_deformable_method_end_to_end_on_a_template(builtin_data: Path, tmp_path: Path) -> None:
    from medrl.data.builtin import afids_datalist
    from medrl.data.datalist import load_case

    # the two templates the test data fetch provides (builtin:afids4's others need SPM12)
    specs = {s.case_id: s for s in afids_datalist()}
    fixed_case = load_case(specs["MNI152NLin2009cAsym_T1w"], spacing_mm=6.0)
    moving_case = load_case(specs["MNI152NLin6Asym_T1w"], spacing_mm=6.0)
    torch.manual_seed(0)
    untrained = DeformableModel(VelocityUNet(TINY), 1.0, 6.0, 7, "ncc", {})
    save_model(untrained, tmp_path / "model")
    options = RegisterOptions(seed=0, model_dir=tmp_path / "model", threads=1)
    assert METHODS["deformable"] is register_deformable
    outcome = METHODS["deformable"](fixed_case.volume, moving_case.volume, options)
    assert isinstance(outcome.transform, sitk.DisplacementFieldTransform)
    assert isinstance(outcome.inverse, sitk.DisplacementFieldTransform)
    assert outcome.method == "deformable"
    assert outcome.details["lambda"] == 1.0
    assert outcome.details["network_seconds"] >= 0
    assert outcome.details["folding_share"] == 0.0
    warped = sitk.Resample(
        moving_case.volume.to_sitk(), fixed_case.volume.to_sitk(), outcome.transform
    )
    assert warped.GetSize() == fixed_case.volume.to_sitk().GetSize()
    assert float(sitk.GetArrayFromImage(warped).std()) > 0
    # an untrained network adds ~nothing to the affine: landmark errors of both agree
    assert fixed_case.landmarks is not None and moving_case.landmarks is not None
    tre = landmark_tre_mm(
        outcome.transform, fixed_case.landmarks.points_ras, moving_case.landmarks.points_ras
    )
    affine = affine_registration(fixed_case.volume, moving_case.volume, 0).transform
    affine_tre = landmark_tre_mm(
        affine, fixed_case.landmarks.points_ras, moving_case.landmarks.points_ras
    )
    assert np.median(tre) < 10.0
    assert np.allclose(tre, affine_tre, atol=0.05)
    # the inverse field takes the moving landmarks back (moving -> fixed)
    back = landmark_tre_mm(
        outcome.inverse, moving_case.landmarks.points_ras, fixed_case.landmarks.points_ras
    )
    assert np.median(back) < 10.0


def test_missing_or_corrupt_model_folder_is_a_checkpoint_error(tmp_path: Path) -> None:
    volume = Volume(np.zeros((8, 8, 8), np.float32), [4.0] * 3, [0.0] * 3, np.eye(3))
    options = RegisterOptions(model_dir=tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="nowhere"):
        register_deformable(volume, volume, options)
    folder = tmp_path / "model"
    save_model(constant_velocity_model((0.0, 0.0, 0.0), 4.0), folder)
    (folder / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model"):
        load_model(folder)
    save_model(constant_velocity_model((0.0, 0.0, 0.0), 4.0), folder)
    (folder / HEADER).write_text("{")
    with pytest.raises(CheckpointError, match="invalid"):
        load_model(folder)
    (folder / HEADER).unlink()
    with pytest.raises(CheckpointError, match=HEADER):
        load_model(folder)
