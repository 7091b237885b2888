"""How many votes each rating method needs to recover known skills: K-wise Bayesian vs pairwise Elo vs Bradley–Terry.

The set-up of K-Sort Arena's Table 1 (Li et al., CVPR 2025, arXiv 2408.14468v2, Sec. 4): ``models`` models
with known true skills, votes by simulated people, and the number of votes after which the estimated
order matches the true one. The people are :class:`Voters`: a model's true skill is a utility, spread
evenly over ``[0, skill_range]`` in a random order, and a vote sorts the K shown models by their noisy
utilities u + N(0, noise²), neighbours closer than ``tie_margin`` tied. ``mmalign arena simulate`` and
``benchmarks/bench_arena.py`` take these three numbers from the synthetic world's annotators
(:func:`mmalign.arena.cli.synth_voters`: ``Annotator.rank`` sorts noisy utilities the same way, and
``tie_margin`` is their pairwise tie rule), so this module stays free of the world.

Methods (each vote is one vote, whatever K):

* ``kwise-bayes`` — K-wise votes (default K = 4), the Bayesian update and UCB matchmaking
  (:mod:`mmalign.arena.ranking`), ordered by μ − 3σ;
* ``elo`` — pairwise votes between two random models, Elo (k-factor 32);
* ``bt`` — the same random pairwise votes, Bradley–Terry maximum likelihood refit at every check.

Every ``eval_every`` votes the Spearman correlation of each method's scores with the true skills is
recorded. *Votes to converge* = the first check from which Spearman stays ≥ ``threshold`` to the end
of the budget (the paper's "stays converged"); *votes to reach* = the first check at ≥ ``threshold``.
Runs that do not converge within the budget are counted and reported, not averaged. Means over seeds
come with percentile-bootstrap 95% CIs (:func:`mmalign.stats.bootstrap_ci`), and so does the ratio of
Elo's mean to K-wise Bayes's (seeds resampled in pairs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from mmalign.arena.ranking import Bayes, BayesOptions, BradleyTerry, Elo, pick_match
from mmalign.errors import ConfigError
from mmalign.fileio import atomic_write, atomic_write_json
from mmalign.stats import bootstrap_ci

METHODS = ("kwise-bayes", "elo", "bt")


@dataclass(frozen=True)
class Voters:
    """Simulated people (see the module docstring)."""

    noise: float
    tie_margin: float
    skill_range: float

    def skills(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n true utilities evenly spread over [0, skill_range], in a random order."""
        return rng.permutation(np.linspace(0.0, self.skill_range, n))

    def rank(self, skills: np.ndarray, rng: np.random.Generator) -> list[int]:
        """Tiers (0 = best) of models of true ``skills``: noisy utilities sorted, neighbours within tie_margin tied."""
        u = skills + rng.normal(0.0, self.noise, len(skills))
        order = np.argsort(-u, kind="stable")
        ranks = [0] * len(skills)
        for pos in range(1, len(order)):
            tied = u[order[pos - 1]] - u[order[pos]] < self.tie_margin
            ranks[order[pos]] = ranks[order[pos - 1]] if tied else pos
        return ranks


@dataclass(frozen=True)
class SimConfig:
    """The simulation's settings; ``budget`` is votes per run for K-wise Bayes, ``pair_budget`` for Elo and BT."""

    voters: Voters
    models: int = 50
    k: int = 4
    seeds: int = 5
    budget: int = 3000
    pair_budget: int = 10000
    eval_every: int = 10
    threshold: float = 0.95
    alpha: float = 1.0
    elo_k_factor: float = 32.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.models < 3 or not 2 <= self.k <= self.models or self.seeds < 1 or min(self.budget, self.pair_budget, self.eval_every) < 1:
            raise ConfigError(f"simulate: need models ≥ 3, 2 ≤ k ≤ models, seeds ≥ 1 and positive budgets; got {self}")


def _spearman(scores: dict[str, float], skills: np.ndarray) -> float:
    est = np.array([scores[str(i)] for i in range(len(skills))])
    if np.ptp(est) == 0:
        return 0.0
    return float(spearmanr(est, skills).statistic)


def run_method(method: str, cfg: SimConfig, seed: int) -> dict[str, Any]:
    """One run: ``{"votes": [...], "spearman": [...]}`` at every check."""
    rng = np.random.default_rng([cfg.seed, seed])
    skills = cfg.voters.skills(cfg.models, rng)
    people = np.random.default_rng(int(rng.integers(2**31)))  # the voters' own noise
    names = [str(i) for i in range(cfg.models)]
    system: Any = {"kwise-bayes": lambda: Bayes(BayesOptions()), "elo": lambda: Elo(k_factor=cfg.elo_k_factor),
                   "bt": BradleyTerry}[method]()
    budget = cfg.budget if method == "kwise-bayes" else cfg.pair_budget
    checks, curve = [], []
    for n in range(1, budget + 1):
        if method == "kwise-bayes":
            shown = [int(m) for m in pick_match(system, names, cfg.k, rng, cfg.alpha)]
        else:
            shown = [int(m) for m in rng.choice(cfg.models, 2, replace=False)]
        system.add([names[m] for m in shown], cfg.voters.rank(skills[shown], people), "rank")
        if n % cfg.eval_every == 0:
            checks.append(n)
            curve.append(round(_spearman(system.scores(names), skills), 5))
    return {"votes": checks, "spearman": curve}


