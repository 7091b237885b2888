"""Tiny random-weight models of the *real* classes of each family, for tests and as starting points
for the shipped synth models. ``build_tiny(family, seed)`` returns the diffusers pipeline (MusicGen:
``(model, tokenizer)``); ``save_tiny(family, folder)`` saves it with ``save_pretrained`` plus small
sampling defaults, so ``load_generator(folder, local_files_only=True)`` goes through the real loading path.

Tokenizers are the project's own (``assets/tokenizers/``, made by ``python -m mmalign.zoo.make_tokenizer``).
Images are 32×32 (16×16×4 latents), videos 32×32 with 4 (AnimateDiff) or 5 (Wan) frames, audio 16 kHz mono.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from mmalign.errors import InputError
from mmalign.generators._common import write_defaults
from mmalign.paths import asset_path
from mmalign.registry import Registry
from mmalign.rng import owned_rng

#: family -> function building its tiny pipeline
TINY: Registry[Callable[..., Any]] = Registry("tiny generator family")

#: small sampling defaults written next to each tiny model
TINY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd": {"steps": 2, "guidance": 3.0},
    "sdxl": {"steps": 2, "guidance": 3.0},
    "sd3": {"steps": 2, "guidance": 3.0, "max_sequence_length": 16},
    "animatediff": {"steps": 2, "guidance": 3.0, "num_frames": 4, "fps": 8.0},
    "animatediff_sdxl": {"steps": 2, "guidance": 3.0, "num_frames": 4, "fps": 8.0},
    "wan": {"steps": 2, "guidance": 3.0, "num_frames": 5, "fps": 8.0, "height": 32, "width": 32,
            "max_sequence_length": 16},
    "stable_audio": {"steps": 2, "guidance": 3.0},
    "musicgen": {"max_new_tokens": 8, "guidance": 3.0},
}


def clip_tokenizer():
    from transformers import CLIPTokenizer

    folder = asset_path("tokenizers", "clip-synth")
    if not folder.is_dir():
        raise InputError(f"{folder} is missing; run `python -m mmalign.zoo.make_tokenizer`")
    return CLIPTokenizer.from_pretrained(str(folder))


def t5_tokenizer():
    from transformers import T5Tokenizer

    folder = asset_path("tokenizers", "t5-synth")
    if not folder.is_dir():
        raise InputError(f"{folder} is missing; run `python -m mmalign.zoo.make_tokenizer`")
    return T5Tokenizer.from_pretrained(str(folder))


def clip_text_encoder(vocab_size: int, hidden: int = 32, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def t5_encoder(vocab_size: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=2 * d_model, d_kv=8, num_heads=4,
                                   num_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def image_vae(shift_factor: float | None = None, scaling_factor: float = 0.18215):
    """32×32 RGB ↔ 16×16×4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=scaling_factor,
                         shift_factor=shift_factor)


def ddpm_like(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def _unet(cross_attention_dim: int, **extra: Any):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4), norm_num_groups=8, **extra)


@TINY.register("sd")
def _sd(prediction_type: str = "epsilon"):
    from diffusers import StableDiffusionPipeline

    tok = clip_tokenizer()
    return StableDiffusionPipeline(vae=image_vae(), text_encoder=clip_text_encoder(len(tok)), tokenizer=tok,
                                   unet=_unet(32), scheduler=ddpm_like(prediction_type), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@TINY.register("sdxl")
def _sdxl(prediction_type: str = "epsilon"):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tok = clip_tokenizer()
    te1 = clip_text_encoder(len(tok), hidden=32)
    te2 = clip_text_encoder(len(tok), hidden=48, projection=24)
    time_dim = 8
    unet = _unet(32 + 48, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                 projection_class_embeddings_input_dim=6 * time_dim + 24, transformer_layers_per_block=1,
                 use_linear_projection=True)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading", prediction_type=prediction_type)
    return StableDiffusionXLPipeline(vae=image_vae(scaling_factor=0.13025), text_encoder=te1, text_encoder_2=te2,
                                     tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched)


@TINY.register("sd3")
def _sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = clip_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=image_vae(shift_factor=0.1, scaling_factor=1.5),
        text_encoder=clip_text_encoder(len(tok), 32, projection=32), tokenizer=tok,
        text_encoder_2=clip_text_encoder(len(tok), 32, projection=32), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)


