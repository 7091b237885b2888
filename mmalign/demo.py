"""``mmalign demo``: the main job on the embedded default, end to end, with a measured effect.

This is where the synthetic world is wired into the generic loop: its prompts, its oracle and its
simulated annotators measure what the generic trainer did.

1. load the shipped synthetic-world generator (``synth-sdxl`` for images) and scorer (``synth-hps``);
2. for a preference method (Diffusion-DPO, RankDPO, ...), build preference data on *train* prompts: k
   samples per prompt, scored, best vs worst (``mmalign pairs``); reward backpropagation (``draft``,
   every modality's default) needs no data: it samples the train prompts while it trains;
3. train with LoRA (images: ``recipes/synth-draft.yaml``; audio: the same with DPOK's KL anchor,
   ``recipes/synth-audio-draft.yaml``; video: through the last 10 of 20 sampling steps on ``synth-video-reward``
   with the same anchor, ``recipes/synth-video-draft.yaml``), logging a validation curve on train-split
   prompts the training does not use;
4. evaluate base (the plain generator) vs aligned (``load_generator(generator, lora=run/final)``, as a
   user would load the trained LoRA) on **held-out** prompts with the same seeds: mean scorer
   reward, oracle per-skill accuracy and win-rate under a panel of simulated annotators, each with a
   95% bootstrap CI over prompts; print a table, write a before/after grid and ``report.json``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field
from rich.console import Console
from rich.table import Table

from mmalign.cards import Card, apply_overrides, validate
from mmalign.fileio import atomic_write_json
from mmalign.stats import bootstrap_ci


class DemoConfig(Card):
    """One demo run; every field can be changed from the CLI with ``mmalign demo --set key=value``."""

    modality: Literal["image", "video", "audio"] = Field("image", description="Which shipped generator to align")
    generator: str = Field("synth-sdxl", description="Generator preset, folder or hub id")
    scorer: str = Field("synth-hps", description="Reward scorer: the one the preference data is built with, or the one method: draft maximises (also the proxy of the training's reward-hacking guard)")
    recipe: str = Field("synth-draft", description="Training recipe (shipped name or file); e.g. synth-diffusion-dpo for Diffusion-DPO on preference pairs")
    recipe_overrides: list[str] = Field(default_factory=list, description="Extra --set overrides of the recipe, e.g. ['max_steps=100']")
    train_prompts: int = Field(192, gt=0, description="Train-split prompts the preference data is built from (method: draft samples them while it trains)")
    k: int = Field(4, ge=2, description="Samples per prompt, ranked by the scorer (preference methods)")
    data: Literal["pairs", "rankings"] = Field("pairs", description="Train on best-vs-worst pairs, or on the full k-wise rankings (the recipe's method and data.ranking_to_pairs decide how)")
    val_prompts: int = Field(32, gt=0, description="Other train-split prompts for the validation curve")
    eval_prompts: int = Field(256, gt=0, description="Held-out prompts of the final comparison")
    annotators: int = Field(20, gt=0, description="Simulated annotators; each judges every pair with its own noise (a bigger panel narrows the CI)")
    batch_size: int = Field(32, gt=0, description="Sampling batch size")
    steps: int | None = Field(None, gt=0, description="Sampling steps for the data, the validation curve and the evaluation (None: the generator's default)")
    seed: int = Field(0, description="Seed of prompts, sampling, training and the bootstrap")


METHOD_NAMES = {"diffusion_dpo": "Diffusion-DPO", "rank_dpo": "RankDPO", "lipo": "LiPO-λ", "sft": "SFT",
                "draft": "DRaFT reward backpropagation"}

PRESETS: dict[str, dict[str, Any]] = {
    "image": {},
    # 192 held-out prompts for a narrower CI: sampling them is cheap next to training through 10 sampling steps
    "video": {"generator": "synth-video", "scorer": "synth-video-reward", "recipe": "synth-video-draft", "train_prompts": 96,
              "val_prompts": 24, "eval_prompts": 192},
    # 8 sampling steps instead of the generator's 24: the audio demo in about 2.5 min instead of 15
    "audio": {"generator": "synth-audio", "scorer": "synth-clap", "recipe": "synth-audio-draft", "train_prompts": 96,
              "val_prompts": 24, "eval_prompts": 96, "steps": 8},
}


def demo_config(modality: str = "image", overrides: Sequence[str] = (), **changes: Any) -> DemoConfig:
    """The modality's preset, then ``changes``, then ``--set`` ``overrides``, validated as one :class:`DemoConfig`."""
    data = {"modality": modality, **PRESETS.get(modality, {}), **changes}
    return validate(apply_overrides(data, overrides, DemoConfig, where="demo"), DemoConfig, where="demo")


def validation_prompts(modality: str, n: int, seed: int, exclude: list[str]) -> list[str]:
    """``n`` train-split prompts (drawn like the others) that the preference data does not use.

    Early stopping on prompts the pairs were built from measures memorisation; these measure how
    the model does on prompts it was not trained on, as the held-out evaluation will. A grammar too
    small for that (the audio one: 96 draws use every train prompt) fills up with ordinary draws.
    """
    from mmalign.synth.prompts import sample_prompts

    seen = set(exclude)
    draws = sample_prompts(modality, 50 * n, seed=seed, split="train")
    return ([p for p in draws if p not in seen] + draws)[:n]


