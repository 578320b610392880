"""Box coordinates of each model family, and their conversion to image pixels and world mm.

Conventions (one per family, see docs/vlm.md):

* ``"qwen2.5-vl"``: absolute pixels of the image *as the processor resized it*
  (:func:`smart_resize`, multiples of 28 px). A box on a 128 x 112 image is written in the
  140 x 112 image the model saw.
* ``"qwen2-vl"``: integers on a 0-1000 scale of the image width and height (resize-free).
* ``"pixel"``: pixels of the original image (for models that see the image unresized).

Boxes are ``(x1, y1, x2, y2)`` with continuous pixel coordinates: pixel column ``i`` covers
``[i, i + 1)``, so its centre is at ``i + 0.5`` and a box around pixels 2..4 is ``(2, y, 5, y')``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOX_FORMATS = ("qwen2.5-vl", "qwen2-vl", "pixel")
PATCH_FACTOR = 28  # Qwen2-VL / Qwen2.5-VL: 14 px patches merged 2 x 2
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280
NORMALISED_SCALE = 1000.0


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """(height, width) the Qwen2-VL image processor resizes an image to.

    Same rule as ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize``
    (a test checks they agree): round each side to a multiple of ``factor``, then scale both
    sides to bring the pixel count within ``[min_pixels, max_pixels]``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of a {height} x {width} image is above 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return int(h_bar), int(w_bar)


@dataclass(frozen=True)
class BoxFrame:
    """How a model's box numbers map to pixels of the original image.

    Attributes:
        box_format: one of :data:`BOX_FORMATS`.
        image_size: (width, height) of the original image in pixels.
        model_size: (width, height) of the image the model saw (equal to ``image_size``
            except for ``"qwen2.5-vl"``, where it is the processor's resized size).
    """

    box_format: str
    image_size: tuple[int, int]
    model_size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"unknown box format {self.box_format!r}; known: {BOX_FORMATS}")
        for name in ("image_size", "model_size"):
            size = tuple(int(v) for v in getattr(self, name))
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"{name} must be (width, height) > 0, got {getattr(self, name)}")
            object.__setattr__(self, name, size)

    @classmethod
    def for_model(
        cls,
        box_format: str,
        image_size: tuple[int, int],
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> BoxFrame:
        """The frame of ``box_format`` for an image of ``image_size`` = (width, height)."""
        width, height = (int(v) for v in image_size)
        if box_format == "qwen2.5-vl":
            h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
            return cls(box_format, (width, height), (w, h))
        return cls(box_format, (width, height), (width, height))

    def _scale(self) -> np.ndarray:
        """Model units per original pixel along (x, y, x, y)."""
        width, height = self.image_size
        if self.box_format == "qwen2-vl":
            sx, sy = NORMALISED_SCALE / width, NORMALISED_SCALE / height
        elif self.box_format == "qwen2.5-vl":
            sx, sy = self.model_size[0] / width, self.model_size[1] / height
        else:
            sx, sy = 1.0, 1.0
        return np.array([sx, sy, sx, sy])

    def to_model(self, box_px: Sequence[float]) -> np.ndarray:
        """Original-pixel box -> the model's numbers (floats; round them for text)."""
        return np.asarray(box_px, dtype=np.float64) * self._scale()

    def to_pixels(self, box_model: Sequence[float]) -> np.ndarray:
        """The model's numbers -> box in original pixels."""
        return np.asarray(box_model, dtype=np.float64) / self._scale()

    @property
    def model_extent(self) -> tuple[float, float]:
        """Largest (x, y) a box may reach in model units."""
        if self.box_format == "qwen2-vl":
            return NORMALISED_SCALE, NORMALISED_SCALE
        return float(self.model_size[0]), float(self.model_size[1])


def format_box(box_model: Sequence[float]) -> str:
    """Text of a box as the model should write it: ``[x1, y1, x2, y2]`` in whole units."""
    values = [round(float(v)) for v in box_model]
    return "[" + ", ".join(str(v) for v in values) + "]"


def valid_box(box: Sequence[float] | None, extent: tuple[float, float] | None = None) -> bool:
    """True for 4 finite numbers with x1 < x2, y1 < y2 overlapping ``[0, extent]`` if given."""
    if box is None:
        return False
    array = np.asarray(box, dtype=np.float64)
    if array.shape != (4,) or not np.all(np.isfinite(array)):
        return False
    x1, y1, x2, y2 = array
    if not (x1 < x2 and y1 < y2):
        return False
    if extent is not None:
        width, height = extent
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            return False
    return True


def clip_box(box: Sequence[float], extent: tuple[float, float]) -> np.ndarray:
    """Box clipped to ``[0, width] x [0, height]``."""
    width, height = extent
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return np.array(
        [
            min(max(x1, 0), width),
            min(max(y1, 0), height),
            min(max(x2, 0), width),
            min(max(y2, 0), height),
        ]
    )


def box_area(box: Sequence[float]) -> float:
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a)
    bx1, by1, bx2, by2 = (float(v) for v in box_b)
    inter = box_area((max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2)))
    union = box_area(box_a) + box_area(box_b) - inter
    return inter / union if union > 0 else 0.0


def box_centre(box: Sequence[float]) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])


def pixel_to_ras(points_px: np.ndarray, matrix: Sequence[float]) -> np.ndarray:
    """Continuous pixel (x, y) points (N, 2) -> world RAS mm (N, 3).

    ``matrix`` is the slice geometry stored with each item: 9 numbers, the row-major 3 x 3
    matrix ``[u | v | o]`` with RAS = x * u + y * v + o (u, v: mm per pixel along x and y).
    """
    geometry = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    points = np.atleast_2d(np.asarray(points_px, dtype=np.float64))
    return points @ geometry[:, :2].T + geometry[:, 2]


def ras_to_pixel(points_ras: np.ndarray, matrix: Sequence[float]) -> np.ndarray:
    """World RAS mm (N, 3) -> continuous pixel (x, y) (N, 2), projected onto the slice."""
    geometry = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    points = np.atleast_2d(np.asarray(points_ras, dtype=np.float64)) - geometry[:, 2]
    solution, *_ = np.linalg.lstsq(geometry[:, :2], points.T, rcond=None)
    return solution.T
