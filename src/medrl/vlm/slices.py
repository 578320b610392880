"""2D slices of a 3D template, resampled in world coordinates, with random pose and contrast.

Display convention (radiological, stated in every prompt's docs): axial and coronal slices show
the subject's right on the image's left; axial slices have anterior at the top, coronal and
sagittal slices superior at the top; sagittal slices have anterior on the left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medrl.io.images import Volume

PLANES = ("axial", "coronal", "sagittal")

# (u, v, n): world direction of +x pixel, of +y pixel, and the slice normal (RAS).
_BASES = {
    "axial": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "coronal": ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
}
# Range of the slice position along the normal (mm) that cuts through the cerebrum.
SLICE_RANGE_MM = {"axial": (-30.0, 65.0), "coronal": (-85.0, 50.0), "sagittal": (-60.0, 60.0)}
BRAIN_CENTRE_RAS = np.array([0.0, -18.0, 10.0])


@dataclass(frozen=True)
class SliceGeometry:
    """Where a slice lies: RAS = x * u + y * v + origin for continuous pixel (x, y)."""

    plane: str
    width: int
    height: int
    u_mm: np.ndarray  # (3,) world step per pixel along x
    v_mm: np.ndarray  # (3,) world step per pixel along y
    origin_ras: np.ndarray  # (3,) world position of pixel corner (0, 0)

    @property
    def matrix(self) -> list[float]:
        """Row-major 3 x 3 ``[u | v | origin]`` (the ``pixel_to_ras`` column)."""
        return np.column_stack([self.u_mm, self.v_mm, self.origin_ras]).reshape(-1).tolist()

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u_mm, self.v_mm)
        return n / np.linalg.norm(n)

    def pixel_centres_ras(self) -> np.ndarray:
        """(height, width, 3) world positions of the pixel centres."""
        ys, xs = np.meshgrid(
            np.arange(self.height) + 0.5, np.arange(self.width) + 0.5, indexing="ij"
        )
        return xs[..., None] * self.u_mm + ys[..., None] * self.v_mm + self.origin_ras

    def to_pixel(self, points_ras: np.ndarray) -> np.ndarray:
        """(N, 3) RAS -> (N, 2) continuous pixel positions projected onto the slice."""
        basis = np.column_stack([self.u_mm, self.v_mm])
        rel = np.atleast_2d(points_ras) - self.origin_ras
        return np.linalg.lstsq(basis, rel.T, rcond=None)[0].T


def make_geometry(
    plane: str,
    offset_mm: float,
    width: int,
    height: int,
    pixel_mm: float,
    rotation_deg: float = 0.0,
    centre_shift_mm: tuple[float, float] = (0.0, 0.0),
) -> SliceGeometry:
    """A slice of ``plane`` at ``offset_mm`` along its normal, centred near the brain centre."""
    if plane not in _BASES:
        raise ValueError(f"unknown plane {plane!r}; known: {PLANES}")
    u, v, n = (np.array(a) for a in _BASES[plane])
    angle = np.deg2rad(rotation_deg)
    u_rot = np.cos(angle) * u + np.sin(angle) * v
    v_rot = -np.sin(angle) * u + np.cos(angle) * v
    centre = BRAIN_CENTRE_RAS - np.dot(BRAIN_CENTRE_RAS, n) * n + offset_mm * n
    centre = centre + centre_shift_mm[0] * u + centre_shift_mm[1] * v
    u_mm, v_mm = u_rot * pixel_mm, v_rot * pixel_mm
    origin = centre - (width / 2.0) * u_mm - (height / 2.0) * v_mm
    return SliceGeometry(plane, width, height, u_mm, v_mm, origin)


def sample(volume: Volume, points_ras: np.ndarray, order: int) -> np.ndarray:
    """Values of ``volume`` at world points (..., 3): linear (order 1) or nearest (order 0)."""
    from scipy.ndimage import map_coordinates

    shape = points_ras.shape[:-1]
    index = volume.world_to_index(points_ras.reshape(-1, 3), frame="RAS")  # (N, 3) i, j, k
    coords = index[:, ::-1].T  # array axes are (k, j, i)
    values = map_coordinates(volume.array, coords, order=order, mode="constant", cval=0.0)
    return values.reshape(shape)


def render_intensity(
    values: np.ndarray, scale: float, rng: np.random.Generator, augment: bool
) -> np.ndarray:
    """Grey values in [0, 1] -> uint8 (H, W, 3) with random gamma, contrast and noise."""
    image = np.clip(values / max(scale, 1e-6), 0.0, 1.0)
    if augment:
        image = image ** float(np.exp(rng.normal(0.0, 0.2)))
        image = image * float(rng.uniform(0.85, 1.15))
        image = image + rng.normal(0.0, 0.02, size=image.shape)
    grey = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def draw_box(rgb: np.ndarray, box_px: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Copy of ``rgb`` with a 1-pixel outline of ``box_px`` (continuous edges)."""
    out = rgb.copy()
    height, width = out.shape[:2]
    x1, y1 = int(np.floor(box_px[0])), int(np.floor(box_px[1]))
    x2, y2 = int(np.ceil(box_px[2])) - 1, int(np.ceil(box_px[3])) - 1
    x1, x2 = max(0, x1), min(width - 1, x2)
    y1, y2 = max(0, y1), min(height - 1, y2)
    out[y1, x1 : x2 + 1] = colour
    out[y2, x1 : x2 + 1] = colour
    out[y1 : y2 + 1, x1] = colour
    out[y1 : y2 + 1, x2] = colour
    return out
