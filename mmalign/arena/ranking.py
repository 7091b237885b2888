"""Skill ratings from K-wise votes: the K-Sort Bayesian update, matchmaking, and Elo / Bradley–Terry baselines.

**Votes.** A vote ranks the K items of one match: ``ranks[i]`` is item i's tier, 0 = best, equal tiers are
ties. :func:`implied_pairs` turns it into pairwise outcomes: in ``"rank"`` mode every pair of items; in
``"best"`` mode (pick the best) only the pairs that involve a top-tier item, since the order among the
others is unknown.

**Bayesian update** (K-Sort Arena, Li et al., CVPR 2025, arXiv 2408.14468v2, Sec. 3.1, App. A and
Eq. 9–10; the Thurstone–Mosteller "full pair" update of Weng & Lin, JMLR 2011, Algorithm 1). Skill
θ_i ~ N(μ_i, σ_i²), performance X_i ~ N(θ_i, β²). For every implied pair (i, q), with
c_iq² = 2β² + σ_i² + σ_q², t = (μ_i − μ_q)/c_iq and ε' = ε/c_iq::

    μ_i ← μ_i + σ_i²/c_iq · V(t, ε')            (i won; q: the mirror term with −t)
    σ_i² ← σ_i² · max(1 − σ_i²/c_iq² · W(t, ε'), κ)

summed over all of i's pairs in the vote, every term computed from the ratings *before* the vote (so
the result does not depend on the order in which the K items were shown). V(x) = φ(x)/Φ(x),
W(x) = V(x)(V(x) + x) as in the paper's App. A, evaluated at x − ε'. Ties (``ties="draw"``) use
TrueSkill's draw terms (Herbrich et al., NIPS 2006, Table 1):
V_draw(t, ε) = (φ(−ε − t) − φ(ε − t)) / (Φ(ε − t) − Φ(−ε − t)) and
W_draw(t, ε) = V_draw² + ((ε − t)φ(ε − t) + (ε + t)φ(ε + t)) / (Φ(ε − t) − Φ(−ε − t)); with
``ties="skip"`` a tied pair updates nothing. The draw margin is ε = √2·β·Φ⁻¹((1 + p_draw)/2)
(TrueSkill's ``calc_draw_margin`` for two players). κ floors the variance factor (Weng & Lin's κ, as
in openskill). τ adds σ² ← σ² + τ² before each vote (TrueSkill's dynamics). The paper does not state
its priors; the defaults are TrueSkill's μ₀ = 25, σ₀ = 25/3, β = 25/6, τ = 25/300 and a draw
probability of 0.1 (its leaderboard range, ~16–32, matches the paper's). Without τ the variances
shrink until early mistakes are frozen in: in the simulation (:mod:`mmalign.arena.simulate`, 50 models)
one of two seeds then stalled at Spearman 0.953 after 3,000 votes, against 0.999 with τ = 25/300.
Leaderboards order by the conservative score μ − 3σ.

**Matchmaking** (Sec. 3.2): the pivot is the model with the fewest comparisons; K − 1 opponents are
added greedily, each maximising the mean over the models already in the match of the UCB
U(i, q) = −|S_i − S_q| + α·√(ln n / n_iq) (n = comparisons made so far, n_iq = comparisons of the pair;
an unseen pair is explored first). The paper prints +|S_i − S_q| but says exploitation "prioritizes
players of similar skill"; the minus sign implements that sentence.

**Baselines.** Pairwise Elo (expected score 1/(1 + 10^((R_q − R_i)/400)), R ← R + k_factor·(S − E),
a tie scores 0.5), and Bradley–Terry by maximum likelihood: P(i ≻ q) = σ(s_i − s_q), a tie counted as
half a win each way, with a Gaussian prior N(0, prior_var) on each s that keeps unbeaten models finite.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.stats import norm

from mmalign.errors import ConfigError, InputError

MODES = ("rank", "best")
TIES = ("draw", "skip")
ETA = 3.0  #: conservative score S = μ − ETA·σ (paper Sec. 3.1)


@dataclass(frozen=True)
class Rating:
    """A model's skill belief θ ~ N(mu, sigma²)."""

    mu: float
    sigma: float

    @property
    def conservative(self) -> float:
        """S = μ − 3σ, the leaderboard score."""
        return self.mu - ETA * self.sigma


