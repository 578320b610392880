"""Run configuration: frozen dataclasses, loaded from and saved to YAML, with dotted overrides.

A config file holds any subset of the sections below; missing keys keep their defaults.
Overrides use dotted keys, for example ``agent.lr=3e-4`` or ``train.total_steps=2000``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medrl.errors import InputError
from medrl.utils.atomic import atomic_open


@dataclass(frozen=True)
class LevelConfig:
    """One scale level of the coarse-to-fine search."""

    spacing_mm: float
    """Voxel spacing of the patch at this level (the image is smoothed and resampled to it)."""
    step_mm: float
    """Distance one action moves the agent."""
    start_radius_mm: float
    """Training episodes at this level start uniformly within this distance of the target."""
    max_steps: int
    """Step budget of one episode (training) or one level of a search (inference)."""
    step_fraction: float = 0.1
    """Box task: one action moves or resizes the box by this fraction of its size."""
    size_range: float = 1.0
    """Box task: training starts have sizes within [1/r, r] times the true box's (grown by
    the margin first)."""
    start_margin_mm: float = 0.0
    """Box task: training starts are the true box grown by this margin on every side (then
    shifted and scaled), so that they mostly contain the structure, as a label-free search
    does from its enlarged prior box (Navarro et al. start from the whole image); at the
    first level the label-free search starts from the prior box grown by this margin."""
    step_deg: float = 0.0
    """Plane task: the angle one tilt action turns the plane by."""
    start_angle_deg: float = 0.0
    """Plane task: training starts are the true plane turned by up to this angle (and moved
    within ``start_radius_mm``)."""


def _default_levels() -> tuple[LevelConfig, ...]:
    return (
        LevelConfig(spacing_mm=4.0, step_mm=4.0, start_radius_mm=60.0, max_steps=40),
        LevelConfig(spacing_mm=2.0, step_mm=2.0, start_radius_mm=12.0, max_steps=20),
        LevelConfig(spacing_mm=1.0, step_mm=1.0, start_radius_mm=5.0, max_steps=20),
    )


@dataclass(frozen=True)
class TaskConfig:
    """Which agent of the family (:mod:`medrl.tasks`) and its task-specific settings."""

    kind: str = "landmark"
    """``landmark`` (a point), ``box`` (a world-axis-aligned box around a structure) or
    ``plane`` (a view plane: MSP, AC-PC), ``slice`` (a slice of the scan's own slice axis
    through a landmark) or ``rigid`` (a rigid transform aligning a moving to a fixed image)."""
    box_context: float = 1.5
    """Box task: the observation spans this many times the box, plus the margin."""
    box_margin_mm: float = 4.0
    box_context_mm: float = 0.0
    """Box task: also show a cube of this side (mm) around the box as a second channel, so a
    box far from its structure still sees it (0: no context channel)."""
    box_success_iou: float = 0.85
    """Box task: a training episode ends (terminated) at an IoU above this."""
    box_min_size_mm: float = 1.0
    box_max_size_mm: float = 200.0
    plane_radius_mm: float = 50.0
    """Plane task: the distance adds this radius x the angle between the normals (radians),
    how far apart two planes are at this distance from the reference point."""
    plane_view_factor: float = 3.0
    """Plane task: in-plane sample spacing of the slab, in units of the level's spacing (the
    spacing through the slab is the level's)."""
    plane_context: float = 2.0
    """Plane task: a second slab this many times wider and thicker (0: none)."""
    plane_symmetry: bool = False
    """Plane task: after the search, move the MSP to the nearby plane across which the scan is
    most mirror-symmetric (:mod:`medrl.geometry.symmetry`); the AC-PC plane is then made
    perpendicular to it again."""
    plane_acpc_landmarks: str = ""
    """Plane task: after the search (and the MSP refinement), put the AC-PC plane through the
    AC and PC that this landmark model finds (:mod:`medrl.tasks.acpc_locator`): ``""`` (off),
    ``"builtin:NAME"`` (a model shipped with medrl) or a landmark model folder."""
    plane_acpc_template: str = ""
    """Plane task: after the search (and the MSP refinement), put the AC-PC plane through a
    template's AC and PC carried onto the scan by a 2D registration of the mid-sagittal plane
    (:mod:`medrl.tasks.acpc_template`): ``""`` (off), ``"builtin:afids"`` or
    ``"IMAGE,LANDMARKS"``; not with ``plane_acpc_landmarks``."""
    slice_axis: int = -1
    """Slice task: the voxel axis (0, 1, 2) whose slices the agent moves through; -1: the one
    closest to superior-inferior (the slab settings are the plane task's)."""
    slice_inplane_weight: float = 0.5
    """Slice task: the distance adds this weight x how far the view's centre lies from the
    target within the slice (the agent also moves in the slice, to see the target)."""
    rigid_radius_mm: float = 40.0
    """Rigid task: the distance is the mean displacement error over the 27 points of a cube of
    this half-side around the fixed image's centre (a brain-sized set of points)."""
    rigid_view_radius_mm: float = 35.0
    """Rigid task: the views sit at the fixed image's centre and at the corners of a cube of
    this half-side around it (a patch of the fixed and one of the moving image each)."""
    rigid_pairs: str = "same_anatomy"
    """Rigid task: which pairs of the datalist's cases train: ``same_anatomy`` (cases whose
    landmarks coincide, e.g. one template in two contrasts: the truth is exact) or ``all``
    (any two cases with 4+ common landmarks: the truth is their least-squares rigid fit)."""

    def __post_init__(self) -> None:
        if self.plane_acpc_landmarks and self.plane_acpc_template:
            raise ValueError(
                "task.plane_acpc_landmarks and task.plane_acpc_template both set: choose one"
            )


