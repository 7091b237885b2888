"""RankDPO (listwise) vs Diffusion-DPO (best vs worst) on the synthetic world, at equal data and steps.

    python benchmarks/bench_rankdpo.py                      # ~6 min on one CPU core
    python benchmarks/bench_rankdpo.py --train-prompts 96 --eval-prompts 128 --steps 100   # quicker

Both methods see the **same sampled images**: ``k`` samples of ``synth-sdxl`` per train prompt,
scored by ``synth-hps`` (``mmalign.data.build_preferences``). Diffusion-DPO trains on each prompt's
best-vs-worst pair (``recipes/synth-diffusion-dpo.yaml``), RankDPO on the whole k-list with DCG
weights (``recipes/synth-rankdpo.yaml``, Karthik et al. 2024, Eq. 6), both for the same number of
steps (early stopping off, so each method's final weights are compared; the validation curve is
still logged). Each aligned model is then compared with
the base model on held-out prompts with the same seeds (reward, oracle skills, simulated-annotator
win-rate, 95% bootstrap CIs), and the two aligned models with each other. RankDPO's paper reports
it beats pairwise DPO; this script reports whatever we measure. Writes ``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-prompts", type=int, default=192)
    ap.add_argument("--k", type=int, default=4, help="samples per train prompt (shared by both methods)")
    ap.add_argument("--steps", type=int, default=200, help="max optimizer steps of each method")
    ap.add_argument("--val-prompts", type=int, default=32)
    ap.add_argument("--eval-prompts", type=int, default=256)
    ap.add_argument("--annotators", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-rankdpo"))
    args = ap.parse_args()

    from rich.console import Console

    from mmalign.demo import _table, compare_models, validation_prompts
    from mmalign.fileio import atomic_write_json
    from mmalign.align.trainer import lora_disabled, train
    from mmalign.data.build import build_preferences
    from mmalign.generators import load_generator
    from mmalign.scoring import load_scorer
    from mmalign.stats import bootstrap_ci
    from mmalign.synth.annotators import panel_votes
    from mmalign.synth.prompts import sample_prompts

    console = Console()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    scorer = load_scorer("synth-hps")
    train_prompts = sample_prompts("image", args.train_prompts, seed=args.seed, split="train")
    val_prompts = validation_prompts("image", args.val_prompts, args.seed + 1, train_prompts)
    eval_prompts = sample_prompts("image", args.eval_prompts, seed=args.seed + 2, split="heldout")
    (out / "val_prompts.txt").write_text("\n".join(val_prompts) + "\n")
    t0 = time.perf_counter()
    data = build_preferences(load_generator("synth-sdxl"), [scorer], train_prompts, out / "data", k=args.k,
                             seed=args.seed, batch_size=32)
    report: dict = {"config": vars(args) | {"out": str(out)}, "pairs": data.n_pairs, "data_s": time.perf_counter() - t0}

    samples = {}
    for method, recipe, path in (("diffusion-dpo", "synth-diffusion-dpo", data.pairs),
                                 ("rankdpo", "synth-rankdpo", data.rankings)):
        t0 = time.perf_counter()
        gen = load_generator("synth-sdxl")  # a fresh model: no LoRA from the other method
        result = train(recipe, overrides=[
            f"data.path={path}", f"output_dir={out / method}", f"data.cache_dir={out / 'cache' / method}",
            f"max_steps={args.steps}", f"eval.prompts={out / 'val_prompts.txt'}", f"eval.n_prompts={args.val_prompts}",
            f"seed={args.seed}", "eval.early_stopping=null",  # equal steps: compare the final weights
        ], generator=gen)
        if "base" not in samples:
            with lora_disabled(gen.trainable().denoiser):
                samples["base"] = gen.sample(eval_prompts, n=1, seed=args.seed + 777, batch_size=32)
        samples[method] = gen.sample(eval_prompts, n=1, seed=args.seed + 777, batch_size=32)
        report[method] = compare_models(samples["base"], samples[method], eval_prompts, scorer, args.annotators, args.seed)
        report[method]["train"] = {"steps": result.steps, "stopped": result.stopped, "best_step": result.best_step,
                                   "seconds": time.perf_counter() - t0}
        console.print(_table(report[method], f"{method} vs base on {len(eval_prompts)} held-out prompts"))

    votes = panel_votes(samples["rankdpo"], samples["diffusion-dpo"], eval_prompts, args.annotators, args.seed)
    report["rankdpo_vs_dpo_win_rate"] = bootstrap_ci(votes.mean(0), seed=args.seed)
    atomic_write_json(out / "report.json", report)
    for method in ("diffusion-dpo", "rankdpo"):
        w, f = report[method]["win_rate"], report[method]["oracle"]["faithfulness"]["delta"]
        console.print(f"{method:14s} win-rate vs base {100 * w[0]:.1f}% [{100 * w[1]:.1f}, {100 * w[2]:.1f}]; "
                      f"faithfulness Δ {f[0]:+.3f} [{f[1]:+.3f}, {f[2]:+.3f}]; steps {report[method]['train']['steps']}")
    w = report["rankdpo_vs_dpo_win_rate"]
    console.print(f"rankdpo vs diffusion-dpo (annotators): {100 * w[0]:.1f}% [{100 * w[1]:.1f}, {100 * w[2]:.1f}]; "
                  f"report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