@dataclass(frozen=True)
class BayesOptions:
    """Priors and tie handling of the Bayesian update (see the module docstring)."""

    mu: float = 25.0
    sigma: float = 25.0 / 3.0
    beta: float = 25.0 / 6.0
    ties: str = "draw"
    draw_probability: float = 0.1
    tau: float = 25.0 / 300.0
    kappa: float = 1e-4

    def __post_init__(self) -> None:
        if self.ties not in TIES:
            raise ConfigError(f"ties must be one of {TIES}, got {self.ties!r}")
        if not (self.sigma > 0 and self.beta > 0 and self.tau >= 0 and 0 < self.kappa < 1):
            raise ConfigError(f"need sigma > 0, beta > 0, tau ≥ 0 and 0 < kappa < 1; got {self}")
        if not 0 <= self.draw_probability < 1 or (self.ties == "draw" and self.draw_probability == 0):
            raise ConfigError(f"draw_probability {self.draw_probability}: need 0 < p < 1 with ties='draw' "
                              "(or ties='skip' to ignore tied pairs)")

    @property
    def prior(self) -> Rating:
        return Rating(self.mu, self.sigma)

    @property
    def draw_margin(self) -> float:
        """ε = √2·β·Φ⁻¹((1 + p_draw)/2); 0 when ties are skipped."""
        if self.ties == "skip":
            return 0.0
        return math.sqrt(2.0) * self.beta * float(norm.ppf((1.0 + self.draw_probability) / 2.0))


# ---------------------------------------------------------------------------------------------
# votes


def check_vote(ranks: Sequence[int], mode: str = "rank", where: str = "vote") -> list[int]:
    """``ranks`` as a list of non-negative tiers (0 = best); an InputError that says what is wrong."""
    if mode not in MODES:
        raise InputError(f"{where}: mode must be one of {MODES}, got {mode!r}")
    if not isinstance(ranks, (list, tuple)) or len(ranks) < 2:
        raise InputError(f"{where}: ranks must be a list with one tier per item (at least 2), got {ranks!r}")
    if not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < len(ranks) for r in ranks):
        raise InputError(f"{where}: each rank must be an integer tier in 0..{len(ranks) - 1} (0 = best), got {list(ranks)}")
    if min(ranks) != 0:
        raise InputError(f"{where}: the best tier must be 0, got {list(ranks)}")
    if mode == "best" and set(ranks) - {0, 1}:
        raise InputError(f"{where}: a pick-the-best vote marks the best item(s) 0 and the others 1, got {list(ranks)}")
    return [int(r) for r in ranks]


def implied_pairs(ranks: Sequence[int], mode: str = "rank") -> list[tuple[int, int, float]]:
    """``(i, j, outcome)`` for i < j, outcome = P(i ≻ j) ∈ {1, 0.5, 0}: the pairwise comparisons a vote implies."""
    ranks = check_vote(ranks, mode)
    out = []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if mode == "best" and ranks[i] != 0 and ranks[j] != 0:
                continue
            out.append((i, j, 1.0 if ranks[i] < ranks[j] else 0.0 if ranks[i] > ranks[j] else 0.5))
    return out


# ---------------------------------------------------------------------------------------------
# the Bayesian update


def _pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def v_win(x: float) -> float:
    """V(x) = φ(x)/Φ(x); → −x as x → −∞ (where Φ underflows)."""
    cdf = _cdf(x)
    return _pdf(x) / cdf if cdf > 1e-300 else -x


def w_win(x: float) -> float:
    """W(x) = V(x)(V(x) + x)."""
    v = v_win(x)
    return v * (v + x)


def v_draw(t: float, eps: float) -> float:
    """TrueSkill's V for a draw at mean difference t and margin eps."""
    den = max(_cdf(eps - t) - _cdf(-eps - t), 1e-300)
    return (_pdf(-eps - t) - _pdf(eps - t)) / den


def w_draw(t: float, eps: float) -> float:
    """TrueSkill's W for a draw."""
    den = max(_cdf(eps - t) - _cdf(-eps - t), 1e-300)
    v = v_draw(t, eps)
    return v * v + ((eps - t) * _pdf(eps - t) + (eps + t) * _pdf(eps + t)) / den


def _pair_terms(a: Rating, b: Rating, outcome: float, opts: BayesOptions) -> tuple[float, float, float, float] | None:
    """(Δμ_a, Δμ_b, variance factor terms for a and b) of one pair, or None for a skipped tie."""
    if outcome == 0.5 and opts.ties == "skip":
        return None
    c = math.sqrt(2 * opts.beta**2 + a.sigma**2 + b.sigma**2)
    eps = opts.draw_margin / c
    if outcome == 0.5:
        t = (a.mu - b.mu) / c
        v, w = v_draw(t, eps), w_draw(t, eps)
        return a.sigma**2 / c * v, -b.sigma**2 / c * v, a.sigma**2 / c**2 * w, b.sigma**2 / c**2 * w
    win, lose = (a, b) if outcome == 1.0 else (b, a)
    x = (win.mu - lose.mu) / c - eps
    v, w = v_win(x), w_win(x)
    d_win, d_lose = win.sigma**2 / c * v, -lose.sigma**2 / c * v
    f_win, f_lose = win.sigma**2 / c**2 * w, lose.sigma**2 / c**2 * w
    return (d_win, d_lose, f_win, f_lose) if outcome == 1.0 else (d_lose, d_win, f_lose, f_win)


