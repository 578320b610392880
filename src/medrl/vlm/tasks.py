"""Grounding and closed-choice VQA items rendered from brain templates, from a seed.

Each item is a dict of dataset columns (see docs/vlm.md): ``prompt`` (conversational, with an
image placeholder), ``image`` (PIL RGB), ``completion`` (the SFT target), ``answer``,
``options``, ``question_type``, ``task``, ``box_px``, ``target_mask``, ``box_format``,
``image_size``, ``model_size``, ``pixel_to_ras``, ``structure``, ``plane``, ``template``,
``item_id``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from medrl.errors import InputError
from medrl.vlm.atlas import Anatomy, region_id, region_map, region_names
from medrl.vlm.boxes import BoxFrame, clip_box, format_box
from medrl.vlm.masks import mask_to_rle
from medrl.vlm.slices import (
    PLANES,
    SLICE_RANGE_MM,
    SliceGeometry,
    draw_box,
    make_geometry,
    render_intensity,
    sample,
)

QUESTION_TYPES = (
    "ground_structure",
    "ground_landmark",
    "which_structure",
    "plane",
    "hemisphere",
    "visible",
    "ground_marked",
)
GROUNDING_TYPES = ("ground_structure", "ground_landmark", "ground_marked")
MARK_COLOUR = (255, 0, 0)
LETTERS = "ABCD"


@dataclass(frozen=True)
class TaskConfig:
    """How items are rendered and which questions are asked (the ``data`` preset section)."""

    image_width: int = 128
    image_height: int = 112
    pixel_mm: float = 1.75
    box_format: str = "qwen2.5-vl"
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    augment: bool = True
    max_rotation_deg: float = 8.0
    max_shift_mm: float = 8.0
    max_scale: float = 0.1
    min_structure_px: int = 20
    landmark_box_mm: float = 16.0
    marked_side_px: tuple[float, float] = (16.0, 48.0)
    marked_line_px: int = 1
    marked_answer_scale: float = 1.0
    question_weights: dict[str, float] = field(
        default_factory=lambda: {
            "ground_structure": 0.3,
            "ground_landmark": 0.15,
            "which_structure": 0.2,
            "plane": 0.1,
            "hemisphere": 0.15,
            "visible": 0.1,
        }
    )

    def __post_init__(self) -> None:
        unknown = set(self.question_weights) - set(QUESTION_TYPES)
        if unknown:
            raise InputError(f"unknown question types {sorted(unknown)}; known: {QUESTION_TYPES}")
        if sum(self.question_weights.values()) <= 0:
            raise InputError("question_weights must have a positive weight")
        if min(self.image_width, self.image_height) < 28 or self.pixel_mm <= 0:
            raise InputError("image_width/height must be >= 28 px and pixel_mm > 0")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise InputError("need 0 < min_pixels <= max_pixels")
        try:
            _ = self.frame
        except ValueError as exc:  # unknown box format, extreme aspect ratio
            raise InputError(str(exc)) from exc
        if self.question_weights.get("ground_marked", 0) > 0:
            self._check_marked()

    def _check_marked(self) -> None:
        low, high = (float(v) for v in self.marked_side_px)
        if not 0.25 <= self.marked_answer_scale <= 4:
            raise InputError(
                f"marked_answer_scale must be in [0.25, 4], got {self.marked_answer_scale}"
            )
        if not 4 <= low <= high <= min(self.image_width, self.image_height):
            raise InputError(
                "marked_side_px must be [low, high] with 4 <= low <= high <= the image's "
                f"smaller side, got {list(self.marked_side_px)}"
            )

    @property
    def frame(self) -> BoxFrame:
        return BoxFrame.for_model(
            self.box_format,
            (self.image_width, self.image_height),
            self.min_pixels,
            self.max_pixels,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def system_prompt(config: TaskConfig) -> str:
    frame = config.frame
    if config.box_format == "qwen2-vl":
        units = "on a 0-1000 scale of the image width and height"
    else:
        units = f"in pixels of the {frame.model_size[0]}x{frame.model_size[1]} image"
    return (
        "You look at one slice of a brain MRI (subject's right on the image left). "
        "Think in <think></think>, then answer in <answer></answer>. "
        f"Boxes are [x1, y1, x2, y2] {units}."
    )


@dataclass
class _Slice:
    geometry: SliceGeometry
    rgb: np.ndarray
    regions: np.ndarray  # (H, W) region ids


def _random_slice(
    anatomy: Anatomy,
    config: TaskConfig,
    rng: np.random.Generator,
    plane: str | None = None,
    offset_mm: float | None = None,
) -> _Slice:
    plane = plane or str(rng.choice(PLANES))
    if offset_mm is None:
        offset_mm = float(rng.uniform(*SLICE_RANGE_MM[plane]))
    if config.augment:
        rotation = float(rng.uniform(-1, 1) * config.max_rotation_deg)
        shift = tuple(float(s) for s in rng.uniform(-1, 1, 2) * config.max_shift_mm)
        pixel_mm = config.pixel_mm * float(1.0 + rng.uniform(-1, 1) * config.max_scale)
    else:
        rotation, shift, pixel_mm = 0.0, (0.0, 0.0), config.pixel_mm
    geometry = make_geometry(
        plane, offset_mm, config.image_width, config.image_height, pixel_mm, rotation, shift
    )
    points = geometry.pixel_centres_ras()
    grey = sample(anatomy.image, points, order=1)
    rgb = render_intensity(grey, anatomy.intensity_scale, rng, config.augment)
    regions = region_map(sample(anatomy.atlas, points, order=0), points)
    return _Slice(geometry, rgb, regions)


def _mask_box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def _present(regions: np.ndarray, min_px: int) -> list[int]:
    ids, counts = np.unique(regions[regions > 0], return_counts=True)
    return [int(i) for i, c in zip(ids, counts, strict=True) if c >= min_px]


def _think(plane: str, text: str) -> str:
    return f"A {plane} slice. {text}"


def _item(
    config: TaskConfig,
    anatomy: Anatomy,
    piece: _Slice,
    question_type: str,
    question: str,
    answer: str,
    reasoning: str,
    rgb: np.ndarray | None = None,
    options: list[str] | None = None,
    box_px: list[float] | None = None,
    mask: np.ndarray | None = None,
    structure: str = "",
) -> dict[str, Any]:
    frame = config.frame
    options = options or []
    text = question
    if options:
        lines = [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
        text = question + "\n" + "\n".join(lines) + "\nAnswer with the letter."
    # String contents: TRL puts the image placeholder before the first user text itself.
    prompt = [
        {"role": "system", "content": system_prompt(config)},
        {"role": "user", "content": text},
    ]
    plane = piece.geometry.plane
    target = f"<think>{_think(plane, reasoning)}</think><answer>{answer}</answer>"
    grounding = question_type in GROUNDING_TYPES
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": target}],
        "image": Image.fromarray(piece.rgb if rgb is None else rgb),
        "task": "grounding" if grounding else "vqa",
        "question_type": question_type,
        "answer": answer,
        "options": options,
        "box_px": (box_px or []) if grounding else [],
        "target_mask": mask_to_rle(mask) if (grounding and mask is not None) else [],
        "box_format": frame.box_format,
        "image_size": list(frame.image_size),
        "model_size": list(frame.model_size),
        "pixel_to_ras": piece.geometry.matrix,
        "structure": structure,
        "plane": piece.geometry.plane,
        "template": anatomy.template,
    }


def grounding_item(
    anatomy: Anatomy,
    structure: str,
    plane: str,
    offset_mm: float,
    config: TaskConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """A "where is the {structure}?" item on one chosen slice.

    Raises:
        InputError: unknown structure name or plane, or the structure is absent (fewer than
            ``min_structure_px`` pixels) in that slice.
    """
    if plane not in PLANES:
        raise InputError(f"unknown plane {plane!r}; known: {', '.join(PLANES)}")
    rid = region_id(structure)
    piece = _random_slice(anatomy, config, rng, plane, offset_mm)
    mask = piece.regions == rid
    if int(mask.sum()) < config.min_structure_px:
        raise InputError(
            f"{region_names()[rid]} has {int(mask.sum())} pixels in the {plane} slice at "
            f"{offset_mm:g} mm (need {config.min_structure_px}); choose another slice"
        )
    return _ground_structure(anatomy, config, piece, rid)


def _ground_structure(
    anatomy: Anatomy, config: TaskConfig, piece: _Slice, rid: int
) -> dict[str, Any]:
    name = region_names()[rid]
    mask = piece.regions == rid
    box = _mask_box(mask)
    answer = format_box(config.frame.to_model(box))
    return _item(
        config, anatomy, piece, "ground_structure",
        f"Where is the {name}? Give its box.", answer, f"I find the {name}.",
        box_px=box, mask=mask, structure=name,
    )  # fmt: skip


def _ground_landmark(
    anatomy: Anatomy, config: TaskConfig, rng: np.random.Generator
) -> dict[str, Any] | None:
    index = int(rng.integers(len(anatomy.landmark_names)))
    point = anatomy.landmarks_ras[index]
    plane = str(rng.choice(PLANES))
    normal = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    piece = _random_slice(anatomy, config, rng, plane, float(point[normal] + rng.uniform(-1, 1)))
    centre = piece.geometry.to_pixel(point)[0]
    half = config.landmark_box_mm / 2.0 / float(np.linalg.norm(piece.geometry.u_mm))
    box = [centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half]
    if box[0] < 0 or box[1] < 0 or box[2] > config.image_width or box[3] > config.image_height:
        return None
    mask = np.zeros((config.image_height, config.image_width), dtype=bool)
    ys, xs = np.mgrid[0 : config.image_height, 0 : config.image_width] + 0.5
    mask[(xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])] = True
    name = anatomy.landmark_names[index]
    answer = format_box(config.frame.to_model(box))
    return _item(
        config, anatomy, piece, "ground_landmark",
        f"Where is the {name}? Give a box around it.", answer, f"I find the {name}.",
        box_px=[float(v) for v in box], mask=mask, structure=name,
    )  # fmt: skip


def _ground_marked(
    anatomy: Anatomy, config: TaskConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """The positive control: "where is the red box?" on a slice with a drawn box.

    Perception-trivial (the answer is drawn on the image), so a model that cannot learn it
    points at the training harness, not at anatomy. Box sides are drawn uniformly from
    ``marked_side_px``; the box lies inside the image; its outline is ``marked_line_px``
    wide, drawn inside the box. ``marked_answer_scale`` != 1 makes the SFT target a scaled copy
    of the drawn box (a miscalibrated teacher) while the rewards still score the drawn box: GRPO
    must then undo what SFT taught, which tests that the reward moves the policy.
    """
    piece = _random_slice(anatomy, config, rng)
    low, high = config.marked_side_px
    width_px, height_px = (float(rng.uniform(low, high)) for _ in range(2))
    x1 = float(np.floor(rng.uniform(0, config.image_width - width_px)))
    y1 = float(np.floor(rng.uniform(0, config.image_height - height_px)))
    box = [x1, y1, x1 + float(np.ceil(width_px)), y1 + float(np.ceil(height_px))]
    marked = piece.rgb
    for inset in range(max(1, int(config.marked_line_px))):  # the outline, drawn inwards
        marked = draw_box(
            marked, np.array(box) + np.array([inset, inset, -inset, -inset]), MARK_COLOUR
        )
    mask = np.zeros((config.image_height, config.image_width), dtype=bool)
    mask[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
    # the SFT target: the drawn box scaled about its centre (a "tight annotator" when < 1);
    # box_px, which the rewards and the evaluation read, stays the drawn box
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2] * 2)
    target = centre + (np.array(box) - centre) * config.marked_answer_scale
    target = clip_box(target, (float(config.image_width), float(config.image_height)))
    answer = format_box(config.frame.to_model(list(target)))
    return _item(
        config, anatomy, piece, "ground_marked",
        "Where is the red box? Give its box.", answer, "I find the red box.",
        rgb=marked, box_px=box, mask=mask, structure="red box",
    )  # fmt: skip


def _choice(options: list[str], correct: str, rng: np.random.Generator) -> tuple[list[str], str]:
    order = [options[i] for i in rng.permutation(len(options))]
    return order, LETTERS[order.index(correct)]


def _structure_question(
    anatomy: Anatomy, config: TaskConfig, rng: np.random.Generator, question_type: str
) -> dict[str, Any] | None:
    piece = _random_slice(anatomy, config, rng)
    present = _present(piece.regions, config.min_structure_px)
    if not present:
        return None
    names = region_names()
    rid = int(rng.choice(present))
    name = names[rid]
    if question_type == "ground_structure":
        return _ground_structure(anatomy, config, piece, rid)
    box = _mask_box(piece.regions == rid)
    marked = draw_box(piece.rgb, np.array(box), MARK_COLOUR)
    if question_type == "which_structure":
        others = [r for r in present if r != rid]
        pool = [r for r in names if r != rid and r not in others]
        rng.shuffle(others)
        distractors = others[:3]
        if len(distractors) < 3:
            distractors += [int(r) for r in rng.choice(pool, 3 - len(distractors), replace=False)]
        options, letter = _choice([name] + [names[r] for r in distractors], name, rng)
        question = "Which structure lies in the red box?"
        reasoning = f"The red box covers the {name}."
        return _item(config, anatomy, piece, question_type, question, letter, reasoning,
                     rgb=marked, options=options, structure=name)  # fmt: skip
    if question_type == "hemisphere":
        side = name.split(" ", 1)[0]
        options, letter = _choice(["left", "right"], side, rng)
        question = "In which hemisphere is the structure in the red box?"
        reasoning = f"The red box is on the {side} side."
        return _item(config, anatomy, piece, question_type, question, letter, reasoning,
                     rgb=marked, options=options, structure=name)  # fmt: skip
    # visible: half the questions ask about a structure that is absent from the slice
    visible = bool(rng.random() < 0.5)
    if not visible:
        shown = set(np.unique(piece.regions).tolist())
        absent = [r for r in names if r not in shown]
        rid = int(rng.choice(absent))
        name = names[rid]
    options, letter = _choice(["yes", "no"], "yes" if visible else "no", rng)
    question = f"Is the {name} visible in this slice?"
    reasoning = f"The {name} is {'' if visible else 'not '}in the slice."
    return _item(config, anatomy, piece, question_type, question, letter, reasoning,
                 options=options, structure=name)  # fmt: skip


def _plane_question(
    anatomy: Anatomy, config: TaskConfig, rng: np.random.Generator
) -> dict[str, Any]:
    piece = _random_slice(anatomy, config, rng)
    plane = piece.geometry.plane
    options, letter = _choice(list(PLANES), plane, rng)
    return _item(config, anatomy, piece, "plane", "Which plane is this slice?", letter,
                 f"The view is {plane}.", options=options)  # fmt: skip


def generate_item(
    anatomy: Anatomy,
    config: TaskConfig,
    seed: int,
    index: int,
    stream: int = 0,
    max_tries: int = 50,
) -> dict[str, Any]:
    """Item ``index`` of stream ``stream`` seeded by ``seed``: same inputs, same item.

    Raises:
        InputError: no item of the drawn question type in ``max_tries`` random slices (the
            data settings make it impossible or rare); the message names the settings to change.
    """
    rng = np.random.default_rng([seed, stream, index])
    types = list(config.question_weights)
    weights = np.array([config.question_weights[t] for t in types], dtype=np.float64)
    question_type = str(rng.choice(types, p=weights / weights.sum()))
    for _ in range(max_tries):
        if question_type == "plane":
            item = _plane_question(anatomy, config, rng)
        elif question_type == "ground_landmark":
            item = _ground_landmark(anatomy, config, rng)
        elif question_type == "ground_marked":
            item = _ground_marked(anatomy, config, rng)
        else:
            item = _structure_question(anatomy, config, rng, question_type)
        if item is not None:
            item["item_id"] = f"{anatomy.template}-{seed}-{stream}-{index}"
            return item
    if question_type == "ground_landmark":
        hint = (
            "a landmark box must fit in the image: lower data.landmark_box_mm or enlarge "
            "data.image_width/image_height/pixel_mm"
        )
    else:
        hint = (
            f"no structure had data.min_structure_px = {config.min_structure_px} pixels: lower "
            "it or enlarge data.image_width/image_height/pixel_mm"
        )
    raise InputError(
        f"no {question_type} item found in {max_tries} random slices; {hint}, or give "
        f"{question_type} weight 0 in data.question_weights"
    )