def compare_models(base, aligned, prompts: list[str], scorer, annotators: int, seed: int) -> dict[str, Any]:
    """Paired comparison of two media batches made for the same prompts with the same seeds."""
    from mmalign.synth.annotators import panel_votes
    from mmalign.synth.oracle import evaluate

    report: dict[str, Any] = {"n": len(prompts)}
    rb, ra = scorer.score(base, prompts).float().numpy(), scorer.score(aligned, prompts).float().numpy()
    report["reward"] = {
        "base": bootstrap_ci(rb, seed=seed),
        "aligned": bootstrap_ci(ra, seed=seed),
        "delta": bootstrap_ci(ra - rb, seed=seed),
    }
    ob, oa = evaluate(base, prompts), evaluate(aligned, prompts)
    skills = sorted(ob.per_skill_accuracy())
    report["oracle"], skill_items = {}, {}
    for s in skills:
        rows = [(i, sb[s], sa[s]) for i, (sb, sa) in enumerate(zip(ob.skills, oa.skills)) if s in sb]
        b = np.array([r[1] for r in rows], float)
        a = np.array([r[2] for r in rows], float)
        report["oracle"][s] = {"base": bootstrap_ci(b, seed=seed), "aligned": bootstrap_ci(a, seed=seed),
                               "delta": bootstrap_ci(a - b, seed=seed), "n": len(rows)}
        skill_items[s] = (a - b).tolist()
    fb, fa = ob.faithfulness.numpy(), oa.faithfulness.numpy()
    report["oracle"]["faithfulness"] = {"base": bootstrap_ci(fb, seed=seed), "aligned": bootstrap_ci(fa, seed=seed),
                                        "delta": bootstrap_ci(fa - fb, seed=seed), "n": len(prompts)}
    qb, qa = ob.quality.numpy(), oa.quality.numpy()
    report["oracle"]["quality"] = {"base": bootstrap_ci(qb, seed=seed), "aligned": bootstrap_ci(qa, seed=seed),
                                   "delta": bootstrap_ci(qa - qb, seed=seed), "n": len(prompts)}
    # a panel of simulated annotators judges each pair (aligned vs base); ties count one half
    votes = panel_votes(aligned, base, prompts, annotators, seed)
    report["win_rate"] = bootstrap_ci(votes.mean(0), seed=seed)
    # per-prompt values, for pooling runs (benchmarks/bench_align.py)
    report["items"] = {"win": votes.mean(0).tolist(), "faithfulness": (fa - fb).tolist(), "quality": (qa - qb).tolist(),
                       "reward": (ra - rb).tolist(), "skills": skill_items}
    report["win_rate_votes"] = {"wins": int((votes == 1).sum()), "ties": int((votes == 0.5).sum()),
                                "losses": int((votes == 0).sum())}
    return report


def _table(report: dict[str, Any], title: str) -> Table:
    t = Table(title=title)
    for col in ("metric", "base", "aligned", "Δ (95% CI)"):
        t.add_column(col, justify="right" if col != "metric" else "left")

    def ci(x: tuple[float, float, float], pct: bool) -> str:
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.4f}")
        return f"{f(x[0])} [{f(x[1])}, {f(x[2])}]"

    r = report["reward"]
    t.add_row("reward (scorer)", f"{r['base'][0]:.4f}", f"{r['aligned'][0]:.4f}", ci(r["delta"], False))
    for s, v in report["oracle"].items():
        pct = s not in ("faithfulness", "quality")
        t.add_row(f"oracle {s}", f"{100 * v['base'][0]:.1f}%" if pct else f"{v['base'][0]:.3f}",
                  f"{100 * v['aligned'][0]:.1f}%" if pct else f"{v['aligned'][0]:.3f}", ci(v["delta"], pct))
    w = report["win_rate"]
    t.add_row("[bold]win-rate vs base[/] (annotators)", "50%", f"{100 * w[0]:.1f}%",
              f"[{100 * w[1]:.1f}%, {100 * w[2]:.1f}%]")
    return t