def kwise_update(ratings: Sequence[Rating], ranks: Sequence[int], mode: str = "rank",
                 opts: BayesOptions = BayesOptions()) -> list[Rating]:
    """Posterior ratings of the K items of one vote (paper Eq. 9–10; see the module docstring)."""
    if len(ratings) != len(ranks):
        raise InputError(f"kwise_update: {len(ratings)} ratings but {len(ranks)} ranks")
    prior = [Rating(r.mu, math.sqrt(r.sigma**2 + opts.tau**2)) for r in ratings]
    d_mu = [0.0] * len(prior)
    factor = [0.0] * len(prior)
    for i, j, outcome in implied_pairs(ranks, mode):
        terms = _pair_terms(prior[i], prior[j], outcome, opts)
        if terms is None:
            continue
        d_mu[i] += terms[0]
        d_mu[j] += terms[1]
        factor[i] += terms[2]
        factor[j] += terms[3]
    return [Rating(r.mu + d, r.sigma * math.sqrt(max(1.0 - f, opts.kappa))) for r, d, f in zip(prior, d_mu, factor)]


def pairwise_update(a: Rating, b: Rating, outcome: float, opts: BayesOptions = BayesOptions()) -> tuple[Rating, Rating]:
    """The two-player update (paper App. A); ``outcome`` = 1 (a wins), 0 (b wins) or 0.5 (tie)."""
    ranks = {1.0: [0, 1], 0.0: [1, 0], 0.5: [0, 0]}.get(outcome)
    if ranks is None:
        raise InputError(f"pairwise_update: outcome must be 1, 0 or 0.5, got {outcome!r}")
    new_a, new_b = kwise_update([a, b], ranks, "rank", opts)
    return new_a, new_b


# ---------------------------------------------------------------------------------------------
# rating systems: each consumes votes (model names in shown order, ranks, mode)


@dataclass
class Bayes:
    """K-wise Bayesian ratings with comparison counts (for matchmaking and the leaderboard)."""

    opts: BayesOptions = field(default_factory=BayesOptions)
    ratings: dict[str, Rating] = field(default_factory=dict)
    votes: Counter = field(default_factory=Counter)
    pair_counts: Counter = field(default_factory=Counter)
    compared: Counter = field(default_factory=Counter)

    def rating(self, model: str) -> Rating:
        return self.ratings.get(model, self.opts.prior)

    def add(self, models: Sequence[str], ranks: Sequence[int], mode: str = "rank") -> None:
        if len(set(models)) != len(models):
            raise InputError(f"a vote compares distinct models, got {list(models)}")
        new = kwise_update([self.rating(m) for m in models], ranks, mode, self.opts)
        self.ratings.update(zip(models, new))
        self.votes.update(models)
        for i, j, _ in implied_pairs(ranks, mode):
            self.pair_counts[_pair_key(models[i], models[j])] += 1
            self.compared.update((models[i], models[j]))

    def comparisons(self, model: str) -> int:
        return self.compared[model]

    def scores(self, models: Iterable[str]) -> dict[str, float]:
        return {m: self.rating(m).conservative for m in models}


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass
class Elo:
    """Pairwise Elo over the pairs each vote implies."""

    k_factor: float = 32.0
    initial: float = 1500.0
    ratings: dict[str, float] = field(default_factory=dict)

    def add(self, models: Sequence[str], ranks: Sequence[int], mode: str = "rank") -> None:
        for i, j, s in implied_pairs(ranks, mode):
            a, b = models[i], models[j]
            ra, rb = self.ratings.get(a, self.initial), self.ratings.get(b, self.initial)
            e = 1.0 / (1.0 + 10 ** ((rb - ra) / 400.0))
            self.ratings[a] = ra + self.k_factor * (s - e)
            self.ratings[b] = rb - self.k_factor * (s - e)

    def scores(self, models: Iterable[str]) -> dict[str, float]:
        return {m: self.ratings.get(m, self.initial) for m in models}