def votes_to(curve: dict[str, Any], threshold: float, stay: bool) -> int | None:
    """The first check at ≥ threshold (``stay``: from which all later checks are ≥ threshold); None if none."""
    above = np.asarray(curve["spearman"]) >= threshold
    if stay:
        below = np.flatnonzero(~above)
        first = 0 if not len(below) else below[-1] + 1
        return None if first >= len(above) else int(curve["votes"][first])
    hits = np.flatnonzero(above)
    return int(curve["votes"][hits[0]]) if len(hits) else None


def summary(values: list[int | None], seed: int) -> dict[str, Any]:
    """Mean and 95% bootstrap CI of the runs that converged, the per-seed values and the count that did not."""
    done = [v for v in values if v is not None]
    est, lo, hi = bootstrap_ci(done, seed=seed) if done else (None, None, None)
    return {"mean": est, "ci_low": lo, "ci_high": hi, "per_seed": values, "not_converged": len(values) - len(done)}


def ratio_ci(baseline: list[int | None], kwise: list[int | None], seed: int) -> dict[str, Any] | None:
    """mean(baseline) / mean(kwise) over seeds where both converged, with a paired bootstrap 95% CI."""
    rows = [(b, k) for b, k in zip(baseline, kwise) if b is not None and k is not None]
    if not rows:
        return None
    est, lo, hi = bootstrap_ci(np.asarray(rows, float), lambda x: float(x[:, 0].mean() / x[:, 1].mean()), seed=seed)
    return {"ratio": est, "ci_low": lo, "ci_high": hi, "seeds": len(rows)}


def simulate(cfg: SimConfig, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every method over ``cfg.seeds`` seeds; write ``simulation.json`` and ``convergence.png`` to ``out``."""
    curves: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tqdm(total=len(METHODS) * cfg.seeds, desc="arena simulate", unit="run", disable=not progress) as bar:
        for seed in range(cfg.seeds):
            for m in METHODS:
                curves[m].append(run_method(m, cfg, seed))
                bar.update()
    pairs_per_vote = {"kwise-bayes": cfg.k * (cfg.k - 1) // 2, "elo": 1, "bt": 1}
    result: dict[str, Any] = {"config": asdict(cfg), "methods": {}, "ratios": {}}
    for m in METHODS:
        conv = [votes_to(c, cfg.threshold, stay=True) for c in curves[m]]
        reach = [votes_to(c, cfg.threshold, stay=False) for c in curves[m]]
        result["methods"][m] = {"votes_to_converge": summary(conv, cfg.seed), "votes_to_reach": summary(reach, cfg.seed),
                                "pairwise_comparisons_per_vote": pairs_per_vote[m],
                                "final_spearman": float(np.mean([c["spearman"][-1] for c in curves[m]]))}
    for base in ("elo", "bt"):
        for key in ("votes_to_converge", "votes_to_reach"):
            result["ratios"][f"{base}/kwise-bayes {key}"] = ratio_ci(result["methods"][base][key]["per_seed"],
                                                                   result["methods"]["kwise-bayes"][key]["per_seed"], cfg.seed)
    if out is not None:
        out = Path(out)
        atomic_write_json(out / "simulation.json", result)
        atomic_write_json(out / "curves.json", curves, indent=None)
        plot_convergence(curves, cfg, out / "convergence.png")
    return result


def plot_convergence(curves: dict[str, list[dict]], cfg: SimConfig, path: Path) -> Path:
    """Mean Spearman (band: min–max over seeds) against votes and against pairwise comparisons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    labels = {"kwise-bayes": f"K-wise Bayesian (K={cfg.k}, UCB)", "elo": "Elo (pairwise, random)",
              "bt": "Bradley–Terry MLE (pairwise, random)"}
    for m in METHODS:
        x = np.asarray(curves[m][0]["votes"], float)
        ys = np.asarray([c["spearman"] for c in curves[m]])
        for ax, scale in zip(axes, (1, cfg.k * (cfg.k - 1) // 2 if m == "kwise-bayes" else 1)):
            line, = ax.plot(x * scale, ys.mean(0), label=labels[m])
            ax.fill_between(x * scale, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
    for ax, xlabel in zip(axes, ("votes", "pairwise comparisons")):
        ax.axhline(cfg.threshold, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Spearman with the true order")
    axes[0].set_ylim(0, 1)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{cfg.models} models, simulated annotators, {cfg.seeds} seeds")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


__all__ = ["SimConfig", "simulate", "run_method", "votes_to", "summary", "ratio_ci", "plot_convergence", "Voters",
           "METHODS"]
