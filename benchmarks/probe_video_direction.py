"""Does ``synth-video`` use the direction word of "a red circle moving left"? A diagnostic, not a speed test.

    python benchmarks/probe_video_direction.py            # 1 min (synth-video, one CPU thread)
    python benchmarks/probe_video_direction.py --generator runs/my-video-model

For rendered motion videos it measures the model's training loss (its adapter's objective: epsilon,
v or flow velocity) at several timesteps t of its schedule under three prompts: the true one, the
same prompt with the direction reversed ("left" <-> "right", "up" <-> "down"), and, as a control,
with the color swapped. A model that uses a word has a higher loss under the wrong word. It also
reports how much of the latent variance the direction alone explains (the x0 error of the
per-direction mean video vs the mean of all motion videos; fitted on the same videos, so about 3/n
too high): the signal a perfect model could draw from the word where the noisy input shows nothing
(the largest noise levels). Writes ``OUT`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FLIP = {"left": "right", "right": "left", "up": "down", "down": "up"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default="synth-video", help="preset or folder of a trainable video generator")
    ap.add_argument("--videos", type=int, default=256, help="rendered motion videos (train split)")
    ap.add_argument("--timesteps", default="999,900,800,600,400,200")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_video_direction.json"))
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from mmalign.generators import load_generator
    from mmalign.media import VideoBatch
    from mmalign.synth.prompts import COLORS, sample_prompts
    from mmalign.synth.render import render

    torch.set_num_threads(args.threads)
    gen = load_generator(args.generator)
    adapter = gen.trainable()
    prompts = [p for p in sample_prompts("video", 40 * args.videos, seed=args.seed, split="train") if " moving " in p]
    prompts = prompts[: args.videos]
    videos = render(prompts, seed=args.seed, frames=int(gen.defaults.get("num_frames", 8))).pixels
    chunks = range(0, len(prompts), 64)
    x0 = torch.cat([adapter.encode_media(VideoBatch(videos[i : i + 64], fps=8.0)) for i in chunks])
    colors = list(COLORS)

    def reverse(p: str) -> str:
        head, direction = p.rsplit(" ", 1)
        return f"{head} {FLIP[direction]}"

    def recolor(p: str) -> str:
        words = p.split()
        words[1] = colors[(colors.index(words[1]) + 1) % len(colors)]
        return " ".join(words)

    variants = {"true": prompts, "direction_reversed": [reverse(p) for p in prompts],
                "color_swapped": [recolor(p) for p in prompts]}
    rows = []
    with torch.no_grad():
        conds = {k: adapter.encode_prompts(v) for k, v in variants.items()}
        for step in [int(s) for s in args.timesteps.split(",")]:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed + step))
            t = torch.full((len(x0),), step)
            xt, target = adapter.noise(x0, noise, t), adapter.target(x0, noise, t)
            row = {"t": step}
            for name, cond in conds.items():
                pred = torch.cat([adapter.predict(xt[i : i + 64], t[i : i + 64], {k: v[i : i + 64] for k, v in cond.items()})
                                  for i in chunks])
                row[name] = float(F.mse_loss(pred, target))
            for name in ("direction_reversed", "color_swapped"):
                row[f"{name}_excess"] = round(row[name] / row["true"] - 1, 5)
            rows.append(row)
            print(json.dumps(row), flush=True)
        directions = [p.rsplit(" ", 1)[1] for p in prompts]
        total = (x0 - x0.mean(0)).pow(2).mean()
        within = sum((x0[[i for i, d in enumerate(directions) if d == k]]
                      - x0[[i for i, d in enumerate(directions) if d == k]].mean(0)).pow(2).sum()
                     for k in set(directions)) / x0.numel()
    report = {"generator": args.generator, "family": gen.family, "objective": adapter.prediction_type,
              "videos": len(x0), "seed": args.seed, "losses": rows,
              "x0_variance_explained_by_direction": round(float(1 - within / total), 4)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"direction explains {report['x0_variance_explained_by_direction']:.1%} of the latent variance; "
          f"report in {args.out}")


if __name__ == "__main__":
    main()
