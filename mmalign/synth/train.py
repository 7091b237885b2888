"""Train the shipped tiny generators of the synthetic world (reproducible, seeded, CPU).

    python -m mmalign.synth.train --model synth-sdxl            # VAE, then UNet + both text encoders
    python -m mmalign.synth.train --model synth-sdxl --stage unet --steps 12000

``synth-sdxl`` is a real :class:`~diffusers.StableDiffusionXLPipeline`: a tiny ``AutoencoderKL``
(32×32 images ↔ 8×8×8 latents), two tiny CLIP text encoders (the second with projection, for
SDXL's pooled embedding) on the project's tokenizer, and a ~2.3M-parameter ``UNet2DConditionModel``
with SDXL's ``text_time`` additional conditioning. It is trained with the epsilon objective of
SDXL's scaled-linear schedule, with 10% empty prompts for classifier-free guidance.
The models are imperfect on purpose: alignment needs room to show its effect.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mmalign.generators._common import write_defaults
from mmalign.paths import asset_path
from mmalign.synth.checkpoint import StageCheckpoint, run_log, save_atomic
from mmalign.synth.prompts import sample_prompts
from mmalign.synth.render import render

TOKENIZER_DIR = asset_path("tokenizers", "clip-synth")
IMAGE_SIZE = 32
LATENT_SIZE = 8  # the VAE downsamples 4x: 32x32x3 images <-> 8x8x8 latents
LATENT_CHANNELS = 8
#: sampling defaults shipped with the pipelines (read by mmalign.generators)
SAMPLING_DEFAULTS = {"steps": 20, "guidance": 4.0}
MAX_TOKENS = 16  # the longest grammar prompt is 10 words; shorter sequences make every step cheaper


def _tokenizer():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
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


def train_vae(out: Path, steps: int, seed: int, batch: int = 32, lr: float = 3e-3, log=print) -> None:
    torch.manual_seed(seed)
    vae = build_vae()
    images, _ = image_bank(20000, seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="vae", mininterval=5)
    for step in bar:
        x = images[torch.randint(0, len(images), (batch,), generator=g)] * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log(json.dumps({"stage": "vae", "step": step, "loss": loss.item(), "kl": kl.item()}))
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i : i + 500] * 2 - 1).latent_dist.mode() for i in range(0, 4000, 500)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    save_atomic(vae, out / "vae")


def _encode_text(tok, te1, te2, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    h1 = te1(ids, output_hidden_states=True).hidden_states[-2]
    o2 = te2(ids, output_hidden_states=True)
    return torch.cat([h1, o2.hidden_states[-2]], dim=-1), o2.text_embeds


class ResumableStage:
    """Optimizer (AdamW, warm-up then constant LR), EMA weights, data RNG and step of one training
    stage, saved every ``every`` steps by a :class:`~mmalign.synth.checkpoint.StageCheckpoint`
    (``WORK/<stage>_state.pt``; ``touch WORK/STOP`` ends the stage early, saved). With a constant LR,
    a run stopped at step N and resumed equals an uninterrupted run.
    """

    def __init__(self, work: Path, stage: str, modules: torch.nn.ModuleList, lr: float, warmup: int, seed: int,
                 ema_decay: float, every: int, log=print) -> None:
        import copy

        self.ema_decay, self.every, self.log = ema_decay, every, log
        self.ema = copy.deepcopy(modules).requires_grad_(False)
        self.pairs = [(e, p) for e, p in zip(self.ema.parameters(), modules.parameters()) if p.requires_grad]
        self.params = [p for _, p in self.pairs]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=1e-2)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warmup))
        self.rng = torch.Generator().manual_seed(seed)
        self.ckpt = StageCheckpoint(work, stage, {"model": modules, "ema": self.ema, "opt": self.opt, "sched": self.sched},
                                    self.rng, log)
        self.step = self.ckpt.resume()

    def update(self, loss: torch.Tensor, total: int) -> bool:
        """One optimizer step on ``loss`` (clipped at norm 1), EMA, checkpoint; True when asked to stop."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        with torch.no_grad():
            for e, p in self.pairs:
                e.lerp_(p, 1 - self.ema_decay)
        self.step += 1
        if self.step % 50 == 1:
            self.log(json.dumps({"stage": self.ckpt.stage, "step": self.step, "loss": loss.item()}))
        return self.ckpt.after_step(self.step, total, self.every)

    def run(self, unet, tok, te1, te2, alphas: torch.Tensor, latents: torch.Tensor, prompts: list[str],
            steps: int, batch: int, desc: str) -> None:
        """Train on random batches of ``latents`` with :func:`epsilon_loss` until ``steps`` (or STOP)."""
        bar = tqdm(range(self.step, steps), desc=desc, mininterval=5, initial=self.step, total=steps)
        for _ in bar:
            idx = torch.randint(0, len(latents), (batch,), generator=self.rng)
            loss = epsilon_loss(unet, tok, te1, te2, alphas, latents[idx], [prompts[i] for i in idx], self.rng)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if self.update(loss, steps):
                break


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


def train_sdxl_unet(
    out: Path, steps: int, seed: int, batch: int = 32, lr: float = 1e-3, ema_decay: float = 0.998, log=print
) -> None:
    """Train the UNet and both text encoders (epsilon objective), resumable from ``out/unet_state.pt``;
    the shipped weights are the EMA of the trained ones."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    tok = _tokenizer()
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    te1, te2 = build_text_encoders(tok)
    unet = build_sdxl_unet()
    scheduler = build_scheduler()
    log(json.dumps({"unet_params": sum(p.numel() for p in unet.parameters())}))
    images, prompts = image_bank(40000, seed + 1)
    latents = _encode_bank(vae, images)
    del images
    stage = ResumableStage(out, "unet", torch.nn.ModuleList([unet, te1, te2]), lr, 200, seed, ema_decay, 500, log)
    stage.run(unet, tok, te1, te2, scheduler.alphas_cumprod, latents, prompts, steps, batch, "unet")
    unet, te1, te2 = stage.ema
    assemble_sdxl(out, vae, te1, te2, tok, unet, scheduler)


def assemble_sdxl(out: Path, vae, te1, te2, tok, unet, scheduler) -> None:
    """Save the components as one ``StableDiffusionXLPipeline`` folder (atomically)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=te1.eval(), text_encoder_2=te2.eval(), tokenizer=tok, tokenizer_2=tok,
        unet=unet.eval(), scheduler=scheduler, force_zeros_for_empty_prompt=False,
    )
    save_atomic(pipe, out / "pipeline")
    write_defaults(out / "pipeline", {"family": "sdxl", **SAMPLING_DEFAULTS})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["synth-sdxl"], default="synth-sdxl",
                   help="synth-video and synth-audio have their own scripts: mmalign.synth.train_video / train_audio")
    p.add_argument("--stage", choices=["all", "vae", "unet"], default="all", help="synth-sdxl stages")
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=8000, help="UNet training steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: assets/models/<model>.work)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or asset_path("models", args.model + ".work")
    log = run_log(work)

    t0 = time.time()
    if args.stage in ("all", "vae"):
        train_vae(work, args.vae_steps, args.seed, log=log)
        log(json.dumps({"stage": "vae", "done_s": time.time() - t0}))
    if args.stage in ("all", "unet"):
        train_sdxl_unet(work, args.steps, args.seed, batch=args.batch, log=log)
        log(json.dumps({"stage": "unet", "done_s": time.time() - t0}))
    print(f"done in {(time.time() - t0) / 60:.1f} min; pipeline in {work / 'pipeline'}")


if __name__ == "__main__":
    main()