def run_demo(modality: str = "image", seed: int = 0, out: Path | None = None, overrides: Sequence[str] = (),
             quiet: bool = False, **changes: Any) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``out/report.json``) the measured comparison.

    ``overrides`` are ``--set key=value`` changes of :class:`DemoConfig`, applied after ``changes``.
    """
    from mmalign.align.config import load_recipe
    from mmalign.align.trainer import train
    from mmalign.data.build import build_preferences
    from mmalign.generators import load_generator
    from mmalign.media import image_grid, video_contact_sheet
    from mmalign.scoring import load_scorer
    from mmalign.synth.prompts import sample_prompts

    cfg = demo_config(modality, overrides, seed=seed, **changes)
    console = Console(quiet=quiet)
    out = Path(out or f"runs/demo-{cfg.modality}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    method = load_recipe(cfg.recipe, cfg.recipe_overrides).method
    console.rule(f"mmalign demo — {cfg.modality}: {METHOD_NAMES.get(method, method)} (LoRA) on {cfg.generator}, reward {cfg.scorer}")
    gen = load_generator(cfg.generator)
    scorer = load_scorer(cfg.scorer)
    train_prompts = sample_prompts(cfg.modality, cfg.train_prompts, seed=cfg.seed, split="train")
    val_prompts = validation_prompts(cfg.modality, cfg.val_prompts, cfg.seed + 1, train_prompts)
    eval_prompts = sample_prompts(cfg.modality, cfg.eval_prompts, seed=cfg.seed + 2, split="heldout")
    (out / "val_prompts.txt").write_text("\n".join(val_prompts) + "\n")

    steps = {} if cfg.steps is None else {"steps": cfg.steps}
    if method == "draft":  # no preference data: the policy samples the train prompts while it trains
        console.print(f"1/3 no preference data: {method} samples {cfg.train_prompts} train prompts while it trains")
        (out / "train_prompts.txt").write_text("\n".join(train_prompts) + "\n")
        # the demo's sampling steps, where it sets them, are the training samples' too; else the recipe's
        data_overrides = [f"data.path={out / 'train_prompts.txt'}", f"reward.scorer={cfg.scorer}",
                          *([f"reward.steps={cfg.steps}"] if cfg.steps else [])]
        n_pairs = 0
    else:
        console.print(f"1/3 preference data: {cfg.train_prompts} train prompts × k={cfg.k} samples, scored by {cfg.scorer}")
        data = build_preferences(gen, [scorer], train_prompts, out / "data", k=cfg.k, seed=cfg.seed,
                                 batch_size=cfg.batch_size, progress=not quiet, sample_kwargs=steps)
        data_overrides, n_pairs = [f"data.path={data.pairs if cfg.data == 'pairs' else data.rankings}",
                                   f"data.cache_dir={out / 'cache'}"], data.n_pairs
    timings["data_s"] = time.perf_counter() - t0

    console.print(f"2/3 training ({cfg.recipe}), validating on {cfg.val_prompts} other train-split prompts")
    run_dir = out / "train"
    if (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir)
    result = train(cfg.recipe, overrides=[
        *data_overrides, f"output_dir={run_dir}", f"eval.prompts={out / 'val_prompts.txt'}", "eval.n_prompts=null", f"eval.scorer={cfg.scorer}", f"seed={cfg.seed}",
        f"progress={not quiet}", f"eval.steps={cfg.steps or 'null'}", *cfg.recipe_overrides,
    ], generator=gen)
    timings["train_s"] = time.perf_counter() - t0 - timings["data_s"]

    console.print(f"3/3 evaluation on {cfg.eval_prompts} held-out prompts, same seeds for base and aligned")
    eval_seed = cfg.seed + 777
    base = load_generator(cfg.generator).sample(eval_prompts, n=1, seed=eval_seed, batch_size=cfg.batch_size,
                                                progress=not quiet, **steps)
    aligned = load_generator(cfg.generator, lora=result.final_dir).sample(
        eval_prompts, n=1, seed=eval_seed, batch_size=cfg.batch_size, progress=not quiet, **steps)
    report = compare_models(base, aligned, eval_prompts, scorer, cfg.annotators, cfg.seed)
    timings["eval_s"] = time.perf_counter() - t0 - timings["data_s"] - timings["train_s"]
    timings["total_s"] = time.perf_counter() - t0

    show = list(range(min(16, len(eval_prompts))))
    if cfg.modality == "image":
        grid = image_grid(type(base).cat([base[show], aligned[show]]), nrow=len(show))
        grid.save(out / "before_after.png")
    elif cfg.modality == "video":
        video_contact_sheet(type(base).cat([base[show[:6]], aligned[show[:6]]])).save(out / "before_after.png")
    unchanged = result.best_step == 0  # early stopping kept the reference weights: the "aligned" model is the base
    report.update(config=cfg.model_dump(mode="json"), method=method, pairs=n_pairs, train={"steps": result.steps, "stopped": result.stopped,
                  "best_step": result.best_step, "eval_history": result.eval_history, "flags": result.flags},
                  trained=not unchanged, precision=result.precision, timings=timings)
    atomic_write_json(out / "report.json", report)
    console.print(_table(report, f"base vs aligned on {cfg.eval_prompts} held-out prompts (95% bootstrap CIs)"))
    w = report["win_rate"]
    verdict = "aligned beats base" if w[1] > 0.5 else ("no significant difference" if w[2] >= 0.5 else "base beats aligned")
    if unchanged:
        verdict = "not aligned: early stopping kept step 0, so the model is the base model"
    for flag in result.flags:
        console.print(f"[bold yellow]warning:[/] {flag['message']}")
    console.print(f"[bold]{verdict}[/]: win-rate {100 * w[0]:.1f}% [{100 * w[1]:.1f}%, {100 * w[2]:.1f}%] "
                  f"in {timings['total_s'] / 60:.1f} min; report: {out / 'report.json'}")
    return report