@TINY.register("animatediff")
def _animatediff():
    from diffusers import AnimateDiffPipeline, MotionAdapter

    tok = clip_tokenizer()
    adapter = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                            motion_num_attention_heads=2, motion_max_seq_length=32)
    return AnimateDiffPipeline(vae=image_vae(), text_encoder=clip_text_encoder(len(tok)), tokenizer=tok,
                               unet=_unet(32),
                               motion_adapter=adapter, scheduler=ddpm_like(), feature_extractor=None, image_encoder=None)


@TINY.register("animatediff_sdxl")
def _animatediff_sdxl():
    from diffusers import AnimateDiffSDXLPipeline, MotionAdapter, UNetMotionModel

    sdxl = _sdxl()
    adapter = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                            motion_num_attention_heads=2, motion_max_seq_length=32)
    return AnimateDiffSDXLPipeline(vae=sdxl.vae, text_encoder=sdxl.text_encoder, text_encoder_2=sdxl.text_encoder_2,
                                   tokenizer=sdxl.tokenizer, tokenizer_2=sdxl.tokenizer_2,
                                   unet=UNetMotionModel.from_unet2d(sdxl.unet, adapter), motion_adapter=adapter,
                                   scheduler=sdxl.scheduler)


@TINY.register("wan")
def _wan():
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    tok = t5_tokenizer()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    return WanPipeline(tokenizer=tok, text_encoder=t5_encoder(len(tok)), vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer)


@TINY.register("stable_audio")
def _stable_audio():
    from diffusers import AutoencoderOobleck, EDMDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel

    tok = t5_tokenizer()
    te = t5_encoder(len(tok))
    vae = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[4, 8], decoder_channels=6,
                             decoder_input_channels=4, audio_channels=1, channel_multiples=[1, 2], sampling_rate=16000)
    transformer = StableAudioDiTModel(sample_size=16, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=4,
                                      num_attention_heads=2, num_key_value_attention_heads=2, cross_attention_dim=8,
                                      time_proj_dim=8, global_states_input_dim=8, cross_attention_input_dim=4)
    projection = StableAudioProjectionModel(text_encoder_dim=te.config.d_model, conditioning_dim=4, min_value=0,
                                            max_value=4)
    sched = EDMDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential",
                                           prediction_type="v_prediction", solver_order=2)
    return StableAudioPipeline(vae=vae, text_encoder=te, projection_model=projection, tokenizer=tok,
                               transformer=transformer, scheduler=sched)


@TINY.register("musicgen")
def _musicgen():
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration
    from transformers import T5Config

    tok = t5_tokenizer()
    enc = EncodecConfig(sampling_rate=16000, audio_channels=1, hidden_size=8, num_filters=4, num_residual_layers=1,
                        upsampling_ratios=[4, 4], codebook_size=32, codebook_dim=8, target_bandwidths=[20.0],
                        num_lstm_layers=1, compress=2)
    dec = MusicgenDecoderConfig(vocab_size=enc.codebook_size, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, ffn_dim=32, num_codebooks=enc.num_quantizers, audio_channels=1,
                                max_position_embeddings=64, pad_token_id=enc.codebook_size,
                                bos_token_id=enc.codebook_size, decoder_start_token_id=enc.codebook_size)
    text = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2)
    cfg = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=enc.to_dict(), decoder=dec.to_dict())
    cfg.decoder_start_token_id = enc.codebook_size
    cfg.pad_token_id = enc.codebook_size
    model = MusicgenForConditionalGeneration(cfg)
    with torch.no_grad():  # EnCodec codebooks start at zero (k-means init in training): give codes distinct vectors
        for name, buf in model.audio_encoder.named_buffers():
            if name.endswith("codebook.embed"):
                buf.normal_()
    model.generation_config.decoder_start_token_id = enc.codebook_size
    model.generation_config.pad_token_id = enc.codebook_size
    return model, tok


def build_tiny(family: str, seed: int = 0, **options: Any) -> Any:
    """A tiny random pipeline of ``family`` (``options``: e.g. ``prediction_type="v_prediction"`` for sd/sdxl)."""
    builder = TINY.get(family)
    with owned_rng(seed):
        return builder(**options)


def save_tiny(family: str, folder: str | Path, seed: int = 0, **options: Any) -> Path:
    """Build a tiny ``family`` model and save it (``save_pretrained`` + sampling defaults) into ``folder``."""
    folder = Path(folder)
    built = build_tiny(family, seed, **options)
    if family == "musicgen":
        model, tok = built
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    else:
        built.save_pretrained(folder)
    write_defaults(folder, {"family": family, **TINY_DEFAULTS[family]})
    return folder
