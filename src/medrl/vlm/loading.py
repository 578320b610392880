"""Loading a model and its processor, with the processor's resize tied to the data's.

Qwen2.5-VL boxes are written in pixels of the image *as the processor resized it*; the data
rows store that size (``model_size``), computed from ``data.min_pixels``/``data.max_pixels``.
A hub model's processor has its own pixel range (Qwen2.5-VL-3B: up to 12845056 pixels), so
:func:`load_model` sets the range from the config's ``data`` section and
:func:`check_processor_size` checks, before any training or evaluation, that the processor
really resizes the rows' images to their ``model_size``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from medrl.errors import CheckpointError, InputError
from medrl.vlm.boxes import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS


def pixel_range(config: dict[str, Any]) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a config's ``data`` section (the TaskConfig defaults)."""
    data = config.get("data") or {}
    return (
        int(data.get("min_pixels", DEFAULT_MIN_PIXELS)),
        int(data.get("max_pixels", DEFAULT_MAX_PIXELS)),
    )


def set_pixel_range(processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Make the processor resize images into ``[min_pixels, max_pixels]`` pixels.

    transformers 5.23's ``Qwen2VLImageProcessor`` reads the range from ``size``
    (``shortest_edge`` = min_pixels, ``longest_edge`` = max_pixels); its ``min_pixels`` /
    ``max_pixels`` attributes, when set, override ``size`` at every call, so they are cleared.
    """
    from transformers.image_processing_utils import SizeDict

    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return
    image_processor.size = SizeDict(shortest_edge=int(min_pixels), longest_edge=int(max_pixels))
    for name in ("min_pixels", "max_pixels"):
        if getattr(image_processor, name, None) is not None:
            setattr(image_processor, name, None)


def load_processor(model_dir: str | Path, config: dict[str, Any] | None = None) -> Any:
    """The processor of a folder or cached hub id, resizing as ``config["data"]`` says."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a vision-language processor: {exc}", model_dir) from exc
    if config is not None:
        set_pixel_range(processor, *pixel_range(config))
    return processor


def load_weights(model_dir: str | Path, dtype: Any = None) -> Any:
    """The model of a folder or cached hub id; never downloads."""
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a vision-language model: {exc}", model_dir) from exc


def load_model(
    model_dir: str | Path, dtype: Any = None, config: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """(model, processor) from a folder or hub id in the local cache; never downloads.

    With ``config``, the processor resizes images within the config's
    ``data.min_pixels``/``data.max_pixels``.
    """
    processor = load_processor(model_dir, config)
    return load_weights(model_dir, dtype), processor


def processed_size(processor: Any, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """(width, height) the processor resizes an image of ``image_size`` to; None if unknown.

    Runs the processor as training and evaluation do (chat template text with one image) on
    a blank image and reads the patch grid it reports (``image_grid_thw``).
    """
    from PIL import Image

    image = Image.new("RGB", (int(image_size[0]), int(image_size[1])))
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    out = processor(text=[text], images=[[image]], return_tensors="pt")
    grid = out.get("image_grid_thw")
    patch = getattr(getattr(processor, "image_processor", None), "patch_size", None)
    if grid is None or patch is None:
        return None
    _t, h_patches, w_patches = (int(v) for v in grid[0].tolist())
    return w_patches * int(patch), h_patches * int(patch)


def check_processor_size(processor: Any, dataset: Any, data_dir: str | Path) -> None:
    """Check that the processor resizes the rows' images to their ``model_size``.

    Only ``qwen2.5-vl`` rows are checked: other formats do not depend on the resize. Each
    distinct (image_size, model_size) pair of the split is checked once.

    Raises:
        InputError: naming the data folder, when a box target would be in a frame other than
            the one the model sees (data made with other ``data.min_pixels/max_pixels``).
    """
    columns = zip(dataset["box_format"], dataset["image_size"], dataset["model_size"], strict=True)
    pairs = {
        (tuple(int(v) for v in image_size), tuple(int(v) for v in model_size))
        for box_format, image_size, model_size in columns
        if box_format == "qwen2.5-vl"
    }
    for image_size, model_size in sorted(pairs):
        seen = processed_size(processor, image_size)
        if seen is None:
            warnings.warn(
                "cannot tell the size the processor resizes images to; box targets assume "
                f"{model_size[0]}x{model_size[1]}",
                stacklevel=2,
            )
            return
        if seen != model_size:
            raise InputError(
                f"the processor resizes {image_size[0]}x{image_size[1]} images to "
                f"{seen[0]}x{seen[1]}, but the rows' boxes are in {model_size[0]}x{model_size[1]} "
                "(their model_size): render the data with the same data.min_pixels/max_pixels "
                "as the config (medrl vlm data --config ...)",
                data_dir,
            )
