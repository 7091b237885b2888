"""Train ``synth-video``, the shipped tiny text-to-video model of the synthetic world (seeded, CPU, resumable).

    python -m mmalign.zoo.train_video                       # VAE, then DiT + text encoder, then held-out eval
    python -m mmalign.zoo.train_video --stage dit --steps 4000
    python -m mmalign.zoo.train_video --stage dit --init assets/models/synth-video --role-weight 1 \
        --steps 2000 --lr 3e-4 --out runs/synth-video-roles     # continue it, order-aware text

``synth-video`` is a real :class:`~diffusers.WanPipeline` (Wan 2.1 class): a tiny causal-3D
``AutoencoderKLWan`` (9 frames of 32×32 ↔ 5 × 8×8×8 latents: 2× in time, 4× in space), a tiny T5
encoder on the project's tokenizer and a ~1.4M-parameter ``WanTransformer3DModel`` trained with the
rectified-flow velocity objective of :class:`~mmalign.generators.wan.WanAdapter` (10% empty prompts
for classifier-free guidance). A DiT is used rather than AnimateDiff on ``synth-sdxl`` because every
DiT block cross-attends to the prompt from every space-time token (3D RoPE gives each token its frame),
whereas AnimateDiff's motion modules never see the text: the AnimateDiff model trained here ignored
the direction of motion (``benchmarks/probe_video_direction.py``). The pipeline goes to
``assets/models/synth-video/`` (what ``load_generator("synth-video")`` loads) with ``eval.json``, the
oracle's accuracy on held-out prompts.

Wan's cross-attention carries no text positions, so a video model sees its prompt's tokens as a set unless
the text encoder writes each token's role into its output; trained on the flow objective alone, the T5 here
does not, and the model cannot tell "a red square turning blue" from "a blue square turning red"
(``benchmarks/probe_video_direction.py``), the bag-of-words failure that Yuksekgonul et al. 2023 (ICLR,
arXiv:2210.01936) measure in CLIP. ``--role-weight`` adds an auxiliary loss on the encoder's output: a
linear head must tell a change prompt's first color token from the color it turns to (cross entropy).

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
from mmalign.errors import ConfigError
from mmalign.synth.prompts import sample_prompts
from mmalign.synth.render import render
from mmalign.zoo.stages import TrainStage, run_trainer, save_generator, seeded, trainer_parser, warmup_schedule

NAME = "synth-video"
FRAMES = 9  # Wan's causal VAE takes 1 + k·(time compression) frames
TIME_COMPRESSION = 2
Z_DIM = 8
MAX_TOKENS = 16
SAMPLING_DEFAULTS = {"steps": 20, "guidance": 4.0, "num_frames": FRAMES, "fps": 8.0, "height": 32, "width": 32,
                     "max_sequence_length": MAX_TOKENS}


def tokenizer():
    from mmalign.generators.tiny import t5_tokenizer

    tok = t5_tokenizer()
    tok.model_max_length = MAX_TOKENS
    return tok


def build_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 4], num_res_blocks=1,
                            temperal_downsample=[False, True], scale_factor_temporal=TIME_COMPRESSION,
                            scale_factor_spatial=4, latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM)


def build_text_encoder(tok):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2,
                                       dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=tok.pad_token_id,
                                       eos_token_id=tok.eos_token_id))


def build_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=Z_DIM,
                                 out_channels=Z_DIM, text_dim=64, freq_dim=64, ffn_dim=256, num_layers=6,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def build_scheduler(shift: float = 1.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def video_bank(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` rendered training videos ``[n, T, 3, 32, 32]`` in [0, 1] and their prompts."""
    prompts = sample_prompts("video", n, seed=seed, split="train")
    chunks = [render(prompts[i : i + 1000], seed=seed + i, frames=FRAMES).pixels for i in range(0, n, 1000)]
    return torch.cat(chunks), prompts


def color_roles(prompts: list[str], tok) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The change prompts among ``prompts`` ("a red square turning blue") tokenized as the pipeline does
    (``input_ids``, ``attention_mask``, ``[n, MAX_TOKENS]``) and the positions ``[n, 2]`` of the first
    color's token and of the token of the color it turns to."""
    from mmalign.synth.prompts import parse_prompt

    specs = [(p, parse_prompt(p, "video")) for p in prompts]
    change = [(p, s) for p, s in specs if s.kind == "change"]
    if not change:
        raise ConfigError("no change prompts to learn color roles from: use a larger --bank")
    enc = tok([p for p, _ in change], padding="max_length", max_length=MAX_TOKENS, truncation=True,
              return_tensors="pt")

    def position(ids: list[int], color: str, last: bool) -> int:
        token = tok(color, add_special_tokens=False).input_ids[0]
        hits = [i for i, t in enumerate(ids) if t == token]
        return hits[-1] if last else hits[0]

    pos = [[position(ids, s.objects[0][0], False), position(ids, s.color_to, True)]
           for ids, (_, s) in zip(enc.input_ids.tolist(), change)]
    return enc.input_ids, enc.attention_mask, torch.tensor(pos)


