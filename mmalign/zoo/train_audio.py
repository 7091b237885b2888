"""Train the shipped ``synth-audio`` generator of the synthetic world (reproducible, seeded, CPU).

    python -m mmalign.zoo.train_audio                           # VAE, then DiT + T5 + projection, then eval
    python -m mmalign.zoo.train_audio --stage dit --steps 6000   # resume / continue one stage

``synth-audio`` is a real :class:`~diffusers.StableAudioPipeline` (Evans et al. 2024, "Stable Audio
Open") on 8 kHz mono, 1 s melodies. 8 kHz, not the world's default 16 kHz: everything the oracle hears
(fundamentals up to 784 Hz, their 2nd and 3rd harmonics, onsets) lies below 4 kHz, and half the samples
per second halve the tiny VAE's work:

* a tiny ``AutoencoderOobleck`` (downsampling 4·4·2 = 32 samples per latent frame, so a clip of
  250·32 = 8000 samples is 250 latent frames), trained on rendered melodies with waveform L1 plus a
  multi-resolution STFT magnitude loss (spectral convergence + log magnitude; Yamamoto et al. 2020,
  "Parallel WaveGAN", §2.3) and a small KL term. Afterwards the encoder's mean output and the
  decoder's input are rescaled per channel (an exact reparametrisation of the weights) so the latents
  have unit standard deviation, as the EDM scheduler's ``sigma_data = 1`` assumes;
* a tiny T5 encoder on the project's tokenizer (``assets/tokenizers/t5-synth``), the
  ``StableAudioProjectionModel`` (text + seconds start/end conditioning) and a small
  ``StableAudioDiTModel``, trained jointly with the objective of the project's Stable Audio adapter
  (:class:`mmalign.generators.stable_audio.StableAudioAdapter`: EDM v-objective, Karras et al. 2022,
  Table 1, with σ = tan(π/2·t/1000)), so later fine-tuning continues the same objective;
* the family's scheduler, ``EDMDPMSolverMultistepScheduler`` (σ ∈ [0.3, 500], σ_data = 1, exponential
  schedule, v-prediction, as Stable Audio Open).

Classifier-free guidance: 10% of training items get the *zeroed* cross-attention conditioning, which
is exactly the unconditional input ``StableAudioPipeline`` builds at sampling time (it does not encode
an empty string). Each stage is resumable (``WORK/<stage>_state.pt`` every few hundred steps) and
``touch WORK/STOP`` ends the running stage early, saves it and goes on with the next stage; the shipped
DiT / T5 / projection weights are an EMA of the trained ones. The pipeline goes to
``assets/models/synth-audio/`` (what ``load_generator("synth-audio")`` loads); finally the oracle scores
samples for 60 held-out prompts and the result goes next to it, to ``eval.json``. The model is
imperfect on purpose: alignment needs room to show its effect.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmalign.checkpoint import Log, atomic_folder
from mmalign.synth.prompts import parse_prompt, sample_prompts
from mmalign.synth.render import render
from mmalign.zoo.stages import TrainStage, run_trainer, save_generator, seeded, trainer_parser, warmup_schedule

NAME = "synth-audio"
SAMPLE_RATE = 8000
RATIOS = (4, 4, 2)
HOP = 4 * 4 * 2
LATENT_FRAMES = 250  # 250 * 32 = 8000 samples = 1 s
LATENT_CHANNELS = 8
CLIP = LATENT_FRAMES * HOP
MAX_TOKENS = 16  # grammar prompts are 8 words (9 tokens with </s>)
TEXT_DIM = 64
#: sampling defaults written next to the pipeline (mmalign_generator.json)
DEFAULTS = {"steps": 24, "guidance": 3.0, "audio_end_in_s": 1.0}



# ---------------------------------------------------------------------------------------------
# components


def tokenizer():
    from mmalign.generators.tiny import t5_tokenizer

    tok = t5_tokenizer()
    tok.model_max_length = MAX_TOKENS
    return tok


def build_vae():
    """Oobleck VAE, 8 latent channels at 250 frames/s. Decoder width 32: at 16 the decoder returned the
    harmonics above about 1 kHz at 1–10% of their energy, so square waves above the low register and
    high sawtooths came back as sines (held-out timbre 73% on reconstructions after 3000 steps); at 32 every
    combination comes back right (100%, same data and steps)."""
    from diffusers import AutoencoderOobleck

    return AutoencoderOobleck(encoder_hidden_size=2 * LATENT_CHANNELS, downsampling_ratios=list(RATIOS),
                              channel_multiples=[1, 2, 4], decoder_channels=32,
                              decoder_input_channels=LATENT_CHANNELS, audio_channels=1, sampling_rate=SAMPLE_RATE)


def build_text(tok):
    """Tiny T5 encoder (``tiny.t5_encoder``) and the Stable Audio projection (text + seconds)."""
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel

    from mmalign.generators.tiny import t5_encoder

    te = t5_encoder(len(tok), d_model=TEXT_DIM)
    proj = StableAudioProjectionModel(text_encoder_dim=TEXT_DIM, conditioning_dim=TEXT_DIM, min_value=0, max_value=2)
    return te, proj


def build_dit():
    from diffusers import StableAudioDiTModel

    return StableAudioDiTModel(sample_size=LATENT_FRAMES, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                               num_layers=4, attention_head_dim=16, num_attention_heads=4,
                               num_key_value_attention_heads=2, cross_attention_dim=64, time_proj_dim=64,
                               global_states_input_dim=2 * TEXT_DIM, cross_attention_input_dim=TEXT_DIM)


def build_scheduler():
    from diffusers import EDMDPMSolverMultistepScheduler

    return EDMDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0,
                                          sigma_schedule="exponential", prediction_type="v_prediction",
                                          solver_order=2)


def assemble(vae, te, proj, tok, dit, scheduler):
    from diffusers import StableAudioPipeline

    return StableAudioPipeline(vae=vae.eval(), text_encoder=te.eval(), projection_model=proj.eval(), tokenizer=tok,
                               transformer=dit.eval(), scheduler=scheduler)


# ---------------------------------------------------------------------------------------------
# data


def melody_bank(n: int, seed: int, split: str | None = "train") -> tuple[torch.Tensor, list[str]]:
    """``n`` rendered melodies ``[n, 1, CLIP]`` (1 s, zero-padded to whole latent frames) and their prompts
    (``split=None``: every register × tempo × timbre)."""
    prompts = sample_prompts("audio", n, seed=seed, split=split)
    audio = torch.cat([render(prompts[i : i + 500], seed=seed + i, sample_rate=SAMPLE_RATE).samples for i in range(0, n, 500)])
    return F.pad(audio, (0, CLIP - audio.shape[-1])), prompts


# ---------------------------------------------------------------------------------------------
# VAE


def stft_loss(rec: torch.Tensor, x: torch.Tensor, sizes: tuple[int, ...] = (64, 256, 1024)) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + L1 of log magnitudes (Yamamoto et al. 2020, eq. 4–6).

    The log has a floor of 1e-2 (about 80 dB below a note's peak), not 1e-5: with 1e-5 the hundreds of
    near-silent bins dominated the L1, matching silence paid more than placing a sine's one spectral
    peak, and every VAE trained with it decoded sines at about one pitch (register 43–80% on held-out
    reconstructions after 3000–4000 steps; 100% after 1500 with the floor, same data)."""
    loss = rec.new_zeros(())
    for n in sizes:
        win = torch.hann_window(n, device=x.device)
        spec = [torch.stft(s.flatten(0, 1), n, hop_length=n // 4, window=win, return_complex=True).abs()
                for s in (rec, x)]
        loss = loss + (spec[1] - spec[0]).norm() / spec[1].norm().clamp_min(1e-6)
        loss = loss + F.l1_loss(torch.log(spec[0] + 1e-2), torch.log(spec[1] + 1e-2))
    return loss / len(sizes)


def speed_perturb(audio: torch.Tensor, factor: float) -> torch.Tensor:
    """Play ``audio`` ``[..., N]`` ``factor`` times faster: pitch up by ``12·log2(factor)`` semitones, tempo
    times ``factor``, length ``N / factor``. Band-limited resampling in the Fourier domain (bins above the
    new Nyquist are dropped, missing ones are zero); whole clips start and end in silence, so the
    periodic extension adds no click. Speed perturbation as in Ko et al. 2015, "Audio augmentation for
    speech recognition"."""
    n = audio.shape[-1]
    m = max(1, round(n / factor))
    spec = torch.fft.rfft(audio)[..., : m // 2 + 1]
    return torch.fft.irfft(spec, n=m) * (m / n)


def augmented_crops(audio: torch.Tensor, crop: int, batch: int, g: torch.Generator,
                    max_shift: float = 12.0) -> torch.Tensor:
    """``batch`` random ``crop``-sample windows of random clips; half of them speed-perturbed by up to
    ``±max_shift`` semitones (log-uniform).

    Shifted clips put every timbre at pitches and tempos between and beyond the grammar's registers,
    so the codec does not learn one pitch per timbre.
    """
    idx = torch.randint(0, len(audio), (batch,), generator=g).tolist()
    shift = (torch.rand(batch, generator=g) * 2 - 1) * max_shift
    perturb = (torch.rand(batch, generator=g) < 0.5).tolist()
    u = torch.rand(batch, generator=g).tolist()
    out = []
    for i, s, p, r in zip(idx, shift.tolist(), perturb, u):
        clip = speed_perturb(audio[i], 2 ** (s / 12)) if p else audio[i]
        clip = F.pad(clip, (0, max(0, crop - clip.shape[-1])))
        off = int(r * (clip.shape[-1] - crop + 1))
        out.append(clip[:, off : off + crop])
    return torch.stack(out)


@torch.no_grad()
def normalize_latents(vae, audio: torch.Tensor) -> torch.Tensor:
    """Rescale the latent channels to unit std by an exact change of the weights.

    The posterior mean ``μ = W x + b`` (first half of the encoder's last conv) becomes ``μ / s`` and the
    decoder's first conv takes ``s · z`` (weight-normed convs: ``weight = g · v / ‖v‖``, so ``g`` and
    ``b`` are divided for the encoder, ``v`` re-set and ``g = ‖v‖`` for the decoder). Returns ``s``.
    """
    mu = torch.cat([vae.encode(audio[i : i + 100]).latent_dist.mode() for i in range(0, len(audio), 100)])
    s = mu.transpose(0, 1).flatten(1).std(dim=1)  # per channel
    c = len(s)
    enc = vae.encoder.conv2
    enc.weight_g[:c] /= s.view(-1, 1, 1)
    enc.bias[:c] /= s
    dec = vae.decoder.conv1
    w = dec.weight.detach() * s.view(1, -1, 1)
    dec.weight_v.copy_(w)
    dec.weight_g.copy_(w.norm(dim=(1, 2), keepdim=True))
    return s


@seeded
def train_vae(work: Path, steps: int, seed: int, bank: int = 1500, batch: int = 16, crop: int = 2048, lr: float = 1e-3,
              kl_weight: float = 1e-4, save_every: int = 100, log: Log = print) -> None:
    """Stage 1: the Oobleck VAE on random ``crop``-sample windows of rendered melodies, half of them
    speed-perturbed (:func:`augmented_crops`); resumable.

    The VAE is a prompt-free codec, so it hears melodies of all 18 register × tempo × timbre
    combinations (as Stable Audio's VAE is trained on audio at large), without their prompts. Trained on
    the 13 train-split combinations only, it decoded every sine at about the same pitch (a high sine 15
    semitones low, a low one 11 high: never heard, never learnt), and no DiT can sample what its VAE
    cannot decode. The text-conditioned parts (T5, projection, DiT) see train-split prompts only, so
    held-out prompts stay unseen text → audio combinations.
    """
    vae = build_vae()
    audio, _ = melody_bank(bank, seed, split=None)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (0.1 + 0.9 * max(0.0, 1 - s / steps)))
    stage = TrainStage(work, "vae", vae, opt, sched, seed, every=save_every, log=log, log_every=25)
    log(json.dumps({"vae_params": sum(p.numel() for p in vae.parameters())}))

    def loss(g: torch.Generator) -> dict[str, torch.Tensor]:
        x = augmented_crops(audio, crop, batch, g)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample[..., :crop]
        kl = post.kl() / post.mean.shape[1]
        l1 = F.l1_loss(rec, x)
        spec = stft_loss(rec, x)
        return {"loss": l1 + spec + kl_weight * kl, "l1": l1, "stft": spec, "kl": kl}

    stage.run(steps, loss)
    vae.eval()
    s = normalize_latents(vae, audio[:400])
    log(json.dumps({"stage": "vae", "latent_std_before": s.tolist()}))
    atomic_folder(work / "vae", vae.save_pretrained)


# ---------------------------------------------------------------------------------------------
# DiT + T5 + projection


def drop_attributes(prompts: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Leave out each tempo / register / timbre word with probability ``p`` (``"a fast melody on a synth"``).

    The grammar has 18 prompts and the held-out split keeps 5 of them unseen, so a text encoder trained
    on the other 13 whole prompts can memorise them instead of learning what each word does. Training
    also on partial prompts (per-attribute condition dropout) shows each word's own effect, which is what
    a new combination of known words needs.
    """
    if p <= 0:
        return prompts
    out = []
    for prompt, drop in zip(prompts, (torch.rand(len(prompts), 3, generator=generator) < p).tolist()):
        spec = parse_prompt(prompt, "audio")
        tempo, register, timbre = (None if d else w for w, d in zip((spec.tempo, spec.register, spec.timbre), drop))
        head = " ".join(w for w in ("a", tempo, register, "melody") if w)
        out.append(f"{head} on a {timbre} synth" if timbre else f"{head} on a synth")
    return out


@seeded
def train_dit(work: Path, steps: int, seed: int, bank: int = 1500, batch: int = 32, lr: float = 1e-3, ema_decay: float = 0.998,
              attr_dropout: float = 0.0, save_every: int = 250, log: Log = print):
    """Stage 2: DiT, T5 and projection with the Stable Audio adapter's objective; resumable.

    ``attr_dropout``: probability of leaving out each attribute word of a prompt (:func:`drop_attributes`).

    ``noise`` / ``target`` / ``predict`` / ``encode_prompts`` come from
    :class:`~mmalign.generators.stable_audio.StableAudioAdapter` on the assembled pipeline.
    Returns the pipeline with the EMA weights.
    """
    from diffusers import AutoencoderOobleck

    from mmalign.generators.stable_audio import StableAudioGenerator

    tok = tokenizer()
    vae = AutoencoderOobleck.from_pretrained(work / "vae").eval().requires_grad_(False)
    te, proj = build_text(tok)
    dit = build_dit()
    modules = torch.nn.ModuleList([dit, te, proj])
    log(json.dumps({"dit_params": sum(p.numel() for p in dit.parameters()),
                    "text_params": sum(p.numel() for p in te.parameters()) + sum(p.numel() for p in proj.parameters())}))
    pipe = assemble(vae, te, proj, tok, dit, build_scheduler())
    adapter = StableAudioGenerator(pipe, device=torch.device("cpu")).trainable()
    audio, prompts = melody_bank(bank, seed + 1)
    with torch.no_grad():
        latents = torch.cat([vae.encode(audio[i : i + 100]).latent_dist.mode() for i in range(0, len(audio), 100)])
    del audio
    log(json.dumps({"latents": list(latents.shape), "latent_std": latents.std().item()}))
    opt = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=1e-2)
    stage = TrainStage(work, "dit", modules, opt, warmup_schedule(opt, 200), seed, every=save_every, log=log,
                       ema_decay=ema_decay, ema_warmup=True)
    modules.train()

    def loss(g: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0 = latents[idx]
        keep = (torch.rand(batch, generator=g) > 0.1).float()
        cond = adapter.encode_prompts(drop_attributes([prompts[i] for i in idx.tolist()], attr_dropout, g))
        # unconditional items: zeroed cross-attention states, as StableAudioPipeline's CFG branch
        cond["prompt_embeds"] = cond["prompt_embeds"] * keep.view(-1, 1, 1)
        noise = torch.randn(x0.shape, generator=g)
        t = adapter.sample_timesteps(batch, generator=g)
        pred = adapter.predict(adapter.noise(x0, noise, t), t, cond)
        return {"loss": F.mse_loss(pred, adapter.target(x0, noise, t))}

    stage.run(steps, loss)
    dit, te, proj = stage.weights
    return assemble(vae, te, proj, tok, dit, build_scheduler())


def save_pipeline(pipe, out: Path) -> None:
    """Save as ``out`` (``save_pretrained`` + sampling defaults, atomically)."""
    from mmalign.generators.stable_audio import StableAudioGenerator

    save_generator(StableAudioGenerator(pipe, device=torch.device("cpu"), defaults=DEFAULTS), out)


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate_model(folder: Path, n: int = 60, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Oracle per-skill accuracy of the model's samples for ``n`` held-out prompts, plus two references:
    the rendered ground truth and its VAE reconstruction (the ceiling the latent model can reach)."""
    from mmalign.generators import load_generator
    from mmalign.media import AudioBatch
    from mmalign.synth.oracle import evaluate

    prompts = sample_prompts("audio", n, seed=seed, split="heldout")
    gen = load_generator(str(folder))
    t0 = time.time()
    samples = gen.sample(prompts, n=1, seed=seed, progress=progress)
    sample_s = time.time() - t0
    truth = render(prompts, seed=seed, sample_rate=SAMPLE_RATE)
    vae = gen.pipe.vae
    with torch.no_grad():
        x = F.pad(truth.samples, (0, CLIP - truth.samples.shape[-1]))
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample[..., : truth.samples.shape[-1]].clamp(-1, 1)
    rec = AudioBatch(rec, sample_rate=SAMPLE_RATE, prompts=prompts)

    def acc(media) -> dict[str, float]:
        r = evaluate(media, prompts)
        return {**{k: round(v, 4) for k, v in r.per_skill_accuracy().items()},
                "faithfulness": round(float(r.faithfulness.mean()), 4), "quality": round(float(r.quality.mean()), 4)}

    return {"generator": NAME, "prompts": f"sample_prompts('audio', {n}, seed={seed}, split='heldout')",
            "seed": seed, "sampling": {k: v for k, v in gen.defaults.items()},
            "samples": acc(samples), "rendered": acc(truth), "vae_reconstruction": acc(rec),
            "chance": {"register": 1 / 3, "tempo": 1 / 2, "timbre": 1 / 3}, "majority": majority_baseline(prompts),
            "sample_seconds": round(sample_s, 1)}


def majority_baseline(prompts: list[str]) -> dict[str, float]:
    """Accuracy of always answering the most common register / tempo / timbre of ``prompts``: the held-out
    audio prompts are few (the grammar has 18), so this is the bar to clear, not uniform chance."""
    from collections import Counter

    from mmalign.synth.prompts import parse_prompt

    specs = [parse_prompt(p, "audio") for p in prompts]
    return {skill: round(Counter(getattr(s, skill) for s in specs).most_common(1)[0][1] / len(specs), 4)
            for skill in ("register", "tempo", "timbre")}


# ---------------------------------------------------------------------------------------------


def _vae_stage(args: argparse.Namespace, work: Path, out: Path, log: Log) -> None:
    train_vae(work, args.vae_steps, args.seed, bank=args.vae_bank, batch=args.vae_batch, log=log)


def _dit_stage(args: argparse.Namespace, work: Path, out: Path, log: Log) -> None:
    pipe = train_dit(work, args.steps, args.seed, bank=args.bank, batch=args.batch, attr_dropout=args.attr_dropout, log=log)
    save_pipeline(pipe, out)


def main(argv: list[str] | None = None) -> None:
    p = trainer_parser(__doc__, ("vae", "dit"), vae_steps=3000, steps=3000, batch=32, bank=1500, eval_n=60)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--attr-dropout", type=float, default=0.3,
                   help="probability of leaving out each tempo / register / timbre word of a DiT training prompt")
    run_trainer(p.parse_args(argv), NAME, {"vae": _vae_stage, "dit": _dit_stage}, evaluate_model)


if __name__ == "__main__":
    main()
