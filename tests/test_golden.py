"""Golden test: the shipped landmark model, now one task of the family, finds the same points.

``golden/shipped_afids_search.json`` was written by the landmark-only code before the task
protocol (commit 398d54e): the then shipped model's (kept in ``golden/afids_2009c_model``,
trained on MNI152NLin2009cAsym alone, since replaced by the four-brain model) search of the
built-in test template (MNI152NLin6Asym) moved by the evaluation's first rigid transform
(seed 1000). The search through the generic kernel must give the same points, level by level,
and take as many steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medrl.agents.checkpoint import load_model
from medrl.agents.search import search
from medrl.data.scenarios import move_case, random_rigid
from medrl.data.sources import load_split

GOLDEN = Path(__file__).parent / "golden" / "shipped_afids_search.json"
GOLDEN_MODEL = Path(__file__).parent / "golden" / "afids_2009c_model"


def test_shipped_landmark_model_search_is_unchanged(builtin_data) -> None:
    expected = json.loads(GOLDEN.read_text())
    torch.set_num_threads(1)
    model = load_model(GOLDEN_MODEL)
    assert model.kind == "landmark" and list(model.names) == expected["names"]
    case = load_split("builtin:afids", "test")[0]
    assert case.landmarks is not None
    truth = case.landmarks.subset(list(model.names))
    volume, _ = move_case(case.volume, truth, random_rigid(1000, 15.0, 20.0))
    with torch.inference_mode():
        result = search(model, volume)
    assert result.steps == expected["steps"]
    np.testing.assert_allclose(result.estimate, expected["points_ras"], atol=1e-4, rtol=0)
    for level, points in zip(result.level_estimates, expected["level_points_ras"], strict=True):
        np.testing.assert_allclose(level, points, atol=1e-4, rtol=0)
