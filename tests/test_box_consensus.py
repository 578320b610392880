"""The shipped box model's second search from the fitted reference layout
(``search.consensus_level``, :meth:`medrl.tasks.box.BoxTask.consensus_starts`) on a built-in
scan: it runs from where the other structures put each one, records where it started, and
its choice was made on validation data recorded in the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrl.agents.checkpoint import load_model
from medrl.agents.search import search
from medrl.data.scenarios import scenario_scans
from medrl.data.sources import load_split
from medrl.errors import InputError
from medrl.geometry.boxes import box_iou, boxes_from_label_map
from medrl.models import default_model_dir


@pytest.fixture(scope="module")
def moved_scan(builtin_data):
    case = load_split("builtin:afids", "train")[0]
    (scan,) = scenario_scans([case], 1, 15.0, 20.0, 4242, False, 3.0, with_labels=True)
    return scan


def test_shipped_box_model_searches_again_from_the_fitted_layout(moved_scan) -> None:
    torch.set_num_threads(2)
    model = load_model(default_model_dir("box"))
    level = model.config.search.consensus_level
    assert level is not None and level >= 0
    chosen = model.meta["consensus_level_validation_mean_iou"]
    assert chosen[str(level)] == max(chosen.values()) > chosen["-1"]
    names = tuple(model.names)
    truth = boxes_from_label_map(moved_scan.labels, moved_scan.label_names, names)[1]
    with torch.inference_mode():
        first = search(model, moved_scan.volume, consensus_level=-1)
        second = search(model, moved_scan.volume)
    assert first.consensus_starts is None
    assert second.consensus_starts is not None and second.consensus_starts.shape == (32, 6)
    # the first search is the same in both; the second follows it in the path
    for a, b in zip(first.level_estimates, second.level_estimates, strict=True):
        np.testing.assert_allclose(a, b)
    levels = second.path_levels[0][0]
    num_levels = len(model.config.env.levels)
    assert levels[-1] == num_levels + num_levels - 1 and levels.max() >= num_levels
    restart = second.paths[0][0][np.argmax(levels >= num_levels)]
    np.testing.assert_allclose(restart, second.consensus_starts[0], atol=1e-4)
    assert second.steps > first.steps
    # on this moved, warped copy of the training template the second search is better
    assert box_iou(second.estimate, truth).mean() > box_iou(first.estimate, truth).mean()
    with pytest.raises(InputError, match="consensus_level is 3"):
        search(model, moved_scan.volume, consensus_level=3)