@dataclass
class BradleyTerry:
    """Bradley–Terry strengths by maximum likelihood (with a Gaussian prior), refit on demand."""

    prior_var: float = 100.0
    outcomes: list[tuple[str, str, float]] = field(default_factory=list)
    _last: dict[str, float] = field(default_factory=dict, repr=False)  # the previous fit: the next one starts there

    def add(self, models: Sequence[str], ranks: Sequence[int], mode: str = "rank") -> None:
        self.outcomes += [(models[i], models[j], s) for i, j, s in implied_pairs(ranks, mode)]

    def scores(self, models: Iterable[str]) -> dict[str, float]:
        names = list(models)
        index = {m: n for n, m in enumerate(names)}
        rows = [(index[a], index[b], s) for a, b, s in self.outcomes if a in index and b in index]
        start = np.array([self._last.get(m, 0.0) for m in names])
        self._last = dict(zip(names, bt_mle(len(names), rows, self.prior_var, start).tolist()))
        return dict(self._last)


def bt_mle(n: int, outcomes: Sequence[tuple[int, int, float]], prior_var: float = 100.0,
           start: np.ndarray | None = None) -> np.ndarray:
    """MAP Bradley–Terry log-strengths ``[n]`` from ``(i, j, P(i ≻ j))`` rows (ties = 0.5); ``start``: initial guess."""
    if not outcomes:
        return np.zeros(n)
    arr = np.asarray(outcomes, dtype=np.float64)
    i, j, y = arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2]

    def loss(s: np.ndarray) -> tuple[float, np.ndarray]:
        d = s[i] - s[j]
        nll = np.sum(np.logaddexp(0.0, -d) * y + np.logaddexp(0.0, d) * (1 - y)) + np.sum(s**2) / (2 * prior_var)
        g_d = 1.0 / (1.0 + np.exp(-d)) - y
        grad = np.bincount(i, g_d, n) - np.bincount(j, g_d, n) + s / prior_var
        return float(nll), grad

    res = minimize(loss, np.zeros(n) if start is None else start, jac=True, method="L-BFGS-B", options={"gtol": 1e-8})
    return res.x


SYSTEMS = {"bayes": Bayes, "elo": Elo, "bt": BradleyTerry}


# ---------------------------------------------------------------------------------------------
# matchmaking


def pick_match(bayes: Bayes, models: Sequence[str], k: int, rng: np.random.Generator, alpha: float = 1.0) -> list[str]:
    """K models: the least-compared pivot, then K − 1 opponents by the UCB rule (module docstring)."""
    models = list(models)
    if k < 2 or len(models) < k:
        raise InputError(f"a match needs 2 ≤ k ≤ number of models; k = {k} with {len(models)} models")
    order = rng.permutation(len(models))  # random tie-breaking
    counts = {m: bayes.comparisons(m) for m in models}
    pivot = min((models[i] for i in order), key=lambda m: counts[m])
    total = max(sum(bayes.pair_counts.values()), 1)
    score = bayes.scores(models)

    def ucb(a: str, b: str) -> float:
        n_ab = bayes.pair_counts[_pair_key(a, b)]
        if n_ab == 0:
            return math.inf
        return -abs(score[a] - score[b]) + alpha * math.sqrt(math.log(total) / n_ab)

    chosen = [pivot]
    for _ in range(k - 1):
        rest = [models[i] for i in order if models[i] not in chosen]
        chosen.append(max(rest, key=lambda q: sum(ucb(c, q) for c in chosen) / len(chosen)))
    return chosen


def leaderboard(bayes: Bayes, elo: Elo, bt: BradleyTerry, models: Sequence[str]) -> list[dict]:
    """Rows ordered by the conservative score: model, μ, σ, μ − 3σ, votes, comparisons, Elo, BT."""
    bt_scores = bt.scores(models)
    elo_scores = elo.scores(models)
    rows = [{"model": m, "mu": bayes.rating(m).mu, "sigma": bayes.rating(m).sigma, "score": bayes.rating(m).conservative,
             "votes": bayes.votes[m], "comparisons": bayes.comparisons(m), "elo": elo_scores[m], "bt": bt_scores[m]}
            for m in models]
    rows.sort(key=lambda r: -r["score"])
    for n, r in enumerate(rows, 1):
        r["rank"] = n
    return rows


__all__ = ["Rating", "BayesOptions", "check_vote", "implied_pairs", "kwise_update", "pairwise_update", "Bayes", "Elo",
           "BradleyTerry", "bt_mle", "pick_match", "leaderboard", "SYSTEMS", "MODES", "TIES", "ETA"]
