"""Randomly initialised Qwen2.5-VL models built from a config, with a locally trained tokenizer.

Nothing is downloaded: the BPE tokenizer is trained on the training split's own text (plus the
Qwen chat and vision special tokens), saved with a Qwen2-VL image processor, so
``AutoProcessor.from_pretrained(folder)`` and ``AutoModelForImageTextToText.from_pretrained``
work offline. Sizes: ``tiny`` (Qwen2.5-VL; CPU tests and benchmark), ``tiny-abs`` (the same
sizes on Qwen3-VL, whose vision tower has absolute position embeddings: the CPU grounding
presets) and ``small`` (Qwen2.5-VL, larger, for a GPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medrl.errors import InputError
from medrl.utils.atomic import atomic_dir

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Kept in decoded text (TRL decodes with skip_special_tokens=True): ordinary added tokens.
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# A chat template written for medrl's tokenizer: Qwen's ChatML turns and vision markers.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "mrope_section": [4, 6, 6],
        },
        "vision": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "fullatt_block_indexes": [1],
        },
        "vocab_size": 1024,
    },
    "small": {
        "text": {
            "hidden_size": 512,
            "intermediate_size": 1408,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "mrope_section": [8, 12, 12],
        },
        "vision": {
            "depth": 8,
            "hidden_size": 384,
            "intermediate_size": 1024,
            "num_heads": 6,
            "fullatt_block_indexes": [3, 7],
        },
        "vocab_size": 4096,
    },
}
# tiny's sizes on the Qwen3-VL architecture, whose vision tower adds learned absolute position
# embeddings to the patches (Qwen2.5-VL's has rotary positions only): docs/vlm.md, section 8
SIZES["tiny-abs"] = {
    **SIZES["tiny"],
    "family": "qwen3-vl",
    "vision": {
        **{k: v for k, v in SIZES["tiny"]["vision"].items() if k != "fullatt_block_indexes"},
        "num_position_embeddings": 256,
        "deepstack_visual_indexes": [],
    },
}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the Qwen special tokens and tags."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # one token per digit (as Qwen does): box numbers are then learnable digit by digit
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model_dir(
    out_dir: str | Path,
    texts: Iterable[str],
    size: str = "tiny",
    seed: int = 0,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> Path:
    """Write a randomly initialised Qwen2.5-VL model, tokenizer and processor to ``out_dir``."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    if size not in SIZES:
        raise InputError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    spec = SIZES[size]
    tokenizer = train_tokenizer(texts, spec["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(spec["text"])
    mrope = text.pop("mrope_section")
    text_config = {
        **text,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
    }
    vision_config = {
        **spec["vision"],
        "out_hidden_size": text["hidden_size"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2
    )
    torch.manual_seed(seed)
    if spec.get("family") == "qwen3-vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        text_config["rope_parameters"]["mrope_interleaved"] = True
        text_config["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
        config = Qwen3VLConfig(
            text_config=text_config,
            vision_config=vision_config,
            tie_word_embeddings=True,
            **tokens,
        )
        model = Qwen3VLForConditionalGeneration(config)
        video_processor: Any = Qwen3VLVideoProcessor(patch_size=14, merge_size=2)
        processor_class: Any = Qwen3VLProcessor
    else:
        config = Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config={**vision_config, "window_size": 112},
            tie_word_embeddings=True,
            **tokens,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        video_processor = Qwen2VLVideoProcessor()
        processor_class = Qwen2_5_VLProcessor
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out_dir)


def corpus_from_items(items: Iterable[dict[str, Any]]) -> Iterable[str]:
    """Texts of the items' prompts and target completions (for the tokenizer)."""
    for item in items:
        for message in list(item["prompt"]) + list(item.get("completion") or []):
            content = message["content"]
            if isinstance(content, str):
                yield content
            else:
                yield " ".join(p.get("text") or "" for p in content)
