"""The arena's logic between the web page and the store: ratings replayed from the votes, matchmaking, and
generators that sample on demand for the prompt of a match (their samples are stored like folder items).

Ratings are a function of the stored votes, replayed in id order (:func:`rate`); :class:`Arena` keeps them
up to date incrementally and replays everything when a vote with a smaller id committed late (two
transactions finishing out of order), so every server process sees the same leaderboard.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mmalign.arena.ranking import Bayes, BayesOptions, BradleyTerry, Elo, leaderboard, pick_match
from mmalign.arena.store import ArenaError, Item, Match, Store, Vote
from mmalign.media import save_media


@dataclass
class Ratings:
    """The three rating systems over the same votes."""

    opts: BayesOptions = field(default_factory=BayesOptions)
    bayes: Bayes = field(init=False)
    elo: Elo = field(default_factory=Elo)
    bt: BradleyTerry = field(default_factory=BradleyTerry)
    n_votes: int = 0
    last_id: int = 0

    def __post_init__(self) -> None:
        self.bayes = Bayes(self.opts)

    def add(self, vote: Vote) -> None:
        for system in (self.bayes, self.elo, self.bt):
            system.add(vote.models, vote.ranks, vote.mode)
        self.n_votes += 1
        self.last_id = max(self.last_id, vote.id)


def rate(votes: Iterable[Vote], opts: BayesOptions = BayesOptions()) -> Ratings:
    """Replay ``votes`` (in the order given) into fresh ratings."""
    r = Ratings(opts)
    for v in votes:
        r.add(v)
    return r


class Arena:
    """Matches and ratings over a :class:`Store`; safe to share between a server's threads."""

    def __init__(self, store: Store, k: int = 4, alpha: float = 1.0, opts: BayesOptions = BayesOptions(),
                 ttl: float = 3600.0, seed: int | None = None, prompts: Sequence[str] = (),
                 media_dir: str | Path = "arena-media") -> None:
        if k < 2:
            raise ArenaError(f"k = {k}: a match shows at least 2 items")
        self.store, self.k, self.alpha, self.opts, self.ttl = store, k, alpha, opts, ttl
        self.prompts, self.media_dir = list(prompts), Path(media_dir)
        self.generators: dict[str, tuple[Any, threading.Lock]] = {}
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._ratings = Ratings(opts)

    def add_generator(self, name: str, generator: Any) -> None:
        """Show ``generator`` (anything with ``sample(prompts, n, seed, progress)``) as model ``name``: each match
        it is picked for draws a fresh sample for the match's prompt (from the folders' prompts and ``prompts``)."""
        self.store.register_model(name, f"generator:{getattr(generator, 'name', None) or type(generator).__name__}")
        self.generators[name] = (generator, threading.Lock())

    def _sample(self, model: str, prompt: str, seed: int) -> Item:
        generator, lock = self.generators[model]
        with lock:  # one sampling call at a time per generator
            media = generator.sample([prompt], n=1, seed=seed, progress=False)
            (path,) = save_media(media, self.media_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", model), names=[f"{seed:010d}"])
        return self.store.add_item(model, prompt, path)

    def ratings(self) -> Ratings:
        """Ratings over every committed vote."""
        with self._lock:
            for v in self.store.votes(after_id=self._ratings.last_id):
                self._ratings.add(v)
            if self._ratings.n_votes != self.store.count_votes():  # a smaller id committed after a larger one
                self._ratings = rate(self.store.votes(), self.opts)
            return self._ratings

    def add_model(self, name: str, folder: str) -> int:
        return self.store.add_model(name, folder)

    def next_match(self) -> Match:
        """A prompt that at least k models can show (media in their folders, or a generator); its models by
        matchmaking; one item each (a generator samples a new one), shuffled."""
        by_prompt: dict[str, dict[str, list[Item]]] = {p: {} for p in self.prompts}
        for prompt, its in self.store.prompts().items():
            for it in its:
                if it.model not in self.generators:
                    by_prompt.setdefault(prompt, {}).setdefault(it.model, []).append(it)
        usable = sorted(p for p, ms in by_prompt.items() if len(ms) + len(self.generators) >= self.k)
        if not usable:
            raise ArenaError(f"no prompt has media from {self.k} models yet; add models "
                             "(mmalign arena serve --model NAME=FOLDER or --generator NAME=PRESET with --prompts)")
        ratings = self.ratings()
        with self._lock:
            prompt = usable[int(self._rng.integers(len(usable)))]
            stored = by_prompt[prompt]
            chosen = pick_match(ratings.bayes, sorted(set(stored) | set(self.generators)), self.k, self._rng, self.alpha)
            picks: list[tuple[str, int, Item | None]] = []  # (model, seed for a generator, stored item)
            for m in chosen:
                if m in self.generators:
                    picks.append((m, int(self._rng.integers(2**31)), None))
                else:
                    picks.append((m, 0, stored[m][int(self._rng.integers(len(stored[m])))]))
            order = self._rng.permutation(len(picks))
        picked = [item if item is not None else self._sample(m, prompt, seed) for m, seed, item in picks]
        return self.store.create_match(prompt, [picked[i].id for i in order], self.ttl)

    def vote(self, match_id: str, ranks: Sequence[int], mode: str = "rank", voter: str | None = None) -> int:
        return self.store.vote(match_id, ranks, mode, voter)

    def leaderboard(self) -> list[dict]:
        names = self.store.model_names()
        r = self.ratings()
        with self._lock:  # another thread's ratings() may be adding votes to r
            return leaderboard(r.bayes, r.elo, r.bt, names)


__all__ = ["Arena", "Ratings", "rate"]
