"""Loading for training and evaluation: the processor resizes as the data says, and a resumed
full fine-tune keeps the start model as the GRPO KL reference."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")  # the Qwen2-VL image processor needs it
pytest.importorskip("trl")

TEXTS = ["Where is the left Insular Cortex? Give its box.", "<think>A.</think><answer>B</answer>"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two tiny models of one architecture and tokenizer: a start model and a 'checkpoint'.

    Both are saved with the processor's default pixel range (56 * 56 .. 28 * 28 * 1280).
    """
    from medrl.vlm.tiny_model import build_model_dir

    root = tmp_path_factory.mktemp("models")
    start = build_model_dir(root / "start", TEXTS * 10, "tiny", seed=0)
    checkpoint = build_model_dir(root / "checkpoint-7", TEXTS * 10, "tiny", seed=1)
    return start, checkpoint


def test_processor_resizes_within_the_data_pixel_range(model_dirs, monkeypatch) -> None:
    from medrl.errors import InputError
    from medrl.vlm.loading import check_processor_size, load_model, load_processor, processed_size
    from medrl.vlm.tasks import TaskConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start, _ = model_dirs
    # max_pixels 12544: 128 x 112 rounds to 140 x 112 = 15680 > 12544, so beta =
    # sqrt(14336 / 12544) = 1.069: width floor(128 / 1.069 / 28) * 28 = 112, height 84
    data = TaskConfig(min_pixels=3136, max_pixels=12544)
    assert data.frame.model_size == (112, 84)  # what the rows' model_size says
    rows = {"box_format": ["qwen2.5-vl"] * 2, "image_size": [[128, 112]] * 2,
            "model_size": [[112, 84]] * 2}  # fmt: skip
    _, processor = load_model(start, None, {"data": data.to_dict()})
    assert processed_size(processor, (128, 112)) == (112, 84)
    check_processor_size(processor, rows, "DATA")  # agrees: no error
    # the folder's own processor (default range) resizes to 140 x 112: the boxes would be off
    default = load_processor(start)
    assert processed_size(default, (128, 112)) == (140, 112)
    with pytest.raises(InputError, match=r"resizes 128x112 images to 140x112") as info:
        check_processor_size(default, rows, "DATA")
    assert info.value.path == "DATA"
    # other box formats do not depend on the resize and are not checked
    check_processor_size(default, {**rows, "box_format": ["qwen2-vl"] * 2}, "DATA")


def test_resumed_full_fine_tune_keeps_the_start_model_as_kl_reference(
    model_dirs, tmp_path, monkeypatch
) -> None:
    import datasets
    import torch
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import get_config_model_id

    from medrl.vlm.loading import load_weights
    from medrl.vlm.train import _load_for_resume

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start, checkpoint = model_dirs
    config = {"model": {"lora": False}, "data": {}}
    model, processor = _load_for_resume(config, start, str(checkpoint), None)
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    start_weight = load_weights(start).state_dict()[name]
    checkpoint_weight = load_weights(checkpoint).state_dict()[name]
    assert not torch.equal(start_weight, checkpoint_weight)
    assert torch.equal(model.state_dict()[name], checkpoint_weight)  # trains on from the checkpoint
    assert get_config_model_id(model.config) == str(start)  # TRL builds the reference from this
    args = GRPOConfig(
        output_dir=str(tmp_path / "run"), beta=0.04, num_generations=2,
        per_device_train_batch_size=2, max_steps=1, use_cpu=True, report_to=[],
    )  # fmt: skip
    prompts = datasets.Dataset.from_list([{"prompt": "Where?"}] * 2)
    trainer = GRPOTrainer(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args, train_dataset=prompts, processing_class=processor,
    )  # fmt: skip
    reference = trainer.ref_model.state_dict()[name].cpu()
    assert torch.equal(reference, start_weight) and not torch.equal(reference, checkpoint_weight)
