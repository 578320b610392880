"""Rewards and box conventions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medrl.vlm.boxes import BoxFrame, box_iou, format_box, pixel_to_ras, ras_to_pixel, smart_resize
from medrl.vlm.masks import box_coverage, box_dice, mask_to_rle, rle_to_mask
from medrl.vlm.parsing import choice_letter, parse_box
from medrl.vlm.rewards import (
    choice_accuracy_reward,
    format_reward,
    iou_reward,
    semantic_reward,
    spatial_score,
)


def _wrap(answer: str, think: str = "look") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


def test_format_reward_plain_and_conversational() -> None:
    completions = [
        _wrap("A"),
        " <think>x\ny</think>\n<answer>[1, 2, 3, 4]</answer>\n",
        [{"role": "assistant", "content": _wrap("B")}],
        [{"role": "assistant", "content": [{"type": "text", "text": _wrap("C")}]}],
        "<answer>A</answer>",
        "<think>a</think><answer>A</answer> trailing",
        "",
        None,
        12345,
        [{"role": "assistant"}],
        "<think>x</think><answer>a</answer><answer>b</answer>",  # two answers
        "<think>x</think><think>y</think><answer>a</answer>",  # two thinks
        "<think>x<answer>a</answer></think><answer>b</answer>",  # answer inside think
    ]
    assert format_reward([None] * 13, completions) == [1, 1, 1, 1] + [0] * 9


def test_choice_accuracy_values() -> None:
    completions = [
        _wrap("B"),  # exact
        _wrap("(B)"),  # exact, decorated
        _wrap("B. Insular Cortex"),  # right letter with extra text
        _wrap("A"),  # wrong letter
        _wrap("A or B"),  # two letters: unreadable
        "B",  # no tags: whole text is the answer
        "I think it is B because",  # right letter with extra text, no tags
        "",
        "<answer></answer>",
        [{"role": "assistant", "content": _wrap("B")}],
    ]
    n = len(completions)
    options = [["x", "y", "z", "w"]] * n
    rewards = choice_accuracy_reward([None] * n, completions, answer=["B"] * n, options=options)
    assert rewards == [1.0, 1.0, 0.5, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0]


def test_choice_accuracy_skips_grounding_rows_and_respects_option_count() -> None:
    rewards = choice_accuracy_reward(
        [None, None], [_wrap("A"), _wrap("D")], answer=["[1,2,3,4]", "D"], options=[[], ["p", "q"]]
    )
    assert rewards == [None, 0.0]  # D is not an option of a two-option question


def test_parse_box_forms_and_garbage() -> None:
    assert parse_box("[10, 20, 30, 40]").tolist() == [10, 20, 30, 40]
    assert parse_box("(10.5,20),(30,40.25)").tolist() == [10.5, 20, 30, 40.25]
    assert parse_box('{"bbox_2d": [1, 2, 3, 4], "label": "x"}').tolist() == [1, 2, 3, 4]
    assert parse_box("[30, 20, 10, 40]") is None  # x2 < x1
    assert parse_box("[10, 20, 10, 40]") is None  # zero width
    assert parse_box("[1, 2, 3]") is None
    assert parse_box("[6, 7, 7, 70, 7]") is None  # five numbers are not a box
    assert parse_box("[1, 2, 3, 4]. 5 mm wide").tolist() == [1, 2, 3, 4]
    # a number before the bracket is not part of the box; four of five numbers never are
    assert parse_box("Box 1 [10, 20, 30, 40]").tolist() == [10, 20, 30, 40]
    assert parse_box("region 2: (10, 20), (30, 40)").tolist() == [10, 20, 30, 40]
    assert parse_box("1 2 3 4 5") is None
    assert parse_box("[0, 6, 7, 7, 70]") is None  # no run of four inside a list of five
    assert parse_box("nan nan nan nan") is None
    assert parse_box(None) is None
    assert choice_letter("B", 2) == ("B", True)
    assert choice_letter("the answer", 4) == (None, False)


def test_smart_resize_matches_transformers() -> None:
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    for height, width in [(112, 128), (100, 130), (37, 300), (1000, 1400), (20, 20), (224, 224)]:
        for min_pixels, max_pixels in [(56 * 56, 28 * 28 * 1280), (3136, 12544)]:
            assert smart_resize(height, width, 28, min_pixels, max_pixels) == reference(
                height, width, 28, min_pixels, max_pixels
            )


def test_box_frames_round_trip_on_a_resized_image() -> None:
    # 128 x 112 image: the processor resizes it to 140 x 112 (round(128/28)=5 -> 140).
    frame = BoxFrame.for_model("qwen2.5-vl", (128, 112))
    assert frame.model_size == (140, 112)
    box_px = [32.0, 28.0, 64.0, 56.0]
    assert frame.to_model(box_px).tolist() == [35.0, 28.0, 70.0, 56.0]
    assert frame.to_pixels([35, 28, 70, 56]).tolist() == pytest.approx(box_px)
    assert format_box(frame.to_model(box_px)) == "[35, 28, 70, 56]"
    normalised = BoxFrame.for_model("qwen2-vl", (128, 112))
    assert normalised.to_model(box_px).tolist() == [250.0, 250.0, 500.0, 500.0]
    assert normalised.to_pixels([250, 250, 500, 500]).tolist() == pytest.approx(box_px)
    with pytest.raises(ValueError, match="unknown box format"):
        BoxFrame.for_model("llava", (10, 10))


def test_box_frame_agrees_with_the_real_processor() -> None:
    pytest.importorskip("torchvision")  # the Qwen2-VL image processor needs it
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    image = Image.new("RGB", (130, 100))
    out = processor(images=[image], return_tensors="pt")
    _t, h_patches, w_patches = out["image_grid_thw"][0].tolist()
    frame = BoxFrame.for_model("qwen2.5-vl", (130, 100))
    assert (w_patches * 14, h_patches * 14) == frame.model_size == (140, 112)


def test_pixel_world_round_trip() -> None:
    # axial slice at z = 10 mm, 2 mm pixels, x to the subject's left, y to posterior
    matrix = [-2, 0, 50, 0, -2, 60, 0, 0, 10]
    points = np.array([[0.0, 0.0], [12.5, 3.0]])
    ras = pixel_to_ras(points, matrix)
    assert ras.tolist() == [[50, 60, 10], [25, 54, 10]]
    assert ras_to_pixel(ras, matrix) == pytest.approx(points)


def _iou_columns(n: int, box_format: str = "pixel") -> dict:
    return {
        "box_px": [[10, 10, 20, 20]] * n,
        "box_format": [box_format] * n,
        "image_size": [[100, 100]] * n,
        "model_size": [[100, 100]] * n,
    }


def test_iou_reward_hand_computed() -> None:
    completions = [
        _wrap("[10, 10, 20, 20]"),  # perfect
        _wrap("[15, 10, 25, 20]"),  # half shifted: inter 50, union 150 -> 1/3
        _wrap("[70, 70, 80, 80]"),  # miss: centres 60*sqrt2 apart
        _wrap("[-50, -50, -10, -5]"),  # entirely outside -> 0
        _wrap("[-10, 10, 20, 20]"),  # partly outside: clipped to [0,10,20,20] -> IoU 0.5
        _wrap("[10, 10, 20, 20, 30]"),  # five numbers: malformed
        _wrap("no box here"),
        "garbage <answer>",
        "",
    ]
    rewards = iou_reward([None] * 9, completions, **_iou_columns(9))
    miss = 0.2 * (1 - 60 * math.sqrt(2) / (100 * math.sqrt(2)))
    assert rewards == pytest.approx([1.0, 1 / 3, miss, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)


def test_spatial_score_is_continuous_as_a_box_slides_onto_the_truth() -> None:
    # truth [40, 40, 60, 60] on a 128 x 112 image (diagonal 170.08), a 20 x 20 box shifted in x
    diagonal = math.hypot(128, 112)
    truth = [40, 40, 60, 60]

    def shifted(dx: float) -> float:
        return spatial_score([40 + dx, 40, 60 + dx, 60], truth, (128, 112))

    def feedback(d: float) -> float:
        return 0.2 * (1 - d / diagonal)

    assert shifted(20) == pytest.approx(feedback(20))  # touching: 0.1765
    # 1 px overlap: IoU 20/780 = 0.026 is below the feedback 0.1777 (before: 0.026, a drop)
    assert shifted(19) == pytest.approx(feedback(19)) and feedback(19) == pytest.approx(
        0.17766, abs=1e-5
    )
    # 5 px overlap: IoU 100/700 = 0.143 < feedback 0.1824 (before: 0.143)
    assert shifted(15) == pytest.approx(feedback(15)) and feedback(15) == pytest.approx(
        0.18236, abs=1e-5
    )
    assert shifted(13) == pytest.approx(140 / 660)  # 7 px overlap: IoU 0.212 > 0.1847
    assert shifted(0) == 1.0
    scores = [shifted(dx) for dx in np.arange(40, -0.01, -0.25)]
    assert min(np.diff(scores)) >= 0  # monotone
    assert np.abs(np.diff(scores)).max() < 0.03  # no jump (before: -0.15 at first overlap)
    # the area ratio keeps a box of the wrong size from collecting the feedback by its centre
    whole_image = spatial_score([0, 0, 128, 112], truth, (128, 112))
    assert whole_image == pytest.approx(400 / (128 * 112))  # its IoU, 0.028 (not ~0.18)
    dot = spatial_score([49, 49, 51, 51], truth, (128, 112))  # centred, 2 x 2
    assert dot == pytest.approx(4 / 400)  # IoU = area ratio = 0.01, feedback 0.2 * 0.01


def test_iou_reward_reads_each_convention() -> None:
    # true box [32, 28, 64, 56] on a 128 x 112 image, written the way each family writes it
    columns = {"box_px": [[32, 28, 64, 56]] * 2, "image_size": [[128, 112]] * 2}
    qwen25 = iou_reward(
        [None],
        [_wrap("[35, 28, 70, 56]")],
        box_px=columns["box_px"][:1],
        image_size=columns["image_size"][:1],
        box_format=["qwen2.5-vl"],
        model_size=[[140, 112]],
    )
    qwen2 = iou_reward(
        [None],
        [_wrap("[250, 250, 500, 500]")],
        box_px=columns["box_px"][:1],
        image_size=columns["image_size"][:1],
        box_format=["qwen2-vl"],
        model_size=[[128, 112]],
    )
    assert qwen25 == [pytest.approx(1.0)] and qwen2 == [pytest.approx(1.0)]
    # the classic bug: a Qwen2.5-VL box read as original pixels scores less than 1
    wrong = iou_reward(
        [None],
        [_wrap("[35, 28, 70, 56]")],
        box_px=[[32, 28, 64, 56]],
        image_size=[[128, 112]],
        box_format=["pixel"],
        model_size=[[128, 112]],
    )
    assert wrong[0] == pytest.approx(29 / (35 + 32 - 29))  # overlap x 35..64, heights equal


def test_iou_reward_none_for_vqa_and_bad_columns_give_zero() -> None:
    rewards = iou_reward(
        [None, None],
        [_wrap("[1, 1, 2, 2]"), _wrap("[1, 1, 2, 2]")],
        box_px=[[], [0, 0, 2, 2]],
        box_format=["pixel", "unknown-format"],
        image_size=[[10, 10], [10, 10]],
        model_size=[[10, 10], [10, 10]],
    )
    assert rewards == [None, 0.0]


def test_mask_rle_round_trip_and_coverage() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    runs = mask_to_rle(mask)
    assert runs == [8, 3, 3, 3, 7]
    assert np.array_equal(rle_to_mask(runs, (4, 6)), mask)
    full = np.ones((2, 2), dtype=bool)
    assert mask_to_rle(full) == [0, 4]
    with pytest.raises(ValueError, match="sum to"):
        rle_to_mask([1, 2], (4, 6))
    # box [2, 1, 5, 3] is exactly the mask; [1, 1, 5, 3] has 6 of 8 pixels on it
    assert box_coverage(mask, [2, 1, 5, 3]) == 1.0
    assert box_coverage(mask, [1, 1, 5, 3]) == 0.75
    # fractional edge: [1.5, 1, 5, 3]: area 7, of which 6 on the mask
    assert box_coverage(mask, [1.5, 1, 5, 3]) == pytest.approx(6 / 7)
    # Dice 2 |B & M| / (|B| + |M|), |M| = 6: exact box 1; [1, 1, 5, 3] 12 / 14; [1.5, ...] 12 / 13
    assert box_dice(mask, [2, 1, 5, 3]) == 1.0
    assert box_dice(mask, [1, 1, 5, 3]) == pytest.approx(12 / 14)
    assert box_dice(mask, [1.5, 1, 5, 3]) == pytest.approx(12 / 13)
    assert box_dice(mask, [0, 0, 1, 1]) == 0.0
    assert box_dice(np.zeros((4, 6), dtype=bool), [0, 0, 0, 4]) == 0.0  # empty box and mask


def _semantic(mask: np.ndarray, boxes: list, box_px: list | None = None) -> list:
    """semantic_reward of ``boxes`` (pixel units) on ``mask``, with ``box_px`` as true box."""
    height, width = mask.shape
    n = len(boxes)
    columns = {
        "target_mask": [mask_to_rle(mask)] * n,
        "box_format": ["pixel"] * n,
        "image_size": [[width, height]] * n,
        "model_size": [[width, height]] * n,
    }
    if box_px is not None:
        columns["box_px"] = [box_px] * n
    completions = [b if isinstance(b, list) and isinstance(b[0], dict) else _wrap(str(b))
                   for b in boxes]  # fmt: skip
    return semantic_reward([None] * n, completions, **columns)


def test_semantic_reward_scores_the_box_region() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:6, 2:6] = True  # the named structure, a filled 4 x 4 square: its box has Dice 1
    boxes = [
        [2, 2, 6, 6],  # on the structure
        [2, 2, 10, 6],  # twice as wide: 2 * 16 / (32 + 16)
        [6, 2, 10, 6],  # next to it (touching, no overlap): 0
        "[1, 1]",  # malformed: 0
        [{"role": "assistant", "content": _wrap("[4, 4, 8, 8]")}],  # a quarter on it: 8 / 32
        [3, 3, 5, 5],  # inside it, a quarter of its size: 2 * 4 / (4 + 16); precision was 1
    ]
    expected = [1.0, 2 / 3, 0.0, 0.0, 0.25, 0.4]
    assert _semantic(mask, boxes, [2, 2, 6, 6]) == pytest.approx(expected)
    # without a true box the plain Dice is used (equal here: the true box's Dice is 1)
    assert _semantic(mask, boxes) == pytest.approx(expected)
    assert _semantic(mask, ["A"], [2, 2, 6, 6]) == [0.0]  # a letter is no box
    no_mask = semantic_reward(
        [None],
        [_wrap("A")],
        target_mask=[[]],
        box_format=["pixel"],
        image_size=[[10, 10]],
        model_size=[[10, 10]],
    )
    assert no_mask == [None]


def _ring_mask() -> tuple[np.ndarray, list[float]]:
    """A 2 px thick square ring, outer [10, 30) x [10, 30) on a 40 x 40 image: 144 pixels,
    like a cortical ribbon that fills only 36 % of its bounding box (returned second)."""
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    mask[12:28, 12:28] = False
    return mask, [10.0, 10.0, 30.0, 30.0]


def test_semantic_reward_is_highest_at_the_true_box_of_a_ribbon() -> None:
    mask, true_box = _ring_mask()
    assert int(mask.sum()) == 144
    reference = 2 * 144 / (400 + 144)  # the true box's own Dice, 0.529
    assert box_dice(mask, true_box) == pytest.approx(reference)
    inside = [10, 10, 12, 20]  # 2 x 10 px, all on the ring
    assert box_coverage(mask, inside) == 1.0  # the old reward (precision): full marks
    assert box_coverage(mask, true_box) == pytest.approx(0.36)  # ... and 0.36 for the truth
    small = 2 * 20 / (20 + 144) / reference  # 0.461
    half_ring = [10, 10, 30, 20]  # the upper half: 72 of its 200 px on the ring
    half = 2 * 72 / (200 + 144) / reference  # 0.791
    rewards = _semantic(mask, [true_box, inside, half_ring], true_box)
    assert rewards == pytest.approx([1.0, small, half])
    assert rewards[1] < 0.7
    # shrinking or growing the true box about its centre only lowers the reward
    scales = [0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 2.0]
    boxes = [[20 - 10 * s, 20 - 10 * s, 20 + 10 * s, 20 + 10 * s] for s in scales]
    by_scale = _semantic(mask, boxes, true_box)
    assert by_scale[scales.index(1.0)] == 1.0
    assert max(by_scale) == 1.0 and by_scale.count(1.0) == 1
    assert by_scale == sorted(by_scale[:5]) + sorted(by_scale[5:], reverse=True)


def test_semantic_reward_penalises_large_and_misplaced_boxes() -> None:
    mask, true_box = _ring_mask()
    reference = 2 * 144 / (400 + 144)
    double_side = [0, 0, 40, 40]  # twice the side, four times the area: all 144 px inside
    double_area = [10, 0, 30, 40]  # twice the area: the whole ring and 400 px of background
    other = np.zeros((40, 40), dtype=bool)
    other[32:38, 2:8] = True  # another structure in the corner
    rewards = _semantic(mask, [double_side, double_area, [2, 32, 8, 38]], true_box)
    assert rewards == pytest.approx(
        [2 * 144 / (1600 + 144) / reference, 2 * 144 / (800 + 144) / reference, 0.0]
    )
    assert rewards[0] < rewards[1] < 1.0  # 0.312 and 0.577
    # a box on the other structure scores ~0, while it scores 1 against that structure
    assert _semantic(other, [[2, 32, 8, 38]], [2, 32, 8, 38]) == [1.0]
    # shifted diagonally by 1 and 2 px: same area, so the ratio is the share of the ring kept
    # (the ring pixels of row 10 and column 10, 39, or rows and columns 10-11, 76, fall out)
    shifted = _semantic(mask, [[11, 11, 31, 31], [12, 12, 32, 32]], true_box)
    assert shifted == pytest.approx([105 / 144, 68 / 144])


def test_semantic_reward_falls_back_to_plain_dice() -> None:
    mask, true_box = _ring_mask()
    inside = [10, 10, 12, 20]
    plain = 2 * 20 / (20 + 144)
    # no true box, a malformed one, or one off the mask (Dice 0): plain Dice
    assert _semantic(mask, [inside]) == pytest.approx([plain])
    assert _semantic(mask, [inside], []) == pytest.approx([plain])
    assert _semantic(mask, [inside], [0, 0, 5, 5]) == pytest.approx([plain])
    # clipped to [0, 1]: a box with a higher Dice than the given true box scores 1
    assert _semantic(mask, [true_box], [0, 0, 40, 40]) == [1.0]


def test_rewards_survive_missing_columns() -> None:
    assert iou_reward([None], [_wrap("[1,2,3,4]")]) == [None]
    assert semantic_reward([None], [_wrap("[1,2,3,4]")]) == [None]
    assert choice_accuracy_reward([None], [_wrap("A")]) == [None]
