"""Tiny random-weight LTX-2 video+audio pipeline for tests and the offline `tiny` profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moviegen_dagster.generation.common import build_atomically

# Bumped whenever the tiny architecture changes, so stale directories are easy to spot.
TINY_VIDEO_VERSION = 1
# Written next to model_index.json; generation code reads it to pick the tiny profile's sizes.
TINY_MARKER = "tiny.json"

# Gemma-3 text encoder. The pipeline stacks every hidden state (embeddings + each layer), so the
# connectors' input projection is hidden * (layers + 1) wide.
_TEXT_HIDDEN = 32
_TEXT_LAYERS = 2
# The pipeline applies spatio-temporal guidance at block 28 by default; 29 blocks keep that
# default valid, so generation code passes no tiny-only `spatio_temporal_guidance_blocks`.
_TRANSFORMER_LAYERS = 29
_VIDEO_LATENT_CHANNELS = 4
# Audio latents are packed as channels x (mel_bins / 4) features per audio token.
_AUDIO_LATENT_CHANNELS = 2
_MEL_BINS = 16
# Same rates as the real LTX-2: 16 kHz mel analysis with hop 160 (100 mel frames/s), 24 kHz output.
_AUDIO_VAE_RATE = 16000
_MEL_HOP = 160
_VOCODER_RATE = 24000
# The vocoder turns each mel frame into output_rate / (vae_rate / hop) = 240 samples; a product that
# differs from that makes the audio too short or too long for the video.
_VOCODER_UPSAMPLE = (6, 5, 4, 2)

_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
_IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")
# A few real merges ("▁" is Gemma's space) so the BPE model is exercised, not empty.
_MERGES = (("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "n"))


def _build_tokenizer() -> Any:
    """Byte-fallback BPE Gemma tokenizer: specials, <0xNN> bytes, ASCII symbols, a few merges."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for token in (*_SPECIALS, *_IMAGE_TOKENS):
        vocab[token] = len(vocab)
    # Byte fallback: any character missing from the vocab is spelled as its UTF-8 bytes.
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in ["▁", *map(chr, range(ord("!"), ord("~") + 1))]:
        vocab[char] = len(vocab)
    for left, right in _MERGES:
        vocab[left + right] = len(vocab)
    return GemmaTokenizer(
        vocab=vocab,
        # The tokenizers BPE model needs (left, right) tuples, although the stub says list[str].
        merges=list(_MERGES),  # type: ignore[arg-type]
        # generate_video caps prompts at the tokenizer's limit: 256 tokens instead of LTX-2's
        # 1024 keeps every cross-attention of the tiny model short. Multiple of the 128 registers.
        model_max_length=256,
    )


def _build_text_encoder(tokenizer: Any) -> Any:
    """Tiny Gemma-3 (text + an unused tiny vision tower, which the class requires)."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": _TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": _TEXT_LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        # The pipeline pads every prompt to 1024 tokens.
        "max_position_embeddings": 2048,
        "sliding_window": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 16,
        "patch_size": 4,
        "vision_use_head": False,
    }
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        # 4x4 patches pooled to 2x2 soft tokens per image.
        mm_tokens_per_image=4,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
    )
    torch.manual_seed(0)
    return Gemma3ForConditionalGeneration(config)


def build_tiny_video_model(target_dir: Path) -> Path:
    """Build and save a tiny random-weight LTX2ConditionPipeline into target_dir (idempotent)."""
    target_dir = Path(target_dir)
    if (target_dir / "model_index.json").exists():
        return target_dir

    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ConditionPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer = _build_tokenizer()
    text_encoder = _build_text_encoder(tokenizer)

    torch.manual_seed(0)
    connectors = LTX2TextConnectors(
        caption_channels=_TEXT_HIDDEN,
        text_proj_in_factor=_TEXT_LAYERS + 1,
        # heads x head_dim must equal caption_channels.
        video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=_TEXT_HIDDEN // 2,
        video_connector_num_layers=1,
        # The real model has 128 registers; then max_sequence_length (1024) must be a multiple.
        video_connector_num_learnable_registers=128,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=_TEXT_HIDDEN // 2,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=128,
        connector_rope_base_seq_len=1024,
        rope_double_precision=False,
        rope_type="split",
    )

    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=_VIDEO_LATENT_CHANNELS,
        out_channels=_VIDEO_LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        audio_in_channels=_AUDIO_LATENT_CHANNELS * (_MEL_BINS // 4),
        audio_out_channels=_AUDIO_LATENT_CHANNELS * (_MEL_BINS // 4),
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        audio_sampling_rate=_AUDIO_VAE_RATE,
        audio_hop_length=_MEL_HOP,
        num_layers=_TRANSFORMER_LAYERS,
        caption_channels=_TEXT_HIDDEN,
        rope_double_precision=False,
        rope_type="split",
    )

    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        in_channels=3,
        out_channels=3,
        latent_channels=_VIDEO_LATENT_CHANNELS,
        # Like the real VAE: x32 spatially (4x4 patches, then three 2x steps) and x8 in time, so
        # sizes are multiples of 32 and clips 8k+1 frames. A x2 test VAE makes big frames slow.
        block_out_channels=(8, 8, 8),
        down_block_types=("LTX2VideoDownBlock3D",) * 3,
        decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False),
        downsample_type=("spatiotemporal",) * 3,
        upsample_type=("spatiotemporal",) * 3,
        upsample_residual=(False, False, False),
        upsample_factor=(1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )

    torch.manual_seed(0)
    audio_vae = AutoencoderKLLTX2Audio(
        # Its latent statistics are stored per packed audio feature: channels x (mel_bins / 4).
        base_channels=_AUDIO_LATENT_CHANNELS * (_MEL_BINS // 4),
        output_channels=2,
        # Two 2x stages: latents are 4x shorter than the mel (the pipeline assumes 4).
        ch_mult=(1, 1, 1),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=_AUDIO_LATENT_CHANNELS,
        norm_type="pixel",
        causality_axis="height",
        dropout=0.0,
        mid_block_add_attention=False,
        sample_rate=_AUDIO_VAE_RATE,
        mel_hop_length=_MEL_HOP,
        is_causal=True,
        mel_bins=_MEL_BINS,
    )

    torch.manual_seed(0)
    vocoder = LTX2Vocoder(
        in_channels=audio_vae.config.output_channels * _MEL_BINS,
        hidden_channels=32,
        out_channels=2,
        upsample_kernel_sizes=[2 * f for f in _VOCODER_UPSAMPLE],
        upsample_factors=list(_VOCODER_UPSAMPLE),
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1,
        output_sampling_rate=_VOCODER_RATE,
    )

    # Typed Any: diffusers' lazy-import stubs hide the DiffusionPipeline methods from mypy.
    pipe: Any = LTX2ConditionPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )

    def write(staging: Path) -> None:
        pipe.save_pretrained(staging)
        (staging / TINY_MARKER).write_text(json.dumps({"tiny_video_version": TINY_VIDEO_VERSION}))

    return build_atomically(target_dir, "model_index.json", write)
