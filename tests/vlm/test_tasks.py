"""Items rendered from the real templates and atlas: reproducible, consistent, checked input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medrl.errors import InputError
from medrl.vlm.atlas import cortical_label_names, landmark_phrase, region_id, region_names
from medrl.vlm.boxes import BoxFrame, box_iou, pixel_to_ras
from medrl.vlm.masks import rle_to_mask
from medrl.vlm.rewards import choice_accuracy_reward, iou_reward, semantic_reward
from medrl.vlm.tasks import QUESTION_TYPES, TaskConfig, generate_item, grounding_item

pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def anatomy(builtin_data):
    """MNI152NLin6Asym and its atlas, from the built-in data (fetched by tests/conftest.py)."""
    from medrl.vlm.atlas import load_anatomy

    return load_anatomy("MNI152NLin6Asym")


def test_label_names_and_lookup() -> None:
    names = cortical_label_names()
    assert len(names) == 48 and names[1] == "Frontal Pole" and names[48] == "Occipital Pole"
    assert region_names()[102] == "left Insular Cortex"
    assert region_id("Right insular cortex") == 2
    with pytest.raises(InputError, match="unknown structure 'Insular Cortex'"):
        region_id("Insular Cortex")  # no hemisphere
    with pytest.raises(InputError, match="did you mean"):
        region_id("left Insula Cortex")
    assert landmark_phrase("R superior LMS") == "right superior lateral mesencephalic sulcus"


def test_items_are_reproducible_and_differ_by_seed(anatomy) -> None:
    config = TaskConfig()
    first = generate_item(anatomy, config, seed=3, index=5)
    again = generate_item(anatomy, config, seed=3, index=5)
    other = generate_item(anatomy, config, seed=4, index=5)
    assert first["answer"] == again["answer"] and first["prompt"] == again["prompt"]
    assert np.array_equal(np.asarray(first["image"]), np.asarray(again["image"]))
    assert not np.array_equal(np.asarray(first["image"]), np.asarray(other["image"]))


def test_every_question_type_is_consistent(anatomy) -> None:
    config = TaskConfig()
    frame = config.frame
    assert frame.model_size == (140, 112)  # the processor resizes 128 x 112 images
    for question_type in QUESTION_TYPES:
        cfg = TaskConfig(question_weights={question_type: 1.0})
        for index in range(4):
            item = generate_item(anatomy, cfg, seed=0, index=index)
            assert item["question_type"] == question_type
            assert item["image"].size == (128, 112) and item["image"].mode == "RGB"
            target = item["completion"][0]["content"]
            # the SFT target earns full reward from the rewards that apply to it
            kwargs = {k: [item[k]] for k in item if k not in ("prompt", "completion", "image")}
            if item["task"] == "grounding":
                # the answer is in whole model units: exactly the rounding loss, no more
                rounded = np.round(frame.to_model(item["box_px"]))
                expected = box_iou(frame.to_pixels(rounded), item["box_px"])
                assert iou_reward([None], [target], **kwargs)[0] == pytest.approx(expected)
                assert expected > 0.75
                mask = rle_to_mask(item["target_mask"], (112, 128))
                # the target box (up to rounding) is the semantic reward's best box
                assert semantic_reward([None], [target], **kwargs)[0] > 0.75
                assert mask.any()
                if question_type == "ground_structure":
                    rows, cols = np.nonzero(mask)
                    assert item["box_px"] == [
                        cols.min(),
                        rows.min(),
                        cols.max() + 1,
                        rows.max() + 1,
                    ]
            else:
                assert choice_accuracy_reward([None], [target], **kwargs) == [1.0]
                assert item["answer"] in "ABCD"[: len(item["options"])]


def test_structure_side_matches_world_coordinates(anatomy) -> None:
    cfg = TaskConfig(question_weights={"ground_structure": 1.0})
    for index in range(6):
        item = generate_item(anatomy, cfg, seed=1, index=index)
        box = np.asarray(item["box_px"])
        centre = np.array([[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]])
        x_ras = pixel_to_ras(centre, item["pixel_to_ras"])[0, 0]
        side = item["structure"].split()[0]
        # radiological display: the subject's right is on the image left
        assert (x_ras > 0) == (side == "right"), (item["structure"], x_ras)


def test_grounding_item_rejects_bad_requests(anatomy) -> None:
    config = TaskConfig(augment=False)
    rng = np.random.default_rng(0)
    item = grounding_item(anatomy, "left Insular Cortex", "axial", 5.0, config, rng)
    assert item["structure"] == "left Insular Cortex"
    frame = BoxFrame(item["box_format"], tuple(item["image_size"]), tuple(item["model_size"]))
    assert frame.box_format == "qwen2.5-vl"
    with pytest.raises(InputError, match="unknown structure"):
        grounding_item(anatomy, "left Hippocampus", "axial", 5.0, config, rng)
    with pytest.raises(InputError, match="pixels in the axial slice"):
        grounding_item(anatomy, "left Frontal Pole", "axial", 60.0, config, rng)  # above it
    with pytest.raises(InputError, match="unknown plane"):
        grounding_item(anatomy, "left Frontal Pole", "oblique", 0.0, config, rng)
    with pytest.raises(InputError, match="unknown question types"):
        TaskConfig(question_weights={"count_lesions": 1.0})


def test_dataset_and_jsonl_round_trip(tmp_path, builtin_data) -> None:
    pytest.importorskip("datasets")
    from medrl.vlm.dataset import load_image, load_split, read_jsonl, write_dataset

    config = TaskConfig()
    out = write_dataset(tmp_path / "data", 6, 4, seed=2, config=config, progress=False, num_val=3)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["templates"]["train"] == meta["templates"]["val"] == "MNI152NLin2009cAsym"
    assert meta["templates"]["test"] == "MNI152NLin6Asym"
    assert meta["sizes"] == {"train": 6, "val": 3, "test": 4}
    train = load_split(out, "train")
    val = load_split(out, "val")
    test = load_split(out, "test")
    assert len(train) == 6 and len(val) == 3 and len(test) == 4
    assert set(train["template"]) == set(val["template"]) == {"MNI152NLin2009cAsym"}
    # validation items are other slices of the training template, not copies of train items
    assert not set(val["item_id"]) & set(train["item_id"])
    assert all(np.asarray(v).tobytes() != np.asarray(t).tobytes()
               for v in val["image"] for t in train["image"])  # fmt: skip
    no_val = write_dataset(tmp_path / "nv", 2, 2, seed=2, config=config, progress=False)
    with pytest.raises(InputError, match="no 'val' split"):
        load_split(no_val, "val")
    assert set(test["template"]) == {"MNI152NLin6Asym"}
    assert train[0]["prompt"][1]["role"] == "user" and isinstance(train[0]["image"], Image.Image)
    items = read_jsonl(out / "jsonl" / "test.jsonl")
    assert [i["answer"] for i in items] == test["answer"]
    assert np.array_equal(np.asarray(items[0]["image"]), np.asarray(test[0]["image"]))
    # bad images: wrong size, other modes are converted, unreadable files named
    grey = tmp_path / "grey16.png"
    Image.fromarray(np.full((112, 128), 4000, dtype=np.uint16)).save(grey)
    assert load_image(grey, (128, 112)).mode == "RGB"
    with pytest.raises(InputError, match="128x112 px, the item says 64x64"):
        load_image(grey, (64, 64))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"broken\.png"):
        load_image(broken)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": []}\n')
    with pytest.raises(InputError, match="line 1"):
        read_jsonl(bad)


def test_impossible_data_settings_name_the_setting(anatomy) -> None:
    rare = TaskConfig(question_weights={"which_structure": 1.0}, min_structure_px=10**6)
    with pytest.raises(InputError, match=r"data\.min_structure_px = 1000000"):
        generate_item(anatomy, rare, seed=0, index=0, max_tries=2)
    # a 1 m landmark box never fits a 128 x 112 image of 1.75 mm pixels
    huge = TaskConfig(question_weights={"ground_landmark": 1.0}, landmark_box_mm=1000.0)
    with pytest.raises(InputError, match=r"lower data\.landmark_box_mm"):
        generate_item(anatomy, huge, seed=0, index=0, max_tries=2)


def test_ground_marked_draws_the_answer_box(anatomy) -> None:
    cfg = TaskConfig(question_weights={"ground_marked": 1.0}, marked_side_px=(20.0, 40.0))
    for index in range(5):
        item = generate_item(anatomy, cfg, seed=7, index=index)
        x1, y1, x2, y2 = (int(v) for v in item["box_px"])
        assert 20 <= x2 - x1 <= 40 and 20 <= y2 - y1 <= 40
        assert x1 >= 0 and x2 <= 128 and y1 >= 0 and y2 <= 112
        rgb = np.asarray(item["image"])
        red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)
        # the outline is drawn exactly on the box edges: its red pixels span the box
        rows, cols = np.nonzero(red)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x1, y1, x2, y2)
        mask = rle_to_mask(item["target_mask"], (112, 128))
        assert mask.sum() == (x2 - x1) * (y2 - y1) and mask[y1, x1] and not mask[y2 % 112, x2 % 128]
    with pytest.raises(InputError, match="marked_side_px"):
        TaskConfig(question_weights={"ground_marked": 1.0}, marked_side_px=(40.0, 20.0))