@dataclass(frozen=True)
class EnvConfig:
    """The search environment (the batched kernel), shared by every task."""

    patch_size: int = 15
    """Patch edge in voxels (odd, so the agent sits on the centre voxel)."""
    levels: tuple[LevelConfig, ...] = field(default_factory=_default_levels)
    level_weights: tuple[float, ...] = ()
    """Relative frequency of training episodes at each level (empty: equal)."""
    frames: int = 1
    """Patches stacked in the observation: the current one and the previous ``frames - 1``."""
    action_history: int = 4
    """Number of past actions (one-hot) given to the network."""
    reward_clip_mm: float = 1.0
    """Reward = decrease of the distance to the target in mm, clipped to this magnitude."""
    success_radius_mm: float = 1.0
    """A training episode ends (terminated) within this distance of the target."""
    oscillation_window: int = 20
    oscillation_repeats: int = 3
    """A position seen more than this many times in the window counts as oscillation."""
    out_of_image_penalty: float = 1.0


@dataclass(frozen=True)
class AugmentConfig:
    """Random transform drawn at every episode start; landmarks move with the image exactly."""

    rotation_deg: float = 15.0
    scale: float = 0.08
    """Isotropic scale drawn from [1 - scale, 1 + scale]."""
    anisotropic_scale: float = 0.04
    translation_mm: float = 20.0
    elastic_mm: float = 3.0
    """Amplitude of each sinusoidal mode of the smooth elastic displacement, in mm."""
    elastic_modes: int = 4
    elastic_wavelength_mm: tuple[float, float] = (80.0, 200.0)
    gamma: float = 0.3
    """log-gamma drawn from [-gamma, gamma]."""
    intensity_remap: float = 0.0
    """Probability that an episode's intensities pass through a random lookup table (another
    contrast: tissues swap brightness, as between T1w, T2w and PD); 0: never."""
    local_warps: int = 0
    """Local non-affine warps per episode: radial swellings or shrinkings, each a Gaussian
    bump ``s (x - c) exp(-|x - c|^2 / 2 sigma^2)`` centred near a random target of the scan
    (ventricles, horns, nuclei change size and shape between people); 0: none."""
    local_warp_strength: float = 0.3
    """``s`` is drawn from [-strength, strength]: the local volume changes by up to
    (1 +/- s)^3 at the centre (0.3: 0.34x to 2.2x). Below 0.5 the warp stays invertible."""
    local_warp_sigma_mm: tuple[float, float] = (8.0, 20.0)
    """Range of the bump's width sigma, in mm."""
    blur: float = 0.0
    """Probability that an episode sees the scan one level coarser than its patches (the
    smoothed copy of the level with the next larger spacing, sampled on the patches' grid;
    the coarsest level has none): blurrier scans (thicker voxels, averages of many people,
    older scanners) look like that; 0: never."""
    contrast_mix: float = 0.0
    """Probability that an episode sees a random convex blend of the scan and two of its
    siblings (other contrasts of the same brain on the same grid, with the same landmarks:
    T1w, T2w, PD of one template); scans without siblings are unchanged; 0: never."""
    tissue_maps: bool = False
    """Add each brain's tissue maps (on a brain, CSF, grey and white matter: a Gaussian mixture
    of its skull-stripped images, :mod:`medrl.data.tissue`) to its siblings, so that
    ``contrast_mix`` (which must then be above 0) also blends the scan with them: synthetic
    contrasts that a lookup table of one contrast cannot make (bright ventricles beside a dark
    skull). Only brains given with and without skull get maps."""
    contrast: float = 0.2
    bias_field: float = 0.3
    noise_std: float = 0.03
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("intensity_remap", "blur", "contrast_mix"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {value}")
        if self.tissue_maps and self.contrast_mix == 0.0:
            raise ValueError(
                "augment.tissue_maps blends tissue maps through augment.contrast_mix, which is 0"
            )


@dataclass(frozen=True)
class AgentConfig:
    """DQN agent and its network."""

    backup: str = "all_actions"
    """``sampled`` (n-step double DQN on the taken action) or ``all_actions`` (one-step double
    DQN targets for all six actions of each sampled state, from the known dynamics)."""
    double: bool = True
    dueling: bool = True
    n_step: int = 3
    gamma: float = 0.9
    lr: float = 3e-4
    batch_size: int = 32
    replay_size: int = 100_000
    learning_starts: int = 2_000
    """Transitions collected before the first update."""
    target_update: int = 500
    """Updates between copies of the online network to the target network."""
    updates_per_step: float = 0.5
    """Gradient updates per batched environment step."""
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.4
    """Share of training over which epsilon decays linearly."""
    channels: tuple[int, ...] = (16, 32, 32)
    first_stride: int = 2
    hidden: int = 256
    level_networks: bool = False
    """One network per scale level instead of one for all (``agent.channels`` and
    ``hidden`` apply to each): in one shared network the fine levels learn only after the
    coarse level (see BENCHMARKS.md, "learning curve")."""
    nearby_radius_factor: float = 1.0
    """all_actions backup: also train the heads of the other landmarks that lie within this
    many start radii of the level from the agent (their targets are known too); 0 trains only
    the episode's own landmark."""
    grad_clip: float = 10.0


@dataclass(frozen=True)
class SearchConfig:
    """Multi-start, multi-scale inference."""

    start_offsets_mm: float = 15.0
    """Starts: the image's intensity centre plus +/- this offset along each axis (7 in all)."""
    num_starts: int = 1
    """1 (centre only) to 7 (centre and the 6 axis offsets)."""
    levels: int = 0
    """Search only the first (coarsest) this many levels; 0: all. Chosen on validation data
    when a finer level does not improve the estimate (see BENCHMARKS.md)."""
    adaptive_levels: bool = False
    """Per scan, keep the estimates of the level whose landmarks agree best with the task's
    reference layout (median residual of its robust affine fit) rather than the finest: on a
    scan blurrier or less familiar than the training scans, finer levels can make the layout
    less plausible, and then they are not trusted. Tasks without a layout ignore it."""
    consensus_level: int | None = None
    """After the search, search every target again from where the task's reference layout,
    fitted to all estimates by a robust affine map, puts it, from this level on (0-based);
    -1: no second search; None (``~`` in YAML): chosen on validation data at export for
    tasks with a reference layout (boxes), off for the others."""
    layout_weight: float = 0.0
    """Weight in [0, 1] of the task's reference layout in the final estimate: each target is
    written at ``(1 - w) x`` the search's estimate ``+ w x`` where the layout, robustly fitted by
    an affine map to the estimates of level ``layout_level``, puts it. 0 (the default): the
    search's own reading of the image; 1: a landmark-driven affine fit of the layout, every
    point consistent with the others (a model's layout is the mean shape of its training
    brains). It pays on scans the agent reads imprecisely but without bias (the blurry linear
    averages of the left-one-template-out benchmark); on a sharp scan of a brain that departs
    from the layout (an individual, enlarged ventricles) it can only cost. Confidence and flags
    stay those of the search's own estimate. Tasks without a layout ignore it."""
    layout_level: int | None = None
    """The level (0-based) whose estimates the layout is fitted to for ``layout_weight``; None:
    the level the search kept (the finest, or the one ``adaptive_levels`` chose)."""
    detector_weight: float = 0.0
    """Weight in [0, 1] of the supervised heatmap detector the model folder carries
    (``MODEL/detector``, see :mod:`medrl.supervised.ensemble`) in the final estimate: each
    landmark is written at ``(1 - w) x`` the agent's point ``+ w x`` the detector's. 0 (the
    default): the agent alone. Two readers of the image trained differently err partly
    independently, so their mean is nearer the truth than either on average, and where they
    disagree by much the confidence says so. The layout blend (``layout_weight``) applies
    after it."""
    mirror: bool = False
    """Landmark models: each reader also reads the scan's left-right mirror image (the same
    pyramid, world space reflected about the sagittal plane through the scan's intensity
    centre), and its point of each landmark is the mean of its reading in the scan and its
    mirror partner's reading in the mirror image, reflected back (partners from the model's
    reference layout, :mod:`medrl.geometry.mirror`; a midline landmark is its own partner).
    The agent searches the mirror image too (the same search, the other side of each
    structure); a carried detector reads both in one batch. What a reader gets wrong on one
    side only is halved."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.layout_weight <= 1.0:
            raise ValueError(f"search.layout_weight is in [0, 1], got {self.layout_weight}")
        if not 0.0 <= self.detector_weight <= 1.0:
            raise ValueError(f"search.detector_weight is in [0, 1], got {self.detector_weight}")
        if self.layout_level is not None and self.layout_level < 0:
            raise ValueError(
                f"search.layout_level is a 0-based level or ~, got {self.layout_level}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """The training run."""

    seed: int = 0
    total_steps: int = 20_000
    """Batched environment steps."""
    num_envs: int = 32
    device: str = "cpu"
    threads: int = 0
    """torch intra-op threads (0: leave torch's default)."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint and a model) after this much wall time; 0: no limit. A run
    stopped by the clock is not reproducible step for step; the step budget is."""
    checkpoint_every: int = 2_000
    log_every: int = 200
    eval_every: int = 0
    """Batched steps between quick validation searches (0: never): the current network
    searches ``eval_scans`` rigidly moved validation scans (the datalist's ``val`` split, else
    the training scans; never the test split); TensorBoard ``eval/mean_error_mm``."""
    eval_scans: int = 2
    """Rigidly moved scans per validation (cycling through the validation cases)."""
    datalist: str = "builtin:afids"
    """A datalist file, or ``builtin:afids`` for the built-in templates."""
    landmarks: tuple[str, ...] = ()
    """Target names to learn: landmarks, or structures of the label maps for the box task
    (empty: all names of the first training case)."""
    init_from: str = ""
    """A model folder (``medrl train`` output or ``default`` for the shipped model) whose
    weights start a new run: fine-tuning. Its landmarks and network must match this run's.
    Ignored when the run resumes from its own checkpoint."""


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        return _build(cls, data, source)

    def with_overrides(self, overrides: list[str], source: str = "override") -> Config:
        """Apply ``section.key=value`` strings (values parsed as YAML)."""
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise InputError(f"override {item!r} is not of the form section.key=value", source)
            key, raw = item.split("=", 1)
            node = data
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node, dict) or part not in node:
                    raise InputError(f"unknown config key {key!r}", source)
                node = node[part]
            if not isinstance(node, dict) or parts[-1] not in node:
                raise InputError(f"unknown config key {key!r}", source)
            node[parts[-1]] = yaml.safe_load(raw)
        return Config.from_dict(data, source)


def search_overrides(values: list[str]) -> list[str]:
    """``--set`` values of ``predict`` and ``evaluate``: only the model's search and task
    settings can change after training (InputError naming the value otherwise)."""
    for value in values:
        if not value.startswith(("search.", "task.")):
            raise InputError(
                f"--set {value!r}: only search.* and task.* settings of a trained model can be "
                "changed here (the network was trained with the rest)"
            )
    return list(values)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("config file does not exist", path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"not valid YAML: {exc}", path) from exc
        if not isinstance(data, dict):
            raise InputError("a config file must hold a mapping of sections", path)
        config = Config.from_dict(data, str(path))
    return config.with_overrides(overrides or [])


def save_config(config: Config, path: str | Path) -> None:
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, source: str, where: str = "") -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{where or 'config'} must be a mapping, got {data!r}", source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(where + k for k in unknown)}", source)
    kwargs = {k: _convert(hints[k], v, source, f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad config section {where or 'root'}: {exc}", source) from exc


_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _convert(tp: Any, value: Any, source: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, where + ".")
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise InputError(f"{where} must be a list, got {value!r}", source)
        return tuple(_convert(inner, v, source, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _PLAIN_NUMBER.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise InputError(f"{where} must be {tp.__name__}, got {value!r}", source)
    return value
