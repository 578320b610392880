"""The tiny Qwen2.5-VL: built from config, tokenizer trained here, loads offline by folder."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")


def test_tiny_model_folder_loads_offline_and_generates(tmp_path, monkeypatch) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medrl.vlm.tiny_model import TAG_TOKENS, build_model_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["Where is the left Insular Cortex? Give its box.", "<think>A slice.</think>"] * 20
    folder = build_model_dir(tmp_path / "m", texts, "tiny", seed=0)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    tokenizer = processor.tokenizer
    # digits are single tokens, tags survive skip_special_tokens decoding
    assert tokenizer.tokenize("[123, 45]")[1:4] == ["1", "2", "3"]
    ids = tokenizer("<think>x</think><answer>[1, 2, 3, 4]</answer>")["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "<think>x</think><answer>[1, 2, 3, 4]</answer>"
    assert all(len(tokenizer.tokenize(t)) == 1 for t in TAG_TOKENS)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "S"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|vision_end|>Q<|im_end|>\n<|im_start|>assistant\n")
    image = Image.new("RGB", (128, 112), (40, 40, 40))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    # 128 x 112 -> 140 x 112 -> 10 x 8 patches of 14 px -> 20 merged image tokens
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 10]]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 20
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 5
