"""Train ``synth-sdxl``, the shipped tiny text-to-image model of the synthetic world (seeded, CPU, resumable).

    python -m mmalign.zoo.train_sdxl                        # VAE, then UNet + both text encoders, then held-out eval
    python -m mmalign.zoo.train_sdxl --stage unet --steps 12000

``synth-sdxl`` is a real :class:`~diffusers.StableDiffusionXLPipeline`: a tiny ``AutoencoderKL``
(32×32 images ↔ 8×8×8 latents), two tiny CLIP text encoders (the second with projection, for
SDXL's pooled embedding) on the project's tokenizer, and a ~2.3M-parameter ``UNet2DConditionModel``
with SDXL's ``text_time`` additional conditioning. It is trained with the epsilon objective of
SDXL's scaled-linear schedule, with 10% empty prompts for classifier-free guidance; the shipped
UNet and text encoders are an EMA of the trained ones. The pipeline goes to ``assets/models/synth-sdxl/``
(what ``load_generator("synth-sdxl")`` loads) with ``eval.json``, the oracle's accuracy on held-out prompts.
The models are imperfect on purpose: alignment needs room to show its effect.

Stop any stage with ``touch WORK/STOP``; running the same command again resumes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmalign.checkpoint import Log, atomic_folder
from mmalign.synth.prompts import sample_prompts
from mmalign.synth.render import render
from mmalign.zoo.stages import TrainStage, run_trainer, save_generator, seeded, trainer_parser, warmup_schedule

NAME = "synth-sdxl"
IMAGE_SIZE = 32
LATENT_SIZE = 8  # the VAE downsamples 4x: 32x32x3 images <-> 8x8x8 latents
LATENT_CHANNELS = 8
#: sampling defaults shipped with the pipelines (read by mmalign.generators)
SAMPLING_DEFAULTS = {"steps": 20, "guidance": 4.0}
MAX_TOKENS = 16  # the longest grammar prompt is 10 words; shorter sequences make every step cheaper


def tokenizer():
    from mmalign.generators.tiny import clip_tokenizer

    tok = clip_tokenizer()
    tok.model_max_length = MAX_TOKENS
    return tok


# ---------------------------------------------------------------------------------------------
# components


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def build_text_encoders(tok):
    """Two tiny CLIP text encoders on the project's tokenizer; the second has SDXL's projection."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def cfg(hidden: int, proj: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tok.model_max_length,
            projection_dim=proj,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )

    return CLIPTextModel(cfg(64, 64)), CLIPTextModelWithProjection(cfg(64, 64))


def build_sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(48, 96),
        layers_per_block=1,
        transformer_layers_per_block=1,
        attention_head_dim=(4, 8),
        cross_attention_dim=128,  # 64 (encoder 1) + 64 (encoder 2), concatenated as in SDXL
        norm_num_groups=16,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 64,  # add_time_ids (6) + pooled text (64)
        use_linear_projection=True,
    )


def build_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


# ---------------------------------------------------------------------------------------------
# data


def image_bank(n: int, seed: int, split: str = "train") -> tuple[torch.Tensor, list[str]]:
    """``n`` rendered training images ``[n, 3, 32, 32]`` and their prompts."""
    prompts = sample_prompts("image", n, seed=seed, split=split)
    chunks = [render(prompts[i : i + 2000], seed=seed + i).pixels for i in range(0, n, 2000)]
    return torch.cat(chunks), prompts


# ---------------------------------------------------------------------------------------------
# stages


@seeded
def train_vae(work: Path, steps: int, seed: int, bank: int = 20000, batch: int = 32, lr: float = 3e-3,
              log: Log = print) -> None:
    """Stage 1: the VAE (MSE + 1e-4 KL per latent element, one-cycle LR), then the ``scaling_factor`` that
    gives the latents unit standard deviation; saved as ``WORK/vae``."""
    vae = build_vae()
    images, _ = image_bank(bank, seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    stage = TrainStage(work, "vae", vae, opt, sched, seed, every=100, log=log, clip=None, log_every=100)

    def loss(g: torch.Generator) -> dict[str, torch.Tensor]:
        x = images[torch.randint(0, len(images), (batch,), generator=g)] * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        kl = post.kl().mean() / z[0].numel()
        return {"loss": F.mse_loss(vae.decode(z).sample, x) + 1e-4 * kl, "kl": kl}

    stage.run(steps, loss)
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i : i + 500] * 2 - 1).latent_dist.mode() for i in range(0, min(bank, 4000), 500)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    atomic_folder(work / "vae", vae.save_pretrained)


