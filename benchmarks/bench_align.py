"""Does alignment work every time? ``mmalign demo`` at seeds 0–4 for each modality, each run with its CIs,
and the effect pooled over seeds (two-level bootstrap: seeds, then held-out prompts within each run).

    python benchmarks/bench_align.py                      # image, video, audio × seeds 0-4
    python benchmarks/bench_align.py --modalities image --seeds 0,1
    python benchmarks/bench_align.py --modalities audio   # rerun audio; image and video kept from results.json

Writes ``results.json``, ``table.md`` and ``align.png`` to ``--out`` (default benchmarks/results/align).
A finished run (its ``report.json`` with the same settings) is reused, so a killed benchmark continues;
``run_minutes`` in results.json sums the runs' own wall times (what the benchmark costs from scratch). A call
for some modalities keeps the others of an existing results.json made with the same seeds and settings.
The acceptance lines printed at the end are those of the issue that asked for this measure: image win-rate
CI above 50% at ≥ 4 of 5 seeds, pooled faithfulness Δ > 0 and no oracle skill significantly lower;
video and audio pooled win-rate CI above 50% and faithfulness or quality Δ > 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from mmalign.fileio import atomic_write_json, atomic_write_text
from mmalign.stats import pooled_bootstrap_ci

ROOT = Path(__file__).resolve().parent


def run(modality: str, seed: int, work: Path, overrides: list[str]) -> dict[str, Any]:
    """One demo run (reused if ``report.json`` exists for the same settings)."""
    from mmalign.demo import demo_config, run_demo

    out = work / f"{modality}-{seed}"
    cfg = demo_config(modality, overrides, seed=seed).model_dump(mode="json")
    done = out / "report.json"
    if done.is_file():
        report = json.loads(done.read_text())
        if report.get("config") == cfg and "items" in report:
            return report
    t = time.perf_counter()
    report = run_demo(modality=modality, seed=seed, out=out, overrides=overrides, quiet=True)
    print(f"{modality} seed {seed}: win {100 * report['win_rate'][0]:.1f}% "
          f"[{100 * report['win_rate'][1]:.1f}, {100 * report['win_rate'][2]:.1f}] in {time.perf_counter() - t:.0f} s", flush=True)
    return report


def summarise(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-seed rows and the pooled effect of one modality."""
    seeds = sorted(reports)
    rows = [{"seed": s, "win_rate": reports[s]["win_rate"], "faithfulness": reports[s]["oracle"]["faithfulness"]["delta"],
             "quality": reports[s]["oracle"]["quality"]["delta"], "reward": reports[s]["reward"]["delta"],
             "trained": reports[s].get("trained", True), "flags": len(reports[s]["train"].get("flags", [])),
             "minutes": reports[s]["timings"]["total_s"] / 60} for s in seeds]
    pooled = {k: pooled_bootstrap_ci([reports[s]["items"][k] for s in seeds], seed=0)
              for k in ("win", "faithfulness", "quality", "reward")}
    skills = sorted({k for s in seeds for k in reports[s]["items"]["skills"]})
    pooled["skills"] = {k: pooled_bootstrap_ci([reports[s]["items"]["skills"].get(k, []) for s in seeds], seed=0)
                        for k in skills}
    return {"recipe": reports[seeds[0]]["config"]["recipe"], "runs": rows, "pooled": pooled}


def checks(modality: str, summary: dict[str, Any]) -> list[tuple[str, bool]]:
    """The acceptance checks for one modality."""
    p, rows = summary["pooled"], summary["runs"]
    above = sum(r["win_rate"][1] > 0.5 for r in rows)
    if modality == "image":
        return [(f"win-rate CI above 50% at {above}/{len(rows)} seeds (need ≥ 4 of 5)", above >= 4 and len(rows) >= 5),
                (f"pooled faithfulness Δ {p['faithfulness'][0]:+.4f} [{p['faithfulness'][1]:+.4f}, {p['faithfulness'][2]:+.4f}] > 0",
                 p["faithfulness"][1] > 0),
                ("no oracle skill significantly lower: " + ", ".join(f"{k} {v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"
                                                                    for k, v in p["skills"].items()),
                 all(v[2] >= 0 for v in p["skills"].values()))]
    faith_or_quality = p["faithfulness"][1] > 0 or p["quality"][1] > 0
    return [(f"pooled win-rate {100 * p['win'][0]:.1f}% [{100 * p['win'][1]:.1f}, {100 * p['win'][2]:.1f}] above 50%", p["win"][1] > 0.5),
            (f"pooled faithfulness Δ {p['faithfulness'][0]:+.4f} [{p['faithfulness'][1]:+.4f}, {p['faithfulness'][2]:+.4f}] or "
             f"quality Δ {p['quality'][0]:+.4f} [{p['quality'][1]:+.4f}, {p['quality'][2]:+.4f}] > 0", faith_or_quality)]


