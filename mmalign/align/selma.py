"""SELMA skill experts, end to end: auto-generated skill data, one LoRA per skill, a joint LoRA, every merge.

SELMA (Li et al. 2024, "SELMA: Learning and Merging Skill-Specific Text-to-Image Experts with
Auto-Generated Data", jialuli-luka/SELMA @ dc691fa) fine-tunes one LoRA expert per skill with plain
SFT (the diffusers text-to-image LoRA script: MSE on the model's own samples, ``fine-tune/*.sh``) and
combines them at inference with diffusers' multi-adapter mechanism, ``set_adapters(names, weights=1/K)``
(``inference/img_gen_merge.py`` L37–45; the released script's weight ``1/len(args.model_id)`` is the
length of a string, a bug: we use 1/K). :func:`run_selma` does, from one :class:`SelmaRecipe`:

1. **data** — for each skill, ``samples.prompts`` of its prompt set, ``samples.k`` samples each from the
   base generator; a judge scorer keeps the samples that show the prompt (its score ≥ ``filter.threshold``)
   or, with ``filter.by: skill``, the skill (its per-item check, :meth:`~mmalign.scoring.base.Scorer.item_details`);
   written as a sample manifest (``{"prompt", "media"}``, :mod:`mmalign.data.pairs`);
2. **experts** — one SFT LoRA per skill (:func:`mmalign.align.trainer.train`, ``method: sft``);
3. **joint** — one LoRA on the union of the skills' data with the same total steps;
4. **merges** — every method of :func:`mmalign.align.merge.merge` over the experts (default weights 1/K);
5. **evaluation** — base, each expert, joint, each merge and multi-adapter inference (the experts attached
   together with ``set_adapters``, no merge) sample the same held-out prompts with the same seeds; per
   skill the judge's pass rate on that skill's held-out prompts, the judge's mean score over all of them
   (faithfulness) and a reward scorer's mean, each with a 95% bootstrap CI over items, and paired
   differences to base and to joint.

Every stage writes its result atomically under ``output_dir`` and is skipped when a rerun finds it there
(a killed run continues where it stopped; training runs resume from their checkpoints). The report
(:mod:`mmalign.align.selma_report`) is ``results.json``, ``table.md`` and a grouped bar chart ``selma.png``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, model_validator
from rich.console import Console

from mmalign.align.config import Recipe, check_recipe_kind, load_recipe
from mmalign.align.merge import METHODS
from mmalign.cards import Card, apply_overrides, load_card, validate
from mmalign.errors import ConfigError, InputError
from mmalign.fileio import atomic_write_json, atomic_write_jsonl

log = logging.getLogger(__name__)


class SkillConfig(Card):
    prompts: str = Field(description="Training prompts of the skill: a prompt file or a shipped prompt set (e.g. 'synth-image-count-train')")
    heldout: str = Field(description="Held-out prompts the skill is evaluated on (file or shipped set)")
    check: str | None = Field(None, description="The judge's per-item check that measures the skill (item_details key); None = the skill's name")


class SamplesConfig(Card):
    prompts: int = Field(64, gt=0, description="Prompts drawn (with replacement, seeded) from each skill's prompt set")
    k: int = Field(4, gt=0, description="Samples of the base generator per prompt")
    seed: int = Field(0, description="Seed of the prompt draw and of sampling")
    batch_size: int = Field(32, gt=0, description="Sampling batch size")
    steps: int | None = Field(None, gt=0, description="Sampling steps (None = generator default)")
    guidance: float | None = Field(None, ge=0, description="Guidance scale (None = generator default)")


class FilterConfig(Card):
    judge: str = Field(description="Scorer id that decides which samples are kept (synthetic world: synth-oracle; real models: a scorer or the VLM judge)")
    by: Literal["prompt", "skill"] = Field("prompt", description="Keep a sample when the judge's score shows the prompt, or when its per-item check of the skill passes")
    threshold: float = Field(1.0, description="Keep when the judged value ≥ threshold (oracle: 1.0 = every check passes)")
    keep_per_prompt: int | None = Field(None, gt=0, description="Keep at most the N best kept samples of each prompt (by the judge's score)")


class MergeConfig(Card):
    methods: list[Literal["linear", "svd", "ties", "dare_linear", "dare_ties"]] = Field(
        default_factory=lambda: list(METHODS), description="Merge methods to build and evaluate (mmalign merge)")
    weights: list[float] | None = Field(None, description="One weight per skill, in skill order; None = 1/K each (SELMA's average)")
    density: float = Field(0.5, gt=0, le=1, description="TIES / DARE density")
    rank: int | None = Field(None, gt=0, description="Rank of svd / ties / dare merges; None = the experts' summed rank")
    seed: int = Field(0, description="Seed of DARE's drop masks")
    multi_adapter: bool = Field(True, description="Also evaluate the experts attached together without merging (set_adapters)")


class SelmaEval(Card):
    n_per_skill: int = Field(64, gt=0, description="Held-out items per skill (prompts drawn with replacement, seeded)")
    seed: int = Field(1234, description="Seed of the prompt draw and of sampling (the same for every row)")
    scorer: str | None = Field(None, description="Reward scorer reported next to the judge (e.g. synth-hps, hpsv2)")
    batch_size: int = Field(32, gt=0, description="Sampling batch size")
    steps: int | None = Field(None, gt=0, description="Sampling steps (None = generator default)")
    guidance: float | None = Field(None, ge=0, description="Guidance scale (None = generator default)")


class SelmaRecipe(Card):
    """One SELMA run; ``mmalign selma RECIPE --set key=value`` changes any key."""

    name: str | None = Field(None, description="Run name (informational)")
    generator: str = Field(description="Generator id, preset or folder (load_generator)")
    generator_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for load_generator")
    skills: dict[str, SkillConfig] = Field(description="Skill name -> its prompt sets and check")
    samples: SamplesConfig = Field(default_factory=SamplesConfig, description="Skill data from the base generator")
    filter: FilterConfig = Field(description="Which samples are kept")
    train: dict[str, Any] = Field(default_factory=dict, description="Training-recipe keys for every expert (method sft; e.g. lr, lora, batch_size, max_steps)")
    joint_steps: int | None = Field(None, gt=0, description="Steps of the joint LoRA; None = the experts' total (K × max_steps)")
    merge: MergeConfig = Field(default_factory=MergeConfig, description="How the experts are merged")
    eval: SelmaEval = Field(default_factory=SelmaEval, description="Held-out evaluation of every row")
    output_dir: str = Field("runs/selma", description="Where data, LoRAs, evaluations and the report go")
    progress: bool = Field(True, description="Show progress bars")

    @model_validator(mode="before")
    @classmethod
    def _kind(cls, data: Any) -> Any:
        return check_recipe_kind(data, "selma")

    @model_validator(mode="after")
    def _check(self) -> "SelmaRecipe":
        if not self.skills:
            raise ConfigError("skills: give at least one skill")
        fixed = {"generator", "generator_kwargs", "method", "output_dir", "progress"} & set(self.train)
        fixed |= {f"data.{k}" for k in ("path", "format") if k in (self.train.get("data") or {})}
        if fixed:
            raise ConfigError(f"train.{sorted(fixed)[0]} is set by the SELMA run itself; remove it from train")
        if self.merge.weights is not None and len(self.merge.weights) != len(self.skills):
            raise ConfigError(f"merge.weights has {len(self.merge.weights)} values for {len(self.skills)} skills; give one per skill")
        if len(self.skills) < 2 and (self.merge.methods or self.merge.multi_adapter):
            raise ConfigError("merging needs at least two skills; add skills or set merge.methods=[] and merge.multi_adapter=false")
        self.expert_recipe("<data>", "<out>")  # train keys fail here, before any work
        return self

    def expert_recipe(self, data: str | Path, out: str | Path, steps: int | None = None) -> Recipe:
        """The SFT recipe of one training run on ``data`` (a sample manifest), written to ``out``."""
        raw = {"name": f"{self.name or 'selma'}", "generator": self.generator, "generator_kwargs": self.generator_kwargs,
               **self.train, "method": "sft", "data": {**(self.train.get("data") or {}), "path": str(data)},
               "output_dir": str(out), "progress": self.progress}
        if steps is not None:
            raw["max_steps"] = steps
        try:
            return load_recipe(raw)
        except ConfigError as e:
            raise ConfigError(f"train: {e}") from e

    def check_of(self, skill: str) -> str:
        return self.skills[skill].check or skill


def load_selma_recipe(recipe: str | Path | dict[str, Any] | SelmaRecipe, overrides: Sequence[str] = ()) -> SelmaRecipe:
    """Validate a SELMA recipe (file, shipped name, mapping or :class:`SelmaRecipe`) with ``--set`` overrides."""
    if isinstance(recipe, (SelmaRecipe, dict)):
        raw = recipe.model_dump(mode="json") if isinstance(recipe, SelmaRecipe) else recipe
        return validate(apply_overrides(raw, overrides, SelmaRecipe, where="recipe"), SelmaRecipe, where="recipe")
    return load_card(recipe, SelmaRecipe, kind="recipes", overrides=overrides)


# ------------------------------------------------------------------------------------------- judging


def skill_values(scores: Sequence[float], details: Sequence[dict[str, float]], check: str) -> list[float | None]:
    """Per item, the judged value of a skill: its ``check`` in the judge's item details; the judge's score
    when the judge reports no details at all (a plain scorer); None where the item's prompt does not test it."""
    if not any(details):
        return [float(s) for s in scores]
    return [d.get(check) for d in details]


