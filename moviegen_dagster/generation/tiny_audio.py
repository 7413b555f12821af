"""Tiny random-weight speech and ambience models for tests and the offline `tiny` profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moviegen_dagster.generation.common import build_atomically

# Bumped whenever a tiny architecture changes, so stale directories are easy to spot.
TINY_TTS_VERSION = 1
TINY_AMBIENCE_VERSION = 1

# Pocket TTS keeps its codec (the audio tokenizer) in a separate checkpoint. The processor's own
# save format records the codec's absolute path, which would point into the staging directory
# after the atomic rename (and break when MOVIEGEN_HOME moves), so the tiny model stores the codec
# in this subfolder and the loader in speech.py attaches it when the processor comes without one.
TTS_CODEC_SUBFOLDER = "audio_tokenizer"

# Pocket TTS prompt layout: `<voice bos><voice frames...>text<audio bos>`; the processor expands
# the single voice placeholder into one token per latent frame of the reference clip.
_TTS_PLACEHOLDERS = {
    "audio_prompt_bos_token": "<audio_prompt_bos>",
    "audio_prompt_token": "<audio_prompt>",
    "audio_bos_token": "<audio_bos>",
    "audio_latent_token": "<audio_latent>",
}
_TTS_CHAT_TEMPLATE = (
    "{%- for message in messages %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'audio' %}{{ audio_prompt_bos_token }}{{ audio_prompt_token }}"
    "{%- elif item['type'] == 'text' %}{{ item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endfor %}{{ audio_bos_token }}"
)
# Whole-word pieces make a token count close to a real sentencepiece vocabulary's (the model's
# default frame budget grows with the token count); other words fall back to characters.
_TTS_WORDS = (
    "the a an and or to of in on at for with you your i me my it is was be have has had that "
    "this what who are we they he she not no yes hello there how today night rain detective "
    "been expecting come here now time know see"
)
_TTS_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"-()"
_TTS_LATENT_DIM = 8
_TTS_HIDDEN = 32

_AMBIENCE_WORDS = (
    "rain ambience ambient background sound wind forest city traffic crowd room tone ocean waves "
    "fire crackling night birds thunder storm cafe office street quiet distant no speech music"
)
_AMBIENCE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.-"
_AMBIENCE_LATENT_CHANNELS = 4
_AMBIENCE_TEXT_DIM = 16
# Latent frames of the tiny DiT. With the VAE hop of 2048 samples (like the real Stable Audio
# Open VAE), 216 frames cover 216 * 2048 / 44100 = 10.03 s, and a 10 s render takes seconds.
AMBIENCE_SAMPLE_SIZE = 216


def _build_tts_tokenizer() -> Any:
    """Unigram tokenizer (word pieces plus characters) carrying Pocket TTS's named placeholders."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces: list[tuple[str, float]] = [(t, 0.0) for t in ("<unk>", "<s>", "</s>", "<pad>")]
    pieces += [("▁" + word, -2.0) for word in _TTS_WORDS.split()]
    pieces += [("▁", -3.0)]
    pieces += [(char, -5.0) for char in _TTS_CHARS]
    backend = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        # Named extra special tokens become attributes (tokenizer.audio_bos_token, ...), which
        # PocketTTSProcessor reads to find the placeholders.
        extra_special_tokens=dict(_TTS_PLACEHOLDERS),
        model_max_length=4096,
    )
    tokenizer.chat_template = _TTS_CHAT_TEMPLATE
    return tokenizer