def table(results: dict[str, Any]) -> str:
    """The README table: one row per modality and seed, then the pooled row."""
    pct = lambda v: f"{100 * v[0]:.1f}% [{100 * v[1]:.1f}, {100 * v[2]:.1f}]"  # noqa: E731
    num = lambda v: f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"  # noqa: E731
    lines = ["| demo | seed | win-rate vs base (95% CI) | oracle faithfulness Δ | oracle quality Δ | wall time |",
             "|---|---|---|---|---|---|"]
    for modality, summary in results["modalities"].items():
        for r in summary["runs"]:
            note = "" if r["trained"] else " (kept step 0: not trained)"
            lines.append(f"| {modality} | {r['seed']} | {pct(r['win_rate'])}{note} | {num(r['faithfulness'])} | "
                         f"{num(r['quality'])} | {r['minutes']:.1f} min |")
        p = summary["pooled"]
        lines.append(f"| **{modality}** | **pooled** | **{pct(p['win'])}** | **{num(p['faithfulness'])}** | "
                     f"**{num(p['quality'])}** | |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Win-rate vs base per seed (95% CI bars) and pooled, one panel per modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = list(results["modalities"])
    fig, axes = plt.subplots(1, len(mods), figsize=(4 * len(mods), 3.4), squeeze=False, sharey=True)
    for ax, modality in zip(axes[0], mods):
        summary = results["modalities"][modality]
        labels = [str(r["seed"]) for r in summary["runs"]] + ["pooled"]
        vals = [r["win_rate"] for r in summary["runs"]] + [summary["pooled"]["win"]]
        for i, (est, lo, hi) in enumerate(vals):
            color = "tab:green" if lo > 0.5 else ("tab:red" if hi < 0.5 else "tab:gray")
            ax.errorbar(i, 100 * est, yerr=[[100 * (est - lo)], [100 * (hi - est)]], fmt="o", color=color, capsize=4,
                        markersize=8 if labels[i] == "pooled" else 5)
        ax.axhline(50, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(modality)
        ax.set_xlabel("seed")
    axes[0][0].set_ylabel("win-rate vs base (%)")
    fig.suptitle("mmalign demo: aligned vs base on held-out prompts (95% CIs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def previous_modalities(path: Path, seeds: list[int], overrides: list[str]) -> dict[str, Any]:
    """The modalities of an earlier ``results.json`` made with the same seeds and settings (else none)."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    return old["modalities"] if old.get("seeds") == seeds and old.get("overrides") == overrides else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modalities", default="image,video,audio", help="comma-separated: image, video, audio")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated demo seeds")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "align", help="where results.json, table.md, align.png go")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-align"), help="the demo runs' folders (reused on rerun)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="a demo setting for every run, e.g. k=8")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    results: dict[str, Any] = {"seeds": seeds, "overrides": args.overrides, "modalities": {}}
    for modality in args.modalities.split(","):
        reports = {s: run(modality, s, args.work, args.overrides) for s in seeds}
        results["modalities"][modality] = summarise(reports)
        results["modalities"][modality]["checks"] = [{"check": c, "holds": ok} for c, ok in checks(modality, results["modalities"][modality])]
    kept = previous_modalities(args.out / "results.json", seeds, args.overrides)
    results["modalities"] = {m: results["modalities"].get(m) or kept[m] for m in ("image", "video", "audio")
                             if m in results["modalities"] or m in kept}
    results["wall_minutes"] = (time.perf_counter() - t0) / 60  # this call: reused runs cost nothing
    results["run_minutes"] = sum(r["minutes"] for m in results["modalities"].values() for r in m["runs"])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "table.md", table(results))
    plot(results, args.out / "align.png")
    print(table(results))
    for modality, summary in results["modalities"].items():
        for c in summary["checks"]:
            print(f"{modality}: {'PASS' if c['holds'] else 'FAIL'} {c['check']}")
    print(f"bench_align: {results['wall_minutes']:.1f} min (this call); its demo runs took {results['run_minutes']:.1f} min "
          f"in all; wrote {args.out}")


if __name__ == "__main__":
    main()
