"""The SELMA table on the synthetic world, images and video, in one command (≤ 30 min on 2 CPU cores).

    python benchmarks/bench_selma.py                 # both recipes, results in benchmarks/results/selma/
    python benchmarks/bench_selma.py --only image --set train.max_steps=300

Runs ``mmalign selma`` with ``recipes/synth-selma.yaml`` (color, count, shape, spatial on ``synth-sdxl``) and
``recipes/synth-video-selma.yaml`` (motion, change on ``synth-video``): skill data from the base model kept by
the exact oracle, one SFT LoRA per skill, a joint LoRA with the same total steps, every merge method and
multi-adapter inference, each evaluated on held-out prompts with 95% bootstrap CIs. Copies each run's
``results.json``, ``table.md`` and ``selma.png`` to ``--results`` and prints SELMA's claim as measured
(merged experts vs joint training, mean skill accuracy). A rerun resumes each run where it stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPES = {"image": "synth-selma", "video": "synth-video-selma"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=sorted(RECIPES), help="run one modality")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for every run (key=value)")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-selma"), help="where the runs work")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/selma"), help="where the tables go")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    from mmalign.align.selma import run_selma

    t0 = time.perf_counter()
    for modality, recipe in RECIPES.items():
        if args.only and modality != args.only:
            continue
        out = args.runs / modality
        report = run_selma(recipe, [f"output_dir={out}", f"train.data.cache_dir={args.runs / 'cache'}", *args.overrides],
                           quiet=args.quiet)
        dest = args.results / modality
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "table.md", "selma.png"):
            shutil.copy2(out / name, dest / name)
        print(f"{modality}: merged (or multi-adapter) minus joint, mean skill accuracy (95% CI, points):")
        for row, d in report["claim"]["combined_minus_joint"].items():
            print(f"  {row:18s} {100 * d[0]:+5.1f} [{100 * d[1]:+5.1f}, {100 * d[2]:+5.1f}]")
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min; tables in {args.results}")


if __name__ == "__main__":
    main()