@seeded
def train_vae(work: Path, steps: int, seed: int, batch: int = 4, lr: float = 2e-3, bank: int = 4000,
              log: Log = print) -> None:
    """Stage 1: the causal 3D VAE on whole 9-frame clips (MSE + 1e-4 KL per latent element); then the
    per-channel ``latents_mean`` / ``latents_std`` that ``WanPipeline`` un-normalises with; saved (EMA
    weights) as ``WORK/vae``."""
    vae = build_vae()
    videos = video_bank(bank, seed)[0].permute(0, 2, 1, 3, 4) * 2 - 1  # [n, 3, T, H, W] in [-1, 1]
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-2)
    stage = TrainStage(work, "vae", vae, opt, warmup_schedule(opt, 100), seed, every=100, log=log, ema_decay=0.99)

    def loss(g: torch.Generator) -> dict[str, torch.Tensor]:
        x = videos[torch.randint(0, len(videos), (batch,), generator=g)]
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        kl = post.kl().mean() / z[0].numel()
        return {"loss": F.mse_loss(vae.decode(z).sample, x) + 1e-4 * kl, "kl": kl}

    stage.run(steps, loss)
    vae = stage.weights.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(videos[i : i + 50]).latent_dist.mode() for i in range(0, min(bank, 400), 50)])
    dims = (0, 2, 3, 4)
    vae.register_to_config(latents_mean=z.mean(dims).tolist(), latents_std=z.std(dims).tolist())
    atomic_folder(work / "vae", vae.save_pretrained)


def assemble(vae, te, tok, transformer, scheduler):
    from diffusers import WanPipeline

    return WanPipeline(tokenizer=tok, text_encoder=te.eval(), vae=vae.eval(), transformer=transformer.eval(),
                       scheduler=scheduler)


