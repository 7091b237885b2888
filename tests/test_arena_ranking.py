"""The arena's ratings: the Bayesian K-wise update against hand-computed values, its invariances, matchmaking,
the Elo and Bradley–Terry baselines, and a small convergence simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mmalign.arena.ranking import (Bayes, BayesOptions, BradleyTerry, Elo, Rating, bt_mle, implied_pairs, kwise_update,
                                   pairwise_update, pick_match, v_win, w_win)
from mmalign.errors import ConfigError, InputError

PRIOR = Rating(25.0, 25.0 / 3.0)
NO_TIES = BayesOptions(ties="skip", draw_probability=0.0, tau=0.0)


def test_pairwise_update_matches_hand_computed_values():
    # c² = 2β² + 2σ² = 2(25/6)² + 2(25/3)² = 173.6111; c = 13.176157; t = 0; V(0) = φ(0)/Φ(0) = 0.7978846,
    # W(0) = V(0)² = 0.6366198. μ_win = 25 + (625/9)/c·V(0) = 25 + 5.270463·0.7978846 = 29.205221;
    # σ_win² = (625/9)(1 − (625/9)/c²·W(0)) = 69.44444·(1 − 0.4·0.6366198) = 51.76056 → σ = 7.194481.
    win, lose = pairwise_update(PRIOR, PRIOR, 1.0, NO_TIES)
    assert win.mu == pytest.approx(29.205221, abs=1e-6) and lose.mu == pytest.approx(20.794779, abs=1e-6)
    assert win.sigma == pytest.approx(7.194481, abs=1e-6) and lose.sigma == pytest.approx(7.194481, abs=1e-6)
    assert v_win(0.0) == pytest.approx(0.7978846, abs=1e-7) and w_win(0.0) == pytest.approx(0.6366198, abs=1e-7)


def test_trueskill_defaults_reproduce_the_published_two_player_numbers():
    # TrueSkill (draw probability 0.1, τ = 25/300): a win gives 29.396 / 20.604 with σ 7.171; a draw 25.000, σ 6.458.
    opts = BayesOptions()
    win, lose = pairwise_update(PRIOR, PRIOR, 1.0, opts)
    assert (round(win.mu, 3), round(lose.mu, 3), round(win.sigma, 3)) == (29.396, 20.604, 7.171)
    a, b = pairwise_update(PRIOR, PRIOR, 0.5, opts)
    assert (round(a.mu, 3), round(b.mu, 3), round(a.sigma, 3)) == (25.0, 25.0, 6.458)
    # b loses in the mirrored call: the same numbers
    lose2, win2 = pairwise_update(PRIOR, PRIOR, 0.0, opts)
    assert win2 == win and lose2 == lose


def test_unequal_ratings_hand_computed():
    a, b = Rating(30.0, 4.0), Rating(20.0, 6.0)
    beta = 25 / 6
    c = math.sqrt(2 * beta**2 + 16 + 36)
    x = (30 - 20) / c
    phi, cdf = math.exp(-x * x / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(x / math.sqrt(2)))
    v = phi / cdf
    w = v * (v + x)
    new_a, new_b = pairwise_update(a, b, 1.0, NO_TIES)  # the expected winner wins: small updates
    assert new_a.mu == pytest.approx(30 + 16 / c * v) and new_b.mu == pytest.approx(20 - 36 / c * v)
    assert new_a.sigma == pytest.approx(4 * math.sqrt(1 - 16 / c**2 * w))
    up_b, down_a = pairwise_update(b, a, 1.0, NO_TIES)  # an upset moves more
    assert up_b.mu - 20 > new_a.mu - 30 > 0


def test_kwise_update_is_the_sum_of_its_pairs():
    ratings = [Rating(25, 8), Rating(28, 5), Rating(22, 7)]
    ranks = [1, 0, 2]
    new = kwise_update(ratings, ranks, opts=NO_TIES)
    c = lambda a, b: math.sqrt(2 * (25 / 6) ** 2 + a.sigma**2 + b.sigma**2)  # noqa: E731
    # item 1 beat 0 and 2; item 0 beat 2
    d1 = sum(ratings[1].sigma**2 / c(ratings[1], q) * v_win((ratings[1].mu - q.mu) / c(ratings[1], q)) for q in (ratings[0], ratings[2]))
    assert new[1].mu == pytest.approx(ratings[1].mu + d1)
    d0 = (ratings[0].sigma**2 / c(ratings[0], ratings[2]) * v_win((25 - 22) / c(ratings[0], ratings[2]))
          - ratings[0].sigma**2 / c(ratings[0], ratings[1]) * v_win((28 - 25) / c(ratings[0], ratings[1])))
    assert new[0].mu == pytest.approx(25 + d0)


@pytest.mark.parametrize("outcome,ranks", [(1.0, [0, 1]), (0.0, [1, 0]), (0.5, [0, 0])])
def test_k2_vote_equals_the_pairwise_update(outcome, ranks):
    a, b = Rating(27.0, 6.0), Rating(24.0, 7.5)
    for opts in (BayesOptions(), NO_TIES, BayesOptions(tau=0.0, draw_probability=0.2)):
        assert kwise_update([a, b], ranks, opts=opts) == list(pairwise_update(a, b, outcome, opts))
        bayes = Bayes(opts)
        bayes.ratings.update(a=a, b=b)
        bayes.add(["a", "b"], ranks)
        assert (bayes.rating("a"), bayes.rating("b")) == pairwise_update(a, b, outcome, opts)


@pytest.mark.parametrize("mode,ranks", [("rank", [2, 0, 3, 0]), ("rank", [0, 1, 2, 3]), ("best", [1, 1, 0, 1])])
def test_result_does_not_depend_on_the_shown_order(mode, ranks):
    names = ["w", "x", "y", "z"]
    start = {"w": Rating(25, 8), "x": Rating(30, 3), "y": Rating(20, 6), "z": Rating(26, 5)}
    results = []
    for perm in itertools.permutations(range(4)):
        bayes = Bayes()
        bayes.ratings.update(start)
        bayes.add([names[i] for i in perm], [ranks[i] for i in perm], mode)
        results.append({n: bayes.rating(n) for n in names})
    for r in results[1:]:
        for n in names:
            assert r[n].mu == pytest.approx(results[0][n].mu, abs=1e-12)
            assert r[n].sigma == pytest.approx(results[0][n].sigma, abs=1e-12)


def test_implied_pairs_modes_and_ties():
    assert implied_pairs([1, 0, 1], "rank") == [(0, 1, 0.0), (0, 2, 0.5), (1, 2, 1.0)]
    assert implied_pairs([1, 0, 1], "best") == [(0, 1, 0.0), (1, 2, 1.0)]  # the two others are not compared
    for bad, mode in [([0], "rank"), ([1, 2], "rank"), ([0, 5], "rank"), ([0, 2, 1], "best"), ([0, "1"], "rank"),
                      ([0, True], "rank"), ([0, 1], "worst")]:
        with pytest.raises(InputError):
            implied_pairs(bad, mode)


def test_tie_options():
    a, b = Rating(30.0, 5.0), Rating(20.0, 5.0)
    drawn = pairwise_update(a, b, 0.5, BayesOptions())
    assert drawn[0].mu < 30 and drawn[1].mu > 20 and drawn[0].sigma < 5  # a draw pulls the two together
    assert pairwise_update(a, b, 0.5, NO_TIES) == (a, b)  # skipped
    with pytest.raises(ConfigError):
        BayesOptions(ties="draw", draw_probability=0.0)
    with pytest.raises(ConfigError):
        BayesOptions(ties="half")


def test_variance_floor_keeps_sigma_positive():
    r = [Rating(25, 8)] * 8
    new = kwise_update(r, list(range(8)), opts=BayesOptions(kappa=0.5))
    assert all(x.sigma >= 8 * math.sqrt(0.5) - 1e-12 for x in new)


def test_elo_hand_computed():
    elo = Elo(k_factor=32)
    elo.ratings.update(a=1600.0, b=1400.0)
    elo.add(["a", "b"], [1, 0])  # the underdog b wins
    e_b = 1 / (1 + 10 ** (200 / 400))  # 0.2402531
    assert elo.ratings["b"] == pytest.approx(1400 + 32 * (1 - e_b)) and elo.ratings["a"] == pytest.approx(1600 - 32 * (1 - e_b))
    elo.add(["a", "b"], [0, 0])  # a tie scores 0.5
    assert elo.ratings["a"] + elo.ratings["b"] == pytest.approx(3000)


def test_bradley_terry_mle():
    # two players, a beats b 3 times out of 4: without a prior the MLE difference is log(3)
    rows = [(0, 1, 1.0)] * 3 + [(0, 1, 0.0)]
    s = bt_mle(2, rows, prior_var=1e9)
    assert s[0] - s[1] == pytest.approx(math.log(3), abs=1e-4)
    # an unbeaten model stays finite under the prior; ties count half
    s = bt_mle(2, [(0, 1, 1.0)] * 5)
    assert np.isfinite(s).all() and s[0] > s[1]
    assert bt_mle(2, [(0, 1, 0.5)] * 4)[0] == pytest.approx(0.0, abs=1e-6)
    bt = BradleyTerry()
    bt.add(["x", "y", "z"], [0, 1, 2])
    sc = bt.scores(["x", "y", "z"])
    assert sc["x"] > sc["y"] > sc["z"]


def test_matchmaking_pivot_is_least_compared_and_opponents_explore_then_exploit():
    rng = np.random.default_rng(0)
    bayes = Bayes()
    names = ["a", "b", "c", "d", "e"]
    for _ in range(3):
        bayes.add(["a", "b"], [0, 1])
        bayes.add(["c", "d"], [0, 1])
        bayes.add(["a", "c"], [0, 1])
    bayes.add(["e", "b"], [0, 1])
    match = pick_match(bayes, names, 2, rng)
    assert match[0] == "e"  # one comparison, the fewest
    assert match[1] in ("a", "c", "d")  # never-compared pairs are explored first
    with pytest.raises(InputError):
        pick_match(bayes, names, 6, rng)
    # once every pair has been seen, similar conservative scores win (exploitation)
    bayes2 = Bayes()
    bayes2.ratings.update(p=Rating(25, 2), q=Rating(25.5, 2), r=Rating(40, 2))
    for x, y in itertools.combinations("pqr", 2):
        bayes2.pair_counts[(x, y)] = 50
        bayes2.compared.update((x, y))
    bayes2.compared["p"] -= 1
    assert pick_match(bayes2, ["p", "q", "r"], 2, rng) == ["p", "q"]


def test_simulation_small_kwise_converges_and_reports(tmp_path):
    from mmalign.arena.cli import synth_voters
    from mmalign.arena.simulate import SimConfig, Voters, run_method, simulate, votes_to

    cfg = SimConfig(voters=synth_voters(), models=8, k=3, seeds=2, budget=150, pair_budget=400, eval_every=10, threshold=0.9)
    res = simulate(cfg, tmp_path, progress=False)
    assert set(res["methods"]) == {"kwise-bayes", "elo", "bt"}
    for m, r in res["methods"].items():
        assert r["final_spearman"] > 0.8, (m, r)
        assert len(r["votes_to_converge"]["per_seed"]) == 2
    assert (tmp_path / "convergence.png").stat().st_size > 5000
    assert (tmp_path / "simulation.json").is_file()
    curve = run_method("kwise-bayes", cfg, 0)
    assert curve == run_method("kwise-bayes", cfg, 0)  # seeded
    assert votes_to({"votes": [10, 20, 30, 40], "spearman": [0.95, 0.5, 0.96, 0.97]}, 0.9, stay=True) == 30
    assert votes_to({"votes": [10, 20, 30, 40], "spearman": [0.95, 0.5, 0.96, 0.97]}, 0.9, stay=False) == 10
    assert votes_to({"votes": [10, 20], "spearman": [0.5, 0.6]}, 0.9, stay=True) is None
    # the voters: noise-free voters rank by skill, and tie within the margin
    exact = Voters(noise=0.0, tie_margin=0.1, skill_range=1.0)
    assert exact.rank(np.array([0.2, 0.9, 0.25, 0.5]), np.random.default_rng(0)) == [2, 0, 2, 1]
    assert sorted(exact.skills(5, np.random.default_rng(0))) == [0.0, 0.25, 0.5, 0.75, 1.0]
