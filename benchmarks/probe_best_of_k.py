"""How much does a scorer's pick among a generator's own samples improve them? The ceiling of preference pairs.

    python benchmarks/probe_best_of_k.py                    # synth-sdxl, synth-hps, 128 held-out prompts × 4 (~1 min)

For each held-out prompt, ``k`` samples of the generator (seeded) are ranked by the scorer; the oracle's
faithfulness (and each skill) of the scorer's best and worst pick is compared with the average sample and with the
oracle's own best. Pairs built from the scorer (best vs worst) can only teach what separates its picks, so a
best pick barely better than the average caps what Diffusion-DPO on those pairs can learn (README, "What holds").
Writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmalign.fileio import atomic_write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default="synth-sdxl")
    ap.add_argument("--scorer", default="synth-hps")
    ap.add_argument("--prompts", type=int, default=128, help="held-out prompts")
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--seed", type=int, default=777, help="sampling seed (the prompts are drawn with seed 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "best_of_k.json")
    args = ap.parse_args()

    from mmalign.generators import load_generator
    from mmalign.scoring import load_scorer
    from mmalign.synth.oracle import evaluate
    from mmalign.synth.prompts import sample_prompts

    prompts = sample_prompts("image", args.prompts, seed=2, split="heldout")
    k, idx = args.k, np.arange(args.prompts)
    media = load_generator(args.generator).sample(prompts, n=k, seed=args.seed, batch_size=64, progress=False)
    flat = [p for p in prompts for _ in range(k)]
    reward = load_scorer(args.scorer).score(media, flat).float().numpy().reshape(-1, k)
    oracle = evaluate(media, flat)
    faith = oracle.faithfulness.numpy().reshape(-1, k)
    best, worst = reward.argmax(1), reward.argmin(1)
    result = {"generator": args.generator, "scorer": args.scorer, "prompts": args.prompts, "k": k, "seed": args.seed,
              "faithfulness": {"mean": float(faith.mean()), "scorer_best": float(faith[idx, best].mean()),
                               "scorer_worst": float(faith[idx, worst].mean()), "oracle_best": float(faith.max(1).mean())},
              "skills": {}}
    skills = defaultdict(list)
    for j in range(args.prompts):
        for s in oracle.skills[j * k]:
            v = [float(oracle.skills[j * k + a][s]) for a in range(k)]
            skills[s].append((np.mean(v), v[best[j]], v[worst[j]], max(v)))
    for s, rows in sorted(skills.items()):
        m = np.array(rows).mean(0)
        result["skills"][s] = {"n": len(rows), "mean": m[0], "scorer_best": m[1], "scorer_worst": m[2], "oracle_best": m[3]}
    atomic_write_json(args.out, result)
    f = result["faithfulness"]
    print(f"faithfulness: mean {f['mean']:.3f}, {args.scorer}'s best {f['scorer_best']:.3f} (worst {f['scorer_worst']:.3f}), "
          f"oracle's best {f['oracle_best']:.3f}")
    for s, v in result["skills"].items():
        print(f"  {s} (n={v['n']}): mean {v['mean']:.3f}, scorer's best {v['scorer_best']:.3f}, "
              f"worst {v['scorer_worst']:.3f}, oracle's best {v['oracle_best']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