def _encode_text(tok, te1, te2, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    h1 = te1(ids, output_hidden_states=True).hidden_states[-2]
    o2 = te2(ids, output_hidden_states=True)
    return torch.cat([h1, o2.hidden_states[-2]], dim=-1), o2.text_embeds


def epsilon_loss(unet, tok, te1, te2, alphas: torch.Tensor, x0: torch.Tensor, prompts: list[str],
                 g: torch.Generator) -> torch.Tensor:
    """SDXL's epsilon objective on a batch of image latents ``x0``, with 10% empty prompts for
    classifier-free guidance."""
    batch = len(x0)
    texts = [p if torch.rand((), generator=g) > 0.1 else "" for p in prompts]
    emb, pooled = _encode_text(tok, te1, te2, texts)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    time_ids = torch.tensor([IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE], dtype=torch.float32)
    pred = unet(xt, t, encoder_hidden_states=emb,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(batch, 6)}).sample
    return F.mse_loss(pred, noise)


def _encode_bank(vae, frames: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents (posterior mode) of ``[N, 3, H, W]`` images in [0, 1]."""
    with torch.no_grad():
        z = [vae.encode(frames[i : i + 1000] * 2 - 1).latent_dist.mode() for i in range(0, len(frames), 1000)]
    return torch.cat(z) * vae.config.scaling_factor


@seeded
def train_unet(work: Path, steps: int, seed: int, bank: int = 40000, batch: int = 32, lr: float = 1e-3,
               ema_decay: float = 0.998, log: Log = print):
    """Stage 2: the UNet and both text encoders (epsilon objective) on the latents of ``WORK/vae``;
    returns the pipeline with the EMA weights."""
    from diffusers import AutoencoderKL

    tok = tokenizer()
    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    te1, te2 = build_text_encoders(tok)
    unet = build_sdxl_unet()
    scheduler = build_scheduler()
    log(json.dumps({"unet_params": sum(p.numel() for p in unet.parameters())}))
    images, prompts = image_bank(bank, seed + 1)
    latents = _encode_bank(vae, images)
    del images
    modules = torch.nn.ModuleList([unet, te1, te2])
    opt = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=1e-2)
    stage = TrainStage(work, "unet", modules, opt, warmup_schedule(opt, 200), seed, every=500, log=log,
                       ema_decay=ema_decay)

    def loss(g: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        return {"loss": epsilon_loss(unet, tok, te1, te2, scheduler.alphas_cumprod, latents[idx],
                                     [prompts[i] for i in idx], g)}

    stage.run(steps, loss)
    unet, te1, te2 = stage.weights
    return assemble(vae, te1, te2, tok, unet, scheduler)


def assemble(vae, te1, te2, tok, unet, scheduler):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=te1.eval(), text_encoder_2=te2.eval(), tokenizer=tok, tokenizer_2=tok,
        unet=unet.eval(), scheduler=scheduler, force_zeros_for_empty_prompt=False,
    )


def save_pipeline(pipe, out: Path) -> None:
    """Save as ``out`` (``save_pretrained`` + sampling defaults, atomically)."""
    from mmalign.generators.sdxl import SDXLGenerator

    save_generator(SDXLGenerator(pipe, device=torch.device("cpu"), defaults=SAMPLING_DEFAULTS), out)


def evaluate_model(folder: Path, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """:func:`~mmalign.synth.evaluate.evaluate_generator` of the model in ``folder`` on ``n`` held-out prompts."""
    from mmalign.synth.evaluate import evaluate_generator

    return {**evaluate_generator(str(folder), n=n, seed=seed), "generator": NAME}


def _vae_stage(args: argparse.Namespace, work: Path, out: Path, log: Log) -> None:
    train_vae(work, args.vae_steps, args.seed, bank=args.vae_bank, log=log)


def _unet_stage(args: argparse.Namespace, work: Path, out: Path, log: Log) -> None:
    save_pipeline(train_unet(work, args.steps, args.seed, bank=args.bank, batch=args.batch, log=log), out)


def main(argv: list[str] | None = None) -> None:
    args = trainer_parser(__doc__, ("vae", "unet"), vae_steps=600, steps=8000, batch=32, bank=40000, eval_n=200,
                          vae_bank=20000).parse_args(argv)
    run_trainer(args, NAME, {"vae": _vae_stage, "unet": _unet_stage}, evaluate_model)


if __name__ == "__main__":
    main()
