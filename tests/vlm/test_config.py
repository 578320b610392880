"""Config files, overrides and data settings: bad input is an InputError naming its source."""

from __future__ import annotations

import pytest
import yaml

from medrl.errors import InputError
from medrl.vlm.config import load_vlm_config, preset_path, task_config


def test_bad_data_override_names_the_config_and_the_override() -> None:
    config = load_vlm_config("tiny-cpu", ["data.box_format=qwen3"])
    with pytest.raises(InputError, match="unknown box format 'qwen3'") as info:
        task_config(config)
    assert "--set data.box_format=qwen3" in str(info.value)
    assert info.value.path == str(preset_path("tiny-cpu"))


def test_extreme_aspect_ratio_is_an_input_error() -> None:
    # 6000 x 28 px: aspect ratio 214 > 200, which the Qwen2-VL resize rule refuses
    config = load_vlm_config("tiny-cpu", ["data.image_width=6000", "data.image_height=28"])
    with pytest.raises(InputError, match="aspect ratio"):
        task_config(config)
    with pytest.raises(InputError, match="min_pixels <= max_pixels"):
        task_config(load_vlm_config("tiny-cpu", ["data.min_pixels=20000", "data.max_pixels=10000"]))


def test_config_file_without_sections_is_named(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  init: tiny\ngrpo:\n  beta: 0.0\n", encoding="utf-8")
    with pytest.raises(
        InputError, match=r"lacks the sections \['data', 'sft', 'evaluate'\]"
    ) as info:
        load_vlm_config(str(path))
    assert info.value.path == str(path)


def test_config_file_without_a_required_key_is_named(tmp_path) -> None:
    config = yaml.safe_load(preset_path("tiny-cpu").read_text(encoding="utf-8"))
    del config["grpo"]["beta"], config["sft"]["epochs"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(InputError, match=r"lacks the keys \['sft.epochs'\]"):
        load_vlm_config(str(path))
    config["sft"]["epochs"] = 1
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(InputError, match=r"lacks the keys \['grpo.beta'\]"):
        load_vlm_config(str(path))
    config["grpo"]["beta"] = 0.0
    config["evaluate"] = None  # an empty section is fine where nothing is required
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert load_vlm_config(str(path))["evaluate"] == {}


def test_presets_pass_the_check() -> None:
    for name in ("tiny-cpu", "small-gpu", "qwen2.5-vl-3b"):
        assert load_vlm_config(name)["source"] == str(preset_path(name))
