"""The arena's database: models, their media items, matches and votes (SQLAlchemy 2).

``sqlite:///arena.db`` (or a plain file path) is the embedded default: WAL journal with
``synchronous=FULL``, so a committed vote survives a killed process (and a power cut), and write
transactions take the lock up front (``BEGIN IMMEDIATE``) so concurrent voters wait instead of
failing. ``postgresql://…`` (driver psycopg 3) serves a team. One vote is one transaction: the match
is checked and the vote inserted together, and ``votes.match_id`` is unique, so a replayed or
concurrent second vote on a match fails instead of counting twice.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import (Column, Float, ForeignKey, Integer, MetaData, String, Table, Text, UniqueConstraint, create_engine,
                        event, func, insert, select)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from mmalign.arena.ranking import check_vote
from mmalign.errors import InputError
from mmalign.media import modality_of, read_media_manifest

metadata = MetaData()
models = Table(
    "models", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("source", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
items = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", Integer, ForeignKey("models.id"), nullable=False, index=True),
    Column("prompt", Text, nullable=False, index=True),
    Column("path", Text, nullable=False),
    Column("modality", String(8), nullable=False),
    UniqueConstraint("model_id", "path"),
)
matches = Table(
    "matches", metadata,
    Column("id", String(64), primary_key=True),
    Column("prompt", Text, nullable=False),
    Column("item_ids", Text, nullable=False),  # JSON list, in the order shown
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
votes = Table(
    "votes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("match_id", String(64), ForeignKey("matches.id"), nullable=False, unique=True),
    Column("ranks", Text, nullable=False),  # JSON list aligned with the match's item_ids
    Column("mode", String(8), nullable=False),
    Column("voter", String(200)),
    Column("created_at", Float, nullable=False),
)


class ArenaError(InputError):
    """A request the arena refuses; ``status`` is its HTTP status code."""

    status = 400


class UnknownMatch(ArenaError):
    status = 404


class ExpiredMatch(ArenaError):
    status = 410


class AlreadyVoted(ArenaError):
    status = 409


@dataclass(frozen=True)
class Item:
    id: int
    model: str
    prompt: str
    path: str
    modality: str


@dataclass(frozen=True)
class Match:
    id: str
    prompt: str
    items: tuple[Item, ...]
    expires_at: float


@dataclass(frozen=True)
class Vote:
    id: int
    match_id: str
    prompt: str
    items: tuple[Item, ...]
    ranks: tuple[int, ...]
    mode: str
    created_at: float

    @property
    def models(self) -> list[str]:
        return [it.model for it in self.items]


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL: ``postgresql://`` uses psycopg 3; a plain path is an SQLite file."""
    db = str(db)
    if db.startswith("postgresql://") or db.startswith("postgres://"):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def _sqlite_setup(engine: Engine) -> None:
    """WAL + synchronous=FULL, a busy timeout, and BEGIN IMMEDIATE for every transaction (the SQLAlchemy
    pysqlite recipe: the driver's own implicit BEGIN is switched off)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """The arena's tables behind a few methods, each one transaction."""

    def __init__(self, db: str | Path) -> None:
        self.url = database_url(db)
        sqlite = self.url.startswith("sqlite")
        try:
            self.engine = create_engine(self.url, **({"connect_args": {"timeout": 30, "check_same_thread": False}}
                                                     if sqlite else {"pool_pre_ping": True}))
            if sqlite:
                _sqlite_setup(self.engine)
            metadata.create_all(self.engine)
        except (SQLAlchemyError, ImportError) as e:  # a malformed URL, a missing driver, a server that is not there
            raise InputError(f"--db {db}: cannot open the database ({' '.join(str(e).split())[:300]}); give a file path, "
                             "sqlite:///FILE or postgresql://USER@HOST/DB (PostgreSQL needs pip install 'mmalign[arena]')") from e

    def close(self) -> None:
        self.engine.dispose()

    # -- models and media ---------------------------------------------------------------------

    def add_model(self, name: str, folder: str | Path) -> int:
        """Register a ``mmalign sample`` folder (``manifest.jsonl`` of ``{file, prompt}``) as model ``name``;
        returns the number of items added (a folder added again adds only new files)."""
        folder = Path(folder).resolve()
        rows = _read_sample_manifest(folder)
        with self.engine.begin() as conn:
            model_id = self._model_id(conn, name, str(folder))
            known = set(conn.execute(select(items.c.path).where(items.c.model_id == model_id)).scalars())
            new = [dict(model_id=model_id, prompt=p, path=str(f), modality=modality_of(f)) for f, p in rows if str(f) not in known]
            if new:
                conn.execute(insert(items), new)
        return len(new)

    def register_model(self, name: str, source: str) -> None:
        """Make sure model ``name`` exists (e.g. a generator that samples on demand; ``source`` describes it)."""
        with self.engine.begin() as conn:
            self._model_id(conn, name, source)

    def add_item(self, model: str, prompt: str, path: str | Path) -> Item:
        """Record one media file of ``model`` for ``prompt`` (a sample drawn on demand)."""
        path = Path(path).resolve()
        with self.engine.begin() as conn:
            model_id = conn.execute(select(models.c.id).where(models.c.name == model)).scalar()
            if model_id is None:
                raise ArenaError(f"unknown model {model!r}; register it first")
            item_id = conn.execute(insert(items).values(model_id=model_id, prompt=prompt, path=str(path),
                                                        modality=modality_of(path))).inserted_primary_key[0]
        return Item(int(item_id), model, prompt, str(path), modality_of(path))

    @staticmethod
    def _model_id(conn: Any, name: str, source: str) -> int:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ArenaError(f"model name {name!r}: give 1–200 characters")
        model_id = conn.execute(select(models.c.id).where(models.c.name == name)).scalar()
        if model_id is None:
            model_id = conn.execute(insert(models).values(name=name, source=source, created_at=time.time())).inserted_primary_key[0]
        return int(model_id)

    def model_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(models.c.name).order_by(models.c.id)).scalars())

    def prompts(self) -> dict[str, list[Item]]:
        """Every prompt with its items (all models)."""
        q = select(items.c.id, models.c.name, items.c.prompt, items.c.path, items.c.modality).join(models).order_by(items.c.id)
        out: dict[str, list[Item]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                out.setdefault(row.prompt, []).append(Item(*row))
        return out

    def _items(self, conn: Any, ids: Sequence[int]) -> list[Item]:
        q = select(items.c.id, models.c.name, items.c.prompt, items.c.path, items.c.modality).join(models).where(items.c.id.in_(ids))
        by_id = {row.id: Item(*row) for row in conn.execute(q)}
        return [by_id[i] for i in ids]

    # -- matches and votes --------------------------------------------------------------------

    def create_match(self, prompt: str, item_ids: Sequence[int], ttl: float = 3600.0) -> Match:
        """A new match showing ``item_ids`` (in this order) for ``prompt``; votes close after ``ttl`` seconds."""
        now = time.time()
        match_id = secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            conn.execute(insert(matches).values(id=match_id, prompt=prompt, item_ids=json.dumps(list(item_ids)),
                                                created_at=now, expires_at=now + ttl))
            shown = self._items(conn, item_ids)
        return Match(match_id, prompt, tuple(shown), now + ttl)

    def match(self, match_id: str) -> Match:
        with self.engine.connect() as conn:
            row = conn.execute(select(matches).where(matches.c.id == match_id)).first()
            if row is None:
                raise UnknownMatch(f"no match {match_id!r}; ask for a new one (POST /api/match)")
            return Match(row.id, row.prompt, tuple(self._items(conn, json.loads(row.item_ids))), row.expires_at)

    def vote(self, match_id: str, ranks: Sequence[int], mode: str = "rank", voter: str | None = None) -> int:
        """Record one vote on an open match in one transaction; returns the vote id.

        UnknownMatch (404), ExpiredMatch (410), AlreadyVoted (409) or ArenaError (400, bad ranks)."""
        if not isinstance(match_id, str) or not match_id:
            raise ArenaError("match_id must be a non-empty string")
        try:
            with self.engine.begin() as conn:
                row = conn.execute(select(matches).where(matches.c.id == match_id)).first()
                if row is None:
                    raise UnknownMatch(f"no match {match_id!r}; ask for a new one (POST /api/match)")
                k = len(json.loads(row.item_ids))
                if not isinstance(ranks, (list, tuple)) or len(ranks) != k:
                    raise ArenaError(f"match {match_id} shows {k} items; send one rank per item, got {ranks!r}")
                try:
                    ranks = check_vote(ranks, mode, where=f"match {match_id}")
                except InputError as e:
                    raise ArenaError(str(e)) from None
                if time.time() > row.expires_at:
                    raise ExpiredMatch(f"match {match_id} expired; ask for a new one")
                if conn.execute(select(votes.c.id).where(votes.c.match_id == match_id)).first() is not None:
                    raise AlreadyVoted(f"match {match_id} already has a vote; each match takes one")
                return int(conn.execute(insert(votes).values(match_id=match_id, ranks=json.dumps(ranks), mode=mode,
                                                             voter=voter, created_at=time.time())).inserted_primary_key[0])
        except IntegrityError:  # a concurrent vote on the same match won the race
            raise AlreadyVoted(f"match {match_id} already has a vote; each match takes one") from None

    def votes(self, after_id: int = 0) -> list[Vote]:
        """Votes with id > ``after_id``, in id order, with their items."""
        q = select(votes.c.id, votes.c.match_id, votes.c.ranks, votes.c.mode, votes.c.created_at, matches.c.prompt,
                   matches.c.item_ids).join(matches).where(votes.c.id > after_id).order_by(votes.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            ids = sorted({i for r in rows for i in json.loads(r.item_ids)})
            by_id = {it.id: it for it in self._items(conn, ids)} if ids else {}
        return [Vote(r.id, r.match_id, r.prompt, tuple(by_id[i] for i in json.loads(r.item_ids)), tuple(json.loads(r.ranks)),
                     r.mode, r.created_at) for r in rows]

    def count_votes(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(votes)).scalar())


def _read_sample_manifest(folder: Path) -> list[tuple[Path, str]]:
    """(media file, prompt) rows of a ``mmalign sample`` folder's ``manifest.jsonl`` (:func:`read_media_manifest`)."""
    path = folder / "manifest.jsonl"
    if not path.is_file():
        raise ArenaError(f"{folder}: no manifest.jsonl; make the folder with `mmalign sample --out {folder}`")
    rows = [(folder / name, prompt) for name, prompt in read_media_manifest(path).items()]
    missing = [str(f) for f, _ in rows if not f.is_file()]
    if missing:
        raise ArenaError(f"{path}: {len(missing)} listed files do not exist, e.g. {missing[0]}")
    if not rows:
        raise ArenaError(f"{path}: no items")
    return rows


__all__ = ["Store", "Item", "Match", "Vote", "ArenaError", "UnknownMatch", "ExpiredMatch", "AlreadyVoted", "database_url"]
