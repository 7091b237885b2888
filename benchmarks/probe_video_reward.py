"""What can a video reward teach ``synth-video``? A diagnostic of the reward against the oracle, not a speed test.

    python benchmarks/probe_video_reward.py                    # about 1.5 min (synth-video, two CPU threads)
    python benchmarks/probe_video_reward.py --scorers synth-video-reward synth-hps-video synth-iqa

On base samples of train-split prompts it reports, for each scorer and each prompt kind (motion, static,
change):

* ``auc``: the chance that the scorer ranks the more faithful of two samples of the same kind higher
  (pairs whose oracle faithfulness differs; 0.5 = blind, below 0.5 = the reward pulls the wrong way);
* ``render_gain``: mean score of the rendered ground-truth video minus that of the base sample (what
  the reward would pay for a perfect video), and the share of prompts where it is positive;
* ``empty_wins``: the share of prompts where a video of background only outscores the base sample: a
  reward that pays for an empty frame can only be held back by a regulariser.

It also measures the oracle's quality of the base samples, of the renders, and of the renders after a
round trip through the generator's VAE: the ceiling that fine-tuning the denoiser alone can reach (the
decoder draws every frame). Writes ``OUT`` (JSON).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pair_auc(score, faith) -> tuple[float, int]:
    """P(score_i > score_j | faith_i > faith_j) over all such pairs (ties count one half), and the pair count."""
    import numpy as np

    s, f = np.asarray(score, float), np.asarray(faith, float)
    better = f[:, None] > f[None, :]
    n = int(better.sum())
    if n == 0:
        return float("nan"), 0
    wins = (s[:, None] > s[None, :]) + 0.5 * (s[:, None] == s[None, :])
    return float(wins[better].mean()), n


def vae_round_trip(gen, pixels):
    """Videos ``[B, T, 3, H, W]`` in [0, 1] encoded and decoded by ``gen``'s causal 3-D VAE (Wan's; latent mode)."""
    import torch

    vae = gen.pipe.vae
    with torch.no_grad():
        x = pixels.permute(0, 2, 1, 3, 4).to(vae.dtype) * 2 - 1  # [B, 3, T, H, W]
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.permute(0, 2, 1, 3, 4)
    return ((y.float().clamp(-1, 1) + 1) / 2).cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default="synth-video", help="preset or folder of a synthetic-world video generator")
    ap.add_argument("--scorers", nargs="+", default=["synth-video-reward", "synth-hps-video", "synth-iqa"])
    ap.add_argument("--prompts", type=int, default=256, help="train-split video prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_video_reward.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from mmalign.errors import ConfigError
    from mmalign.fileio import atomic_write_json
    from mmalign.generators import load_generator
    from mmalign.media import VideoBatch
    from mmalign.scoring import load_scorer
    from mmalign.synth.oracle import BACKGROUND, evaluate
    from mmalign.synth.prompts import parse_prompt, sample_prompts
    from mmalign.synth.render import render

    torch.set_num_threads(args.threads)
    gen = load_generator(args.generator)
    if "Wan" not in type(gen.pipe.vae).__name__:
        raise ConfigError(f"probe_video_reward: the VAE round trip takes a causal 3-D VAE (AutoencoderKLWan); "
                          f"{args.generator} has {type(gen.pipe.vae).__name__}: probe a Wan-family generator")
    prompts = sample_prompts("video", args.prompts, seed=args.seed, split="train")
    base = gen.sample(prompts, seed=args.seed)
    frames = base.pixels.shape[1]
    truth = render(prompts, seed=args.seed, modality="video", frames=frames)
    empty = VideoBatch(torch.tensor(BACKGROUND).view(1, 1, 3, 1, 1).expand_as(base.pixels).clone(), fps=base.fps,
                       prompts=prompts)
    kinds = np.array([parse_prompt(p, "video").kind for p in prompts], dtype=object)
    judged = evaluate(base, prompts)
    faith = judged.faithfulness.numpy()

    report: dict = {"generator": args.generator, "prompts": len(prompts), "seed": args.seed, "scorers": {}}
    for name in args.scorers:
        scorer = load_scorer(name)
        sb, st, se = (scorer.score(m, prompts, progress=False).float().numpy() for m in (base, truth, empty))
        rows = {}
        for kind in sorted(set(kinds.tolist())):
            m = kinds == kind
            auc, pairs = pair_auc(sb[m], faith[m])
            rows[kind] = {"n": int(m.sum()), "base_faithfulness": round(float(faith[m].mean()), 4),
                          "auc": round(auc, 4), "auc_pairs": pairs,
                          "render_gain": round(float((st - sb)[m].mean()), 4),
                          "render_gain_positive": round(float(((st - sb)[m] > 0).mean()), 4),
                          "empty_wins": round(float(((se - sb)[m] > 0).mean()), 4)}
        rows["all"] = {"empty_wins": round(float((se > sb).mean()), 4), "render_gain": round(float((st - sb).mean()), 4)}
        report["scorers"][name] = rows
        print(name, rows, flush=True)

    chunk = 32
    trip = VideoBatch(torch.cat([vae_round_trip(gen, truth.pixels[i : i + chunk]) for i in range(0, len(prompts), chunk)]),
                      fps=base.fps, prompts=prompts)
    report["oracle_quality"] = {"base": round(float(judged.quality.mean()), 4)}
    report["oracle_quality"].update({k: round(float(evaluate(m, prompts).quality.mean()), 4)
                                     for k, m in (("render", truth), ("render_vae_round_trip", trip))})
    print("oracle quality", report["oracle_quality"], flush=True)
    atomic_write_json(args.out, report)
    print(f"report in {args.out}")


if __name__ == "__main__":
    main()