@seeded
def train_dit(work: Path, steps: int, seed: int, batch: int = 16, lr: float = 1e-3, ema_decay: float = 0.998,
              bank: int = 4000, init: Path | None = None, role_weight: float = 0.0, log: Log = print):
    """Stage 2: the DiT and the T5 encoder with :class:`~mmalign.generators.wan.WanAdapter`'s objective
    (``noise`` / ``target`` / ``predict`` / ``encode_prompts``); returns the pipeline with EMA weights.

    ``init``: continue a saved pipeline (its VAE, DiT and text encoder) instead of new weights and
    ``WORK/vae``. ``role_weight`` > 0 adds ``role_weight`` × the color-role loss (module docstring) on
    ``batch`` change prompts of the bank per step."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    from mmalign.generators.wan import WanGenerator
    from mmalign.media import VideoBatch

    tok = tokenizer()
    vae = AutoencoderKLWan.from_pretrained(init / "vae" if init else work / "vae").eval().requires_grad_(False)
    if init:
        te = UMT5EncoderModel.from_pretrained(init / "text_encoder")
        transformer = WanTransformer3DModel.from_pretrained(init / "transformer")
    else:
        te, transformer = build_text_encoder(tok), build_transformer()
    log(json.dumps({"dit_params": sum(p.numel() for p in transformer.parameters()),
                    "text_params": sum(p.numel() for p in te.parameters())}))
    adapter = WanGenerator(assemble(vae, te, tok, transformer, build_scheduler()), device=torch.device("cpu"),
                           defaults=SAMPLING_DEFAULTS).trainable()
    videos, prompts = video_bank(bank, seed + 1)
    latents = torch.cat([adapter.encode_media(VideoBatch(videos[i : i + 50], fps=8.0)) for i in range(0, bank, 50)])
    del videos
    log(json.dumps({"latents": list(latents.shape), "latent_std": latents.std().item()}))
    transformer.train()
    te.train()
    modules = torch.nn.ModuleList([transformer, te])
    if role_weight:
        role_ids, role_mask, role_pos = color_roles(prompts, tok)
        modules.append(torch.nn.Linear(te.config.d_model, 2))  # the role head, trained and then dropped
    opt = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=1e-2)
    stage = TrainStage(work, "dit", modules, opt, warmup_schedule(opt, 200), seed, every=250, log=log,
                       ema_decay=ema_decay)

    def loss(g: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0 = latents[idx]
        texts = [prompts[i] if torch.rand((), generator=g) > 0.1 else "" for i in idx.tolist()]
        noise = torch.randn(x0.shape, generator=g)
        t = adapter.sample_timesteps(batch, generator=g)
        pred = adapter.predict(adapter.noise(x0, noise, t), t, adapter.encode_prompts(texts))
        out = {"loss": F.mse_loss(pred, adapter.target(x0, noise, t))}
        if role_weight:
            j = torch.randint(0, len(role_ids), (batch,), generator=g)
            h = te(role_ids[j], attention_mask=role_mask[j]).last_hidden_state
            rows = torch.arange(batch)
            feats = torch.cat([h[rows, role_pos[j, 0]], h[rows, role_pos[j, 1]]])
            out["role"] = F.cross_entropy(modules[2](feats), torch.arange(2).repeat_interleave(batch))
            out["loss"] = out["loss"] + role_weight * out["role"]
        return out

    stage.run(steps, loss)
    transformer, te = stage.weights[:2]
    return assemble(vae, te, tok, transformer, build_scheduler())


def save_pipeline(pipe, out: Path, shift: float) -> None:
    """Save as ``out`` (``save_pretrained`` + sampling defaults, atomically) with a scheduler of timestep ``shift``."""
    from mmalign.generators.wan import WanGenerator

    pipe.scheduler = build_scheduler(shift)
    save_generator(WanGenerator(pipe, device=torch.device("cpu"), defaults=SAMPLING_DEFAULTS), out)


def evaluate_model(folder: Path, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """:func:`~mmalign.synth.evaluate.evaluate_generator` on ``n`` held-out prompts (the format every shipped
    model records), plus the oracle on the VAE reconstructions of the rendered truth (the ceiling of the latent model)."""
    from mmalign.generators import load_generator
    from mmalign.media import VideoBatch
    from mmalign.synth.evaluate import evaluate_generator
    from mmalign.synth.oracle import evaluate

    gen = load_generator(str(folder))
    result = {**evaluate_generator(gen, n=n, seed=seed), "generator": NAME}
    prompts = sample_prompts("video", n, seed=seed, split="heldout")
    truth = render(prompts, seed=seed, frames=FRAMES).pixels.permute(0, 2, 1, 3, 4) * 2 - 1
    vae = gen.pipe.vae
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(truth[i : i + 50]).latent_dist.mode()).sample for i in range(0, n, 50)])
    rec = VideoBatch(((rec + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4), fps=8.0, prompts=prompts)
    result["vae_reconstruction"] = {k: round(v, 4) for k, v in evaluate(rec, prompts).per_skill_accuracy().items()}
    return result


def _vae_stage(args: argparse.Namespace, work: Path, out: Path, log: Log) -> None:
    train_vae(work, args.vae_steps, args.seed, bank=args.vae_bank, log=log)


def _dit_stage(args: argparse.Namespace, work: Path, out: Path, log: Log) -> None:
    pipe = train_dit(work, args.steps, args.seed, batch=args.batch, lr=args.lr, bank=args.bank, init=args.init,
                     role_weight=args.role_weight, log=log)
    save_pipeline(pipe, out, args.shift)


def main(argv: list[str] | None = None) -> None:
    p = trainer_parser(__doc__, ("vae", "dit"), vae_steps=1200, steps=8000, batch=16, bank=4000, eval_n=200)
    p.add_argument("--shift", type=float, default=1.0, help="flow-matching timestep shift used for sampling")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the dit stage")
    p.add_argument("--init", type=Path, default=None, help="continue this saved synth-video folder in the dit stage "
                   "(its VAE; no vae stage), into --out (state in OUT.work unless --work)")
    p.add_argument("--role-weight", type=float, default=0.0,
                   help="weight of the auxiliary color-role loss on the text encoder (0: off, as shipped)")
    args = p.parse_args(argv)
    if args.init:  # a fresh state folder: the default one may hold the original run's finished dit stage
        if args.stage != "dit" or args.out is None:
            p.error("--init continues a trained model's dit stage into a new folder: add --stage dit and --out FOLDER")
        args.work = args.work or args.out.with_name(args.out.name + ".work")
    run_trainer(args, NAME, {"vae": _vae_stage, "dit": _dit_stage}, evaluate_model)


if __name__ == "__main__":
    main()
