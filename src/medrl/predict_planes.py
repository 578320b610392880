"""What ``medrl predict`` writes for a plane model: the planes as Slicer markups, and on
request the scan resampled into AC-PC space (:mod:`medrl.geometry.acpc`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrl.agents.search import SearchResult
from medrl.errors import InputError
from medrl.geometry.acpc import resample_acpc
from medrl.io.images import Volume, write_image
from medrl.io.plane_markups import write_planes

ALIGNED_SUFFIX = "_acpc.nii.gz"
EDGE_MARGIN_MM = 10.0
"""A plane whose centre ends closer than this to the scan's edge was cut off by the field of
view (the search cannot leave the scan, so it stops at the edge)."""


def aligned_path(markups_path: Path) -> Path:
    """``NAME.mrk.json`` -> ``NAME_acpc.nii.gz`` beside it."""
    name = markups_path.name.removesuffix(".mrk.json")
    return markups_path.with_name(name + ALIGNED_SUFFIX)


def write_plane_outputs(
    output: Path,
    volume: Volume,
    result: SearchResult,
    coordinate_system: str = "RAS",
    write_aligned: bool = False,
) -> None:
    """Write the planes (and the AC-PC-aligned scan first, so that the markups file, which
    marks the scan as done, comes last). InputError naming the scan when a plane's centre lies
    within :data:`EDGE_MARGIN_MM` of the scan's edge (the field of view cuts the plane off)."""
    index = volume.world_to_index(result.estimate[:, :3])
    size = np.asarray(volume.shape_xyz, dtype=np.float64)
    to_edge_mm = (np.minimum(index, size - 1 - index) * volume.spacing_mm).min(axis=1)
    if np.any(to_edge_mm < EDGE_MARGIN_MM):
        cut = [
            f"{name} ({max(float(d), 0.0):.1f} mm)"
            for name, d in zip(result.names, to_edge_mm, strict=True)
            if d < EDGE_MARGIN_MM
        ]
        raise InputError(
            f"the field of view does not contain the plane(s) found: the centre of "
            f"{', '.join(cut)} lies at the scan's edge (less than {EDGE_MARGIN_MM:g} mm); "
            "is the whole brain in the scan?",
            volume.source,
        )
    if write_aligned:
        names = list(result.names)
        if not {"MSP", "ACPC"} <= set(names):
            raise InputError("--write-aligned needs a model of both the MSP and the AC-PC plane")
        msp, acpc = result.estimate[names.index("MSP")], result.estimate[names.index("ACPC")]
        write_image(resample_acpc(volume, msp, acpc), aligned_path(output))
    write_planes(output, result.names, result.estimate, coordinate_system, result.descriptions)
