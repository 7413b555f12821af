"""Tiny random-weight image pipeline for tests and the offline `tiny` profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moviegen_dagster.generation.common import build_atomically

# Bumped whenever the tiny architecture changes, so stale directories are easy to spot.
TINY_IMAGE_VERSION = 1

# Qwen3's chat markup. The pipeline renders every prompt through the chat template with
# `enable_thinking=False`, which (as in the real Qwen3 template) appends an empty think block.
_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
# A handful of real merges (byte-level "Ġ" is the space) so the BPE model is exercised, not empty.
_MERGES = (("Ġ", "a"), ("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġt", "he"))

# The real FLUX.2-klein pipeline reads hidden states 9, 18 and 27 of its Qwen3 encoder by default.
# Giving the tiny encoder 28 layers keeps those defaults valid, so generation code passes no
# tiny-only `text_encoder_out_layers`; at hidden size 16 the extra layers cost milliseconds.
_TEXT_LAYERS = 28
_TEXT_HIDDEN = 16
_TEXT_OUT_LAYERS = 3
_LATENT_CHANNELS = 4


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _build_tokenizer() -> Any:
    """Byte-level BPE Qwen2 tokenizer: 256 byte symbols, a few merges, Qwen3 specials."""
    # Qwen2TokenizerFast is an alias of this class in transformers 5.
    from transformers import Qwen2Tokenizer

    vocab: dict[str, int] = {}
    for char in _bytes_to_unicode().values():
        vocab[char] = len(vocab)
    for left, right in _MERGES:
        vocab[left + right] = len(vocab)
    for token in _SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        # The tokenizers BPE model needs (left, right) tuples; "left right" strings raise a
        # TypeError, although transformers 5 annotates the argument as list[str].
        merges=list(_MERGES),  # type: ignore[arg-type]
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<think>", "</think>"],
        model_max_length=512,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def build_tiny_image_model(target_dir: Path) -> Path:
    """Build and save a tiny random-weight Flux2KleinPipeline into target_dir (idempotent)."""
    target_dir = Path(target_dir)
    if (target_dir / "model_index.json").exists():
        return target_dir

    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _build_tokenizer()

    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=_TEXT_HIDDEN,
            intermediate_size=32,
            num_hidden_layers=_TEXT_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,  # Qwen3's default head_dim (128) ignores hidden_size: set it explicitly
            max_position_embeddings=512,  # the pipeline pads prompts to 512 tokens
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )
    )

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        # The pipeline packs 2x2 latent patches: 4 latent channels -> 16 transformer channels.
        in_channels=_LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        # Prompt embeddings stack three encoder hidden states side by side.
        joint_attention_dim=_TEXT_HIDDEN * _TEXT_OUT_LAYERS,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),  # must sum to attention_head_dim
        guidance_embeds=False,
    )

    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        # Four blocks downsample x8 like the real VAE; a x2 test VAE cannot reach 1024².
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 8, 8),
        layers_per_block=1,
        latent_channels=_LATENT_CHANNELS,
        norm_num_groups=2,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
        # Mid-block self-attention over 128x128 latents would dominate CPU time and memory.
        mid_block_add_attention=False,
    )

    # Typed Any: diffusers' lazy-import stubs hide the DiffusionPipeline methods from mypy.
    pipe: Any = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        # Like FLUX.2-klein-4B: step-distilled, so 4 steps and no classifier-free guidance.
        is_distilled=True,
    )

    def write(staging: Path) -> None:
        pipe.save_pretrained(staging)
        (staging / "tiny.json").write_text(json.dumps({"tiny_image_version": TINY_IMAGE_VERSION}))

    return build_atomically(target_dir, "model_index.json", write)
