"""Train/test splits as a Hugging Face ``datasets.Dataset`` and as JSONL + PNG files.

Split by template: ``train`` and ``val`` are rendered from MNI152NLin2009cAsym (other random
slices: another stream of the seed), ``test`` from MNI152NLin6Asym. Settings are chosen on
``val``; ``test`` is the held-out template. Layout of a data folder::

    meta.json              seed, sizes, task config, column descriptions
    hf/train, hf/val, hf/test   datasets.Dataset.save_to_disk folders (image column: PIL images)
    jsonl/train.jsonl      one item a line; "image" is a path relative to jsonl/
    jsonl/images/*.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from medrl.errors import InputError
from medrl.utils.atomic import atomic_dir

if TYPE_CHECKING:
    from medrl.vlm.tasks import TaskConfig

SPLIT_TEMPLATES = {
    "train": "MNI152NLin2009cAsym",
    "val": "MNI152NLin2009cAsym",
    "test": "MNI152NLin6Asym",
}
_STREAMS = {"train": 0, "test": 1, "val": 2}
META_NAME = "meta.json"
FORMAT_VERSION = 1


def build_items(
    split: str, num_items: int, seed: int, config: TaskConfig, progress: bool = True
) -> list[dict[str, Any]]:
    """``num_items`` items of ``split`` rendered from its template, reproducibly from ``seed``."""
    from tqdm import tqdm

    from medrl.vlm.atlas import load_anatomy
    from medrl.vlm.tasks import generate_item

    if split not in SPLIT_TEMPLATES:
        raise InputError(f"unknown split {split!r}; known: {', '.join(SPLIT_TEMPLATES)}")
    if num_items < 1:
        raise InputError(f"number of {split} items must be >= 1, got {num_items}")
    anatomy = load_anatomy(SPLIT_TEMPLATES[split])
    indices = tqdm(range(num_items), desc=f"{split} items", disable=not progress, file=sys.stderr)
    return [generate_item(anatomy, config, seed, i, _STREAMS[split]) for i in indices]


def _features() -> Any:
    import datasets

    text = datasets.Value("string")
    message = {"role": text, "content": text}
    return datasets.Features(
        {
            "prompt": datasets.List(message),
            "completion": datasets.List(message),
            "image": datasets.Image(),
            "task": text,
            "question_type": text,
            "answer": text,
            "options": datasets.List(text),
            "box_px": datasets.List(datasets.Value("float64")),
            "target_mask": datasets.List(datasets.Value("int64")),
            "box_format": text,
            "image_size": datasets.List(datasets.Value("int64")),
            "model_size": datasets.List(datasets.Value("int64")),
            "pixel_to_ras": datasets.List(datasets.Value("float64")),
            "structure": text,
            "plane": text,
            "template": text,
            "item_id": text,
        }
    )


def to_hf_dataset(items: list[dict[str, Any]]) -> Any:
    """A ``datasets.Dataset`` of items (conversational ``prompt``/``completion``, ``image``)."""
    import datasets

    return datasets.Dataset.from_list(items, features=_features())


def write_jsonl(items: list[dict[str, Any]], folder: Path, split: str) -> Path:
    """Write ``folder/{split}.jsonl`` and ``folder/images/{item_id}.png``."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            name = f"images/{item['item_id']}.png"
            item["image"].save(folder / name)
            handle.write(json.dumps({**item, "image": name}) + "\n")
    return path


def write_dataset(
    out_dir: str | Path,
    num_train: int,
    num_test: int,
    seed: int,
    config: TaskConfig,
    progress: bool = True,
    num_val: int = 0,
) -> Path:
    """Render the splits and write the data folder (atomically: all of it or nothing).

    ``num_val`` = 0 writes no validation split.
    """
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        sizes = {"train": num_train, "val": num_val, "test": num_test}
        sizes = {split: size for split, size in sizes.items() if size > 0 or split != "val"}
        for split, size in sizes.items():
            items = build_items(split, size, seed, config, progress)
            to_hf_dataset(items).save_to_disk(str(tmp / "hf" / split))
            write_jsonl(items, tmp / "jsonl", split)
        meta = {
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "sizes": sizes,
            "templates": SPLIT_TEMPLATES,
            "task_config": config.to_dict(),
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / META_NAME
    if not path.is_file():
        raise InputError("not a medrl vlm data folder (no meta.json); run `medrl vlm data`", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"corrupt meta.json: {exc}", path) from exc


def load_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> Image.Image:
    """An item image as 8-bit RGB; greyscale, 16-bit, palette or RGBA files are converted.

    Raises:
        InputError: the file is missing or unreadable, or its size is not ``expected_size``.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image: {exc}", path) from exc
    if image.mode in ("I;16", "I;16B", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = float(values.max()) or 1.0
        image = Image.fromarray(np.round(values / top * 255).astype(np.uint8))
    image = image.convert("RGB")
    if expected_size is not None and tuple(image.size) != tuple(expected_size):
        raise InputError(
            f"image is {image.size[0]}x{image.size[1]} px, the item says "
            f"{expected_size[0]}x{expected_size[1]}",
            path,
        )
    return image


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Items from a JSONL file written by :func:`write_jsonl` (images opened as PIL RGB)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("JSONL file not found", path)
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"line {number}: not JSON ({exc.msg})", path) from exc
        if not isinstance(item, dict) or "prompt" not in item or "image" not in item:
            raise InputError(f"line {number}: an item needs 'prompt' and 'image'", path)
        item["image"] = load_image(path.parent / item["image"], item.get("image_size"))
        items.append(item)
    return items


def load_split(data_dir: str | Path, split: str) -> Any:
    """A split as ``datasets.Dataset``: from ``hf/`` if present, else from ``jsonl/``."""
    import datasets

    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    if split not in meta.get("sizes", {}):
        raise InputError(f"the data folder has no {split!r} split", data_dir)
    hf_dir = data_dir / "hf" / split
    if hf_dir.is_dir():
        return datasets.load_from_disk(str(hf_dir))
    return to_hf_dataset(read_jsonl(data_dir / "jsonl" / f"{split}.jsonl"))