def build_tiny_tts_model(target_dir: Path) -> Path:
    """Build and save a tiny random-weight Pocket TTS (model, processor, codec) into target_dir."""

    def write(staging: Path) -> None:
        """Save the tiny Pocket TTS checkpoint into staging."""
        import torch
        from transformers import (
            GenerationConfig,
            PocketTTSAudioTokenizerConfig,
            PocketTTSAudioTokenizerModel,
            PocketTTSConfig,
            PocketTTSFeatureExtractor,
            PocketTTSForConditionalGeneration,
            PocketTTSProcessor,
        )

        tokenizer = _build_tts_tokenizer()
        ids = {
            name: tokenizer.convert_tokens_to_ids(token)
            for name, token in _TTS_PLACEHOLDERS.items()
        }
        config = PocketTTSConfig(
            vocab_size=len(tokenizer),
            hidden_size=_TTS_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            latent_dim=_TTS_LATENT_DIM,
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
            audio_prompt_bos_token_id=ids["audio_prompt_bos_token"],
            audio_prompt_token_id=ids["audio_prompt_token"],
            audio_bos_token_id=ids["audio_bos_token"],
            audio_latent_token_id=ids["audio_latent_token"],
            # With the default 0.02 the random backbone ignores the voice prompt; at 0.2 two
            # reference clips give clearly different speech (TINY-MODELS.md).
            initializer_range=0.2,
            flow_head_config={
                "hidden_size": _TTS_HIDDEN,
                "num_hidden_layers": 1,
                "latent_dim": _TTS_LATENT_DIM,
                "condition_dim": _TTS_HIDDEN,
                "frequency_embedding_size": 16,
            },
        )
        torch.manual_seed(0)
        model = PocketTTSForConditionalGeneration(config).eval()
        with torch.no_grad():
            # A random end-of-speech head fires at a random frame, often the first allowed one;
            # silencing it makes the tiny model speak for exactly its frame budget, which grows
            # with the text (ceil((tokens / 3 + 2) * 12.5) frames of 80 ms), like real speech.
            model.eos_head.weight.zero_()
            model.eos_head.bias.fill_(-10.0)
        # The released checkpoints sample (noise scaled by sqrt(temperature)) and return a dict.
        model.generation_config = GenerationConfig(
            do_sample=True, temperature=0.7, return_dict_in_generate=True
        )

        torch.manual_seed(0)
        codec = PocketTTSAudioTokenizerModel(
            PocketTTSAudioTokenizerConfig(
                hidden_size=16,
                num_filters=4,
                num_hidden_layers=1,
                intermediate_size=32,
                num_attention_heads=2,
                num_key_value_heads=2,
                upsample_groups=16,  # must divide hidden_size (512 in the real codec)
                latent_dim=_TTS_LATENT_DIM,
                initializer_range=0.2,
            )
        ).eval()
        # Keep the real codec's 24 kHz and 1920-sample frames (12.5 latents per second).
        feature_extractor = PocketTTSFeatureExtractor(
            sampling_rate=codec.config.sampling_rate,
            frame_size=codec.config.frame_size,
            pad_to_multiple_of=codec.config.frame_size,
        )
        processor = PocketTTSProcessor(feature_extractor, tokenizer)

        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        codec.save_pretrained(staging / TTS_CODEC_SUBFOLDER)
        (staging / "tiny.json").write_text(json.dumps({"tiny_tts_version": TINY_TTS_VERSION}))

    return build_atomically(Path(target_dir), "tiny.json", write)


def _build_ambience_tokenizer() -> Any:
    """T5 Unigram tokenizer built from (piece, score) pairs, no sentencepiece model file."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -3.0) for word in _AMBIENCE_WORDS.split()]
    pieces += [(char, -6.0) for char in _AMBIENCE_CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=64)


def build_tiny_ambience_model(target_dir: Path) -> Path:
    """Build and save a tiny random-weight StableAudioPipeline (44.1 kHz stereo) into target_dir."""

    def write(staging: Path) -> None:
        """Save the tiny Stable Audio pipeline into staging."""
        import torch
        from diffusers import (
            AutoencoderOobleck,
            CosineDPMSolverMultistepScheduler,
            StableAudioDiTModel,
            StableAudioPipeline,
            StableAudioProjectionModel,
        )
        from transformers import T5Config, T5EncoderModel

        tokenizer = _build_ambience_tokenizer()
        torch.manual_seed(0)
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=_AMBIENCE_TEXT_DIM,
                d_kv=8,
                d_ff=32,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        )
        torch.manual_seed(0)
        transformer = StableAudioDiTModel(
            sample_size=AMBIENCE_SAMPLE_SIZE,
            in_channels=_AMBIENCE_LATENT_CHANNELS,
            out_channels=_AMBIENCE_LATENT_CHANNELS,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            num_key_value_attention_heads=1,
            cross_attention_dim=16,
            time_proj_dim=16,
            # start + end second embeddings, each conditioning_dim wide
            global_states_input_dim=32,
            cross_attention_input_dim=16,
        )
        torch.manual_seed(0)
        vae = AutoencoderOobleck(
            encoder_hidden_size=8,
            # 4 * 4 * 8 * 16 = 2048 samples per latent, the real VAE's hop: a x2 test VAE would
            # need 20k latent frames for 10 s.
            downsampling_ratios=[4, 4, 8, 16],
            channel_multiples=[1, 2, 2, 2],
            decoder_channels=4,
            decoder_input_channels=_AMBIENCE_LATENT_CHANNELS,
            audio_channels=2,
            sampling_rate=44100,
        )
        torch.manual_seed(0)
        projection_model = StableAudioProjectionModel(
            text_encoder_dim=_AMBIENCE_TEXT_DIM,
            conditioning_dim=16,
            min_value=0,
            max_value=512,  # the real model's duration range in seconds
        )
        # The real checkpoint's scheduler; its Brownian-tree noise needs `torchsde`.
        scheduler = CosineDPMSolverMultistepScheduler(
            solver_order=2,
            prediction_type="v_prediction",
            sigma_data=1.0,
            sigma_schedule="exponential",
        )
        # Typed Any: diffusers' lazy-import stubs hide the DiffusionPipeline methods from mypy.
        pipe: Any = StableAudioPipeline(
            vae=vae,
            text_encoder=text_encoder,
            projection_model=projection_model,
            tokenizer=tokenizer,
            transformer=transformer,
            scheduler=scheduler,
        )
        pipe.save_pretrained(staging)
        (staging / "tiny.json").write_text(
            json.dumps({"tiny_ambience_version": TINY_AMBIENCE_VERSION})
        )

    return build_atomically(Path(target_dir), "tiny.json", write)
