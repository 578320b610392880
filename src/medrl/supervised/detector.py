"""The supervised heatmap detector: a coarse whole-head heatmap per landmark, then a local
heatmap around each coarse estimate (``local_rounds`` passes, each re-centred), positions
in world RAS mm.

Both stages sample the scan the way the agent does (:func:`medrl.envs.sampler.render_patches`
on a :class:`~medrl.envs.pyramid.ScanPyramid`, axis-aligned in RAS), so a scan in any
orientation, spacing or file format works, and training can use the agent's augmentation
unchanged. A model folder holds ``detector.yaml`` (names, settings, how it was trained) and
``detector.safetensors`` (both networks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from medrl.data.augment import AugmentParams, no_augmentation
from medrl.envs.pyramid import ScanPyramid, build_pyramid
from medrl.envs.sampler import render_patches
from medrl.errors import CheckpointError
from medrl.io.images import Volume
from medrl.io.landmarks import Landmarks
from medrl.supervised.network import HeatmapNet, heatmap_axes_mm, peak_offsets
from medrl.utils.atomic import atomic_open
from medrl.utils.yaml_io import safe_load

if TYPE_CHECKING:
    from medrl.supervised.detector_set import DetectorSet

FORMAT = "medrl-heatmap"
HEADER = "detector.yaml"
WEIGHTS = "detector.safetensors"


@dataclass(frozen=True)
class DetectorSettings:
    coarse_size: int = 64
    """Coarse stage: samples per axis of the whole-head patch ..."""
    coarse_spacing_mm: float = 4.0
    """... and their spacing (64 x 4 mm: a 256 mm view)."""
    coarse_width: int = 8
    local_size: int = 32
    """Local stage: samples per axis around a coarse estimate ..."""
    local_spacing_mm: float = 1.5
    """... and their spacing (32 x 1.5 mm: a 48 mm view)."""
    local_width: int = 8
    local_rounds: int = 1
    """Local stage passes, each re-centred on the last estimate. A second pass was as accurate
    on the left-out templates (3 folds x 2 seeds, BENCHMARKS.md) and costs a third of the
    detector's time; detectors written before 2026-12-02 say 2 in their header."""
    blur_spacing_mm: float = 2.5
    """An extra copy of the scan for the blur augmentation of the local stage."""

    @property
    def spacings_mm(self) -> list[float]:
        """The pyramid: coarse (level 0), local (level 1), blur copy (level 2)."""
        return [self.coarse_spacing_mm, self.local_spacing_mm, self.blur_spacing_mm]


def centred_offsets(spacing_mm: float, size: int, n: int, device: torch.device) -> torch.Tensor:
    """(n, size) sample offsets (mm) centred on the patch centre."""
    ramp = (torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2) * spacing_mm
    return ramp[None].expand(n, -1)


