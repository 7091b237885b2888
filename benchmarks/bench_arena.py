"""Arena convergence: votes needed to recover a known order, K-wise Bayesian vs pairwise Elo vs Bradley–Terry.

    python benchmarks/bench_arena.py                    # 50 models, K = 4, 10 seeds: ~5 min on one CPU core
    python benchmarks/bench_arena.py --seeds 3          # quicker

K-Sort Arena (Li et al., CVPR 2025, Table 1) reports that K-wise ranking with Bayesian updates and UCB
matchmaking converges 16.3× faster than pairwise Elo (716 vs 11,692 comparisons, 50 models, convergence =
rank positions exactly right). This script runs the same comparison with the synthetic world's
annotators (:mod:`mmalign.arena.simulate`) and reports what it measures, whichever way it falls: votes to
reach Spearman ≥ 0.95 with the true order and stay there (the issue's criterion), the same at 0.99, as
votes and as pairwise comparisons (a K = 4 full ranking implies 6), with 95% bootstrap CIs over seeds and
the Elo / K-wise and BT / K-wise ratios. Writes ``OUT/simulation.json``, ``curves.json``,
``convergence.png`` and ``report.json`` (default ``benchmarks/results/arena``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=3000, help="K-wise votes per run")
    ap.add_argument("--pair-budget", type=int, default=10000, help="pairwise votes per Elo / BT run")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/arena"))
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from mmalign.arena.cli import synth_voters
    from mmalign.arena.simulate import METHODS, SimConfig, ratio_ci, simulate, summary, votes_to
    from mmalign.fileio import atomic_write_json

    cfg = SimConfig(voters=synth_voters(), models=args.models, k=args.k, seeds=args.seeds, budget=args.budget, pair_budget=args.pair_budget,
                    eval_every=args.eval_every, threshold=0.95, seed=args.seed)
    t0 = time.time()
    result = simulate(cfg, args.out)
    wall = time.time() - t0
    curves = json.loads((args.out / "curves.json").read_text())
    per_vote = {m: result["methods"][m]["pairwise_comparisons_per_vote"] for m in METHODS}
    report: dict = {"config": result["config"], "wall_s": round(wall, 1), "thresholds": {}}
    console = Console()
    for thr in (0.95, 0.99):
        rows = {}
        for m in METHODS:
            conv = [votes_to(c, thr, stay=True) for c in curves[m]]
            comps = [None if v is None else v * per_vote[m] for v in conv]
            rows[m] = {"votes": summary(conv, args.seed), "comparisons": summary(comps, args.seed)}
        ratios = {f"{b}/kwise-bayes {unit}": ratio_ci(rows[b][unit]["per_seed"], rows["kwise-bayes"][unit]["per_seed"], args.seed)
                  for b in ("elo", "bt") for unit in ("votes", "comparisons")}
        report["thresholds"][str(thr)] = {"methods": rows, "ratios": ratios}
        table = Table(title=f"Spearman ≥ {thr} and staying there: {cfg.models} models, K = {cfg.k}, {cfg.seeds} seeds")
        for col in ("method", "votes", "95% CI", "comparisons", "not converged"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for m, r in rows.items():
            v, c = r["votes"], r["comparisons"]
            table.add_row(m, "—" if v["mean"] is None else f"{v['mean']:.0f}",
                          "—" if v["mean"] is None else f"{v['ci_low']:.0f}–{v['ci_high']:.0f}",
                          "—" if c["mean"] is None else f"{c['mean']:.0f}", str(v["not_converged"]))
        console.print(table)
        for name, r in ratios.items():
            if r:
                console.print(f"  {name}: {r['ratio']:.2f}× (95% CI {r['ci_low']:.2f}–{r['ci_high']:.2f}, {r['seeds']} seeds)")
    console.print("K-Sort Arena reports 16.3× (Elo comparisons / K-Sort comparisons, exact rank positions)")
    console.print(f"wall time {wall:.0f} s; wrote {args.out}")
    atomic_write_json(args.out / "report.json", report)


if __name__ == "__main__":
    main()