def kept_indices(prompt_of: Sequence[int], scores: Sequence[float], values: Sequence[float | None], threshold: float,
                 keep_per_prompt: int | None) -> list[int]:
    """Indices of the kept samples: value ≥ threshold, then at most ``keep_per_prompt`` per prompt by score."""
    passing = [i for i, v in enumerate(values) if v is not None and v >= threshold]
    if keep_per_prompt is None:
        return passing
    by_prompt: dict[int, list[int]] = {}
    for i in passing:
        by_prompt.setdefault(prompt_of[i], []).append(i)
    kept = [i for group in by_prompt.values() for i in sorted(group, key=lambda j: -scores[j])[:keep_per_prompt]]
    return sorted(kept)


def judge_media(judge: Any, media: Any, prompts: list[str]) -> tuple[list[float], list[dict[str, float]]]:
    """The judge's score and item details of every item."""
    return judge.score(media, prompts).float().cpu().tolist(), judge.item_details(media, prompts)


# --------------------------------------------------------------------------------------------- stages


def _sample_kwargs(cfg: SamplesConfig | SelmaEval) -> dict[str, Any]:
    return {k: v for k, v in (("steps", cfg.steps), ("guidance", cfg.guidance)) if v is not None}


def build_skill_data(r: SelmaRecipe, skill: str, generator: Any, judge: Any, folder: Path) -> dict[str, Any]:
    """Sample, judge and keep one skill's data; writes ``folder/samples.jsonl``, ``media/`` and ``meta.json``."""
    from mmalign.data.prompts import read_prompts
    from mmalign.media import save_media

    s = r.samples
    prompts = read_prompts(r.skills[skill].prompts, s.prompts, seed=s.seed)
    media = generator.sample(prompts, n=s.k, seed=s.seed, batch_size=s.batch_size, progress=r.progress, **_sample_kwargs(s))
    flat = [p for p in prompts for _ in range(s.k)]
    scores, details = judge_media(judge, media, flat)
    values = scores if r.filter.by == "prompt" else skill_values(scores, details, r.check_of(skill))
    kept = kept_indices([i // s.k for i in range(len(flat))], scores, values, r.filter.threshold, r.filter.keep_per_prompt)
    if not kept:
        raise InputError(f"skill {skill!r}: the judge {r.filter.judge!r} kept none of {len(flat)} samples "
                         f"(filter.threshold={r.filter.threshold}); lower the threshold or draw more samples")
    names = [f"{i:05d}" for i in kept]
    paths = save_media(media[kept], folder / "media", names=names)
    atomic_write_jsonl(folder / "samples.jsonl", [{"prompt": flat[i], "media": str(p.relative_to(folder)), "judge": scores[i]}
                                                  for i, p in zip(kept, paths)])
    meta = {"skill": skill, "prompts": len(prompts), "samples": len(flat), "kept": len(kept),
            "keep_rate": len(kept) / len(flat), "judge": r.filter.judge, "by": r.filter.by,
            "judged_value_mean": sum(v for v in values if v is not None) / max(1, sum(v is not None for v in values))}
    atomic_write_json(folder / "meta.json", meta)
    return meta


def write_joint_data(skill_folders: dict[str, Path], folder: Path) -> Path:
    """The union of the skills' samples as one manifest (media paths relative to ``folder``)."""
    import os

    rows = []
    for skill_folder in skill_folders.values():
        for line in (skill_folder / "samples.jsonl").read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            rec["media"] = os.path.relpath(skill_folder / rec["media"], folder)
            rows.append(rec)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_jsonl(folder / "samples.jsonl", rows)


def train_lora(recipe: Recipe, console: Console) -> Path:
    """Train one SFT LoRA (resuming its checkpoints); returns ``final/`` (reused when the run already finished)."""
    from mmalign.align.trainer import train
    from mmalign.checkpoint import latest_checkpoint

    out = Path(recipe.output_dir)
    if (out / "final").is_dir():
        console.print(f"  {out / 'final'} exists: reused")
        return out / "final"
    resume = latest_checkpoint(out / "checkpoints") is not None
    return train(recipe, resume=resume).final_dir


def _eval_sets(r: SelmaRecipe) -> dict[str, list[str]]:
    """Held-out prompt source -> the prompts drawn from it (skills that share a source share its items)."""
    from mmalign.data.prompts import read_prompts

    sets: dict[str, list[str]] = {}
    for skill in r.skills.values():
        if skill.heldout not in sets:
            sets[skill.heldout] = read_prompts(skill.heldout, r.eval.n_per_skill, seed=r.eval.seed)
    return sets


def evaluate_row(r: SelmaRecipe, lora: Any, sets: dict[str, list[str]], judge: Any, scorer: Any | None) -> dict[str, Any]:
    """Sample every held-out set with ``lora`` attached (None = base) and judge it: per set, per item."""
    from mmalign.generators import load_generator

    gen = load_generator(r.generator, lora=lora, **r.generator_kwargs)
    out: dict[str, Any] = {}
    for source, prompts in sets.items():
        media = gen.sample(prompts, n=1, seed=r.eval.seed, batch_size=r.eval.batch_size, progress=r.progress,
                           **_sample_kwargs(r.eval))
        scores, details = judge_media(judge, media, prompts)
        reward = scorer.score(media, prompts).float().cpu().tolist() if scorer is not None else None
        out[source] = {"prompts": prompts, "judge": scores, "details": details, "reward": reward}
    return out


def _signature(r: SelmaRecipe, lora: Any) -> dict[str, Any]:
    """What an evaluation row depends on (a stored row with another signature is recomputed)."""
    return {"generator": r.generator, "eval": r.eval.model_dump(mode="json"), "judge": r.filter.judge,
            "skills": {k: v.model_dump(mode="json") for k, v in r.skills.items()}, "lora": json.loads(json.dumps(lora, default=str))}


def run_selma(recipe: str | Path | dict[str, Any] | SelmaRecipe, overrides: Sequence[str] = (),
              quiet: bool = False) -> dict[str, Any]:
    """Run SELMA per ``recipe`` (module docstring); returns the report (also ``output_dir/results.json``)."""
    from mmalign.align.merge import merge
    from mmalign.align.selma_report import build_report, print_report, write_report
    from mmalign.generators import load_generator
    from mmalign.generators.lora import read_lora
    from mmalign.scoring import load_scorer
    from mmalign.scoring.base import Scorer

    r = load_selma_recipe(recipe, list(overrides) + (["progress=false"] if quiet else []))
    console = Console(quiet=quiet)
    out = Path(r.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    skills = list(r.skills)
    from mmalign.data.prompts import read_prompts

    for s in r.skills.values():  # a missing or empty prompt file fails before any work
        read_prompts(s.prompts), read_prompts(s.heldout)
    judge = load_scorer(r.filter.judge)
    if r.filter.by == "skill" and type(judge).item_details is Scorer.item_details:
        raise ConfigError(f"filter.by=skill needs a judge that checks skills per item; {r.filter.judge!r} reports "
                          "none (use filter.by=prompt with a threshold on its score)")
    scorer = load_scorer(r.eval.scorer) if r.eval.scorer else None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 1)

    console.rule(f"SELMA on {r.generator}: skills {', '.join(skills)}; judge {r.filter.judge}")
    console.print(f"1/5 skill data: {r.samples.prompts} prompts × k={r.samples.k} per skill, kept by {r.filter.judge} "
                  f"({'the skill check' if r.filter.by == 'skill' else 'its score'} ≥ {r.filter.threshold})")
    folders = {s: out / "data" / s for s in skills}
    base = None
    for s in skills:
        if (folders[s] / "meta.json").is_file():
            meta = json.loads((folders[s] / "meta.json").read_text(encoding="utf-8"))
        else:
            if folders[s].exists():
                shutil.rmtree(folders[s])  # a stage killed midway: redo it
            base = base or load_generator(r.generator, **r.generator_kwargs)
            meta = build_skill_data(r, s, base, judge, folders[s])
        console.print(f"  {s}: kept {meta['kept']} of {meta['samples']} ({100 * meta['keep_rate']:.0f}%)")
    del base
    joint_data = write_joint_data(folders, out / "data" / "joint")
    lap("data_s")

    console.print(f"2/5 one SFT LoRA per skill ({len(skills)} experts)")
    experts = {}
    for s in skills:
        recipe_s = r.expert_recipe(folders[s] / "samples.jsonl", out / "experts" / s)
        experts[s] = train_lora(recipe_s, console)
    steps = r.joint_steps or len(skills) * r.expert_recipe("-", "-").max_steps
    lap("experts_s")

    console.print(f"3/5 joint LoRA on the union of the skills' data, {steps} steps (the experts' total)")
    joint = train_lora(r.expert_recipe(joint_data, out / "joint", steps=steps), console)
    lap("joint_s")

    weights = r.merge.weights or [1.0 / len(skills)] * len(skills)
    rank = r.merge.rank or sum(read_lora(experts[s]).rank for s in skills)
    console.print(f"4/5 merges: {', '.join(r.merge.methods) or 'none'} (weights {[round(w, 3) for w in weights]}, rank {rank})")
    merged = {}
    for method in r.merge.methods:
        folder = out / "merged" / method
        if not (folder / "mmalign_lora.json").is_file():
            merge([(experts[s], w) for s, w in zip(skills, weights)], method=method, density=r.merge.density,
                  rank=None if method == "linear" else rank, seed=r.merge.seed, out=folder, progress=r.progress)
        merged[method] = folder
    lap("merge_s")

    rows: dict[str, Any] = {"base": None, **{f"expert:{s}": str(experts[s]) for s in skills}, "joint": str(joint),
                            **{f"merge:{m}": str(p) for m, p in merged.items()}}
    if r.merge.multi_adapter:
        rows["multi-adapter"] = [[str(experts[s]), w] for s, w in zip(skills, weights)]
    sets = _eval_sets(r)
    console.print(f"5/5 evaluation: {len(rows)} rows × {sum(len(p) for p in sets.values())} held-out items, same seeds")
    evaluations = {}
    for name, lora in rows.items():
        path = out / "eval" / f"{name.replace(':', '-')}.json"
        sig = _signature(r, lora)
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if stored is None or stored.get("signature") != sig:
            lora_arg = [tuple(x) for x in lora] if isinstance(lora, list) else lora
            stored = {"signature": sig, "sets": evaluate_row(r, lora_arg, sets, judge, scorer)}
            atomic_write_json(path, stored)
        evaluations[name] = stored["sets"]
    lap("eval_s")
    timings["total_s"] = round(time.perf_counter() - t0, 1)

    report = build_report(r, evaluations, seed=r.eval.seed)
    report.update(recipe=r.model_dump(mode="json"), timings=timings,
                  data={s: json.loads((folders[s] / "meta.json").read_text(encoding="utf-8")) for s in skills},
                  weights=weights, rank=rank)
    write_report(report, out)
    print_report(report, console)
    console.print(f"report: {out / 'results.json'}, {out / 'table.md'}, {out / 'selma.png'} "
                  f"({timings['total_s'] / 60:.1f} min)")
    return report


__all__ = ["SelmaRecipe", "SkillConfig", "SamplesConfig", "FilterConfig", "MergeConfig", "SelmaEval",
           "load_selma_recipe", "run_selma", "skill_values", "kept_indices", "build_skill_data", "write_joint_data",
           "evaluate_row"]