@dataclass
class HeatmapDetector:
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    settings: DetectorSettings
    coarse: HeatmapNet
    local: HeatmapNet
    training: dict[str, Any]

    @classmethod
    def new(
        cls, names: tuple[str, ...], descriptions: tuple[str, ...], settings: DetectorSettings
    ) -> HeatmapDetector:
        k = len(names)
        return cls(
            names,
            descriptions,
            settings,
            HeatmapNet(k, settings.coarse_width),
            HeatmapNet(k, settings.local_width),
            {},
        )

    # ------------------------------------------------------------------ stages
    def _patches(
        self, scans: list[ScanPyramid], scan_index: torch.Tensor, centre_ras: torch.Tensor,
        params: AugmentParams, noise: torch.Tensor | None, level: int,
    ) -> torch.Tensor:  # fmt: skip
        """(B, 1, S, S, S) patches of pyramid level ``level`` (0: coarse, 1: local)."""
        s = self.settings
        size, spacing = (
            (s.coarse_size, s.coarse_spacing_mm)
            if level == 0
            else (s.local_size, s.local_spacing_mm)
        )
        n, device = len(scan_index), centre_ras.device
        offsets = centred_offsets(spacing, size, n, device)
        levels = torch.full((n,), level, dtype=torch.long, device=device)
        return render_patches(scans, scan_index, levels, centre_ras, params, offsets, noise)[
            :, None
        ]

    def coarse_logits(
        self, scans: list[ScanPyramid], scan_index: torch.Tensor, centre_ras: torch.Tensor,
        params: AugmentParams, noise: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(B, K, H, H, H) heatmap logits of whole-head patches centred at ``centre_ras``."""
        return self.coarse(self._patches(scans, scan_index, centre_ras, params, noise, 0))

    def local_logits(
        self, scans: list[ScanPyramid], scan_index: torch.Tensor, centre_ras: torch.Tensor,
        landmark: torch.Tensor, params: AugmentParams, noise: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(B, 1, H, H, H) logits of landmark ``landmark`` (B,) in local patches."""
        logits = self.local(self._patches(scans, scan_index, centre_ras, params, noise, 1))
        return logits[torch.arange(len(scan_index), device=logits.device), landmark][:, None]

    # ------------------------------------------------------------------ inference
    def prepare(self, volume: Volume, device: torch.device | str = "cpu") -> ScanPyramid:
        """``volume`` as the detector reads it: its coarse and local levels (the training
        pyramid's first two, built the same way)."""
        return build_pyramid(volume, self.settings.spacings_mm[:2], device)

    @torch.no_grad()
    def detect(self, volume: Volume, device: torch.device | str = "cpu") -> Landmarks:
        """Every landmark the detector knows in ``volume`` (world RAS mm)."""
        position = self.detect_scans([self.prepare(volume, device)])[0]
        return Landmarks(self.names, position, self.descriptions)

    @torch.no_grad()
    def detect_scans(self, scans: list[ScanPyramid]) -> np.ndarray:
        """(len(scans), K, 3) every landmark in each prepared scan (:meth:`prepare`, or a
        view of one such as its mirror image), world RAS mm; all scans in one batch."""
        self.coarse.eval()
        self.local.eval()
        s = self.settings
        device = scans[0].levels[0].tensor.device
        n, k = len(scans), len(self.names)
        centre = torch.as_tensor(
            np.stack([scan.intensity_centre_ras for scan in scans]), dtype=torch.float32
        ).to(device)
        index = torch.arange(n, device=device)
        identity = no_augmentation(scans[0].centre_ras, n, device)
        logits = self.coarse_logits(scans, index, centre, identity)
        axis = heatmap_axes_mm(s.coarse_size, s.coarse_spacing_mm, device)
        position = (centre[:, None, :] + peak_offsets(logits, axis)).reshape(n * k, 3)
        local_axis = heatmap_axes_mm(s.local_size, s.local_spacing_mm, device)
        rows = index.repeat_interleave(k)
        landmark = torch.arange(k, device=device).repeat(n)
        params = no_augmentation(scans[0].centre_ras, n * k, device)
        for _ in range(s.local_rounds):
            logits = self.local_logits(scans, rows, position, landmark, params)
            position = position + peak_offsets(logits, local_axis)[:, 0]
        return position.reshape(n, k, 3).cpu().numpy().astype(np.float64)

    def fingerprint(self) -> list[Any]:
        """What the points depend on: the settings and both networks' weights."""
        return [asdict(self.settings), self.coarse.state_dict(), self.local.state_dict()]

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> None:
        """``detector.safetensors`` first, then ``detector.yaml`` (which marks it complete)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"coarse.{k}": v.contiguous() for k, v in self.coarse.state_dict().items()}
        tensors |= {f"local.{k}": v.contiguous() for k, v in self.local.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS))
        header = {
            "format": FORMAT,
            "names": list(self.names),
            "descriptions": list(self.descriptions),
            "settings": asdict(self.settings),
            "training": self.training,
        }
        with atomic_open(folder / HEADER) as handle:
            yaml.safe_dump(header, handle, sort_keys=False)


def is_detector_dir(folder: str | Path) -> bool:
    return (Path(folder) / HEADER).is_file()


def read_detector_header(folder: Path) -> dict[str, Any]:
    """``folder``'s ``detector.yaml`` (a single detector's or a set's); CheckpointError naming
    the folder when it has none, or the file when it cannot be read."""
    header_path = folder / HEADER
    if not header_path.is_file():
        raise CheckpointError(f"missing {HEADER}: not a supervised detector folder", folder)
    try:
        header = safe_load(header_path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CheckpointError(f"unreadable {HEADER}: {exc}", header_path) from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{HEADER} is not a mapping", header_path)
    return header


def load_detector(
    folder: str | Path, device: torch.device | str = "cpu"
) -> HeatmapDetector | DetectorSet:
    """A detector folder, or a set of detectors read as one
    (:mod:`medrl.supervised.detector_set`); CheckpointError naming what is missing or wrong."""
    from medrl.supervised.detector_set import SET_FORMAT, load_detector_set

    folder = Path(folder)
    header = read_detector_header(folder)
    if header.get("format") == SET_FORMAT:
        return load_detector_set(folder, header, device)
    return _single_detector(folder, header, device)


def load_single_detector(folder: str | Path, device: torch.device | str = "cpu") -> HeatmapDetector:
    """One detector folder; CheckpointError naming what is missing or wrong."""
    folder = Path(folder)
    return _single_detector(folder, read_detector_header(folder), device)


def _single_detector(
    folder: Path, header: dict[str, Any], device: torch.device | str
) -> HeatmapDetector:
    """The detector of ``folder`` whose ``detector.yaml`` reads ``header``."""
    weights_path = folder / WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(f"missing {WEIGHTS}: not a supervised detector folder", folder)
    try:
        if header.get("format") != FORMAT:
            raise CheckpointError(
                f"format is {header.get('format')!r}, not {FORMAT}", folder / HEADER
            )
        settings = DetectorSettings(**header["settings"])
        detector = HeatmapDetector.new(
            tuple(str(n) for n in header["names"]),
            tuple(str(d) for d in header.get("descriptions", [])),
            settings,
        )
        detector.training = dict(header.get("training") or {})
        tensors = load_file(str(weights_path), device=str(device))
        detector.coarse.load_state_dict(
            {k.removeprefix("coarse."): v for k, v in tensors.items() if k.startswith("coarse.")}
        )
        detector.local.load_state_dict(
            {k.removeprefix("local."): v for k, v in tensors.items() if k.startswith("local.")}
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"the detector is incomplete or invalid: {exc}", folder) from exc
    detector.coarse.to(device)
    detector.local.to(device)
    return detector
