"""The arena's store (SQLite and a throwaway PostgreSQL server), its HTTP API under bad input and 32 concurrent
voters, a process killed while voting, export files read by mmalign's own readers, scorer agreement and the CLI.
The page in a real browser: ``test_arena_web.py``."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mmalign.arena.service import Arena
from mmalign.arena.store import AlreadyVoted, ArenaError, ExpiredMatch, Store, UnknownMatch
from mmalign.fileio import atomic_write_jsonl
from mmalign.media import save_media

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
TOKEN = "t" * 24


# -- fixtures ----------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH (e.g. /usr/local/bin), else Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    return cands[-1] if cands else None


def _as_nobody(folder: str):
    """Give ``folder`` to the user nobody; return a subprocess ``preexec_fn`` that becomes nobody."""
    nobody = pwd.getpwnam("nobody")
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)

    def demote() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return demote


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server: initdb into a temporary folder, listening on a unix socket there only."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        msg = "no PostgreSQL server binaries (initdb, pg_ctl); .ci/run installs Debian's postgresql"
        if os.environ.get("MMALIGN_CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    root = tempfile.mkdtemp(prefix="mmpg-")  # short: a socket path has at most 107 characters
    demote = _as_nobody(root) if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root

    def run(*args: str) -> None:
        p = subprocess.run(args, preexec_fn=demote, capture_output=True, text=True, timeout=120, cwd=root)
        assert p.returncode == 0, f"{args[0]} failed:\n{p.stdout}\n{p.stderr}"

    data = os.path.join(root, "data")
    run(initdb, "-D", data, "-U", "arena", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60",
        "-o", f"-k {root} -c listen_addresses='' -c fsync=off", "start")
    try:
        yield root
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], preexec_fn=demote, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _pg_database(socket_dir: str) -> str:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"host={socket_dir} user=arena dbname=postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://arena@/{name}?host={socket_dir}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "arena.db")
    return _pg_database(request.getfixturevalue("postgres"))


@pytest.fixture(scope="module")
def sample_folders(tmp_path_factory):
    return make_sample_folders(tmp_path_factory.mktemp("samples"))


def make_sample_folders(root: Path) -> dict[str, Path]:
    """Four `mmalign sample`-style folders of synthetic images (one per model) for the same prompts."""
    from mmalign.synth.render import render

    folders = {}
    for s in range(4):
        folder = root / f"model{s}"
        paths = save_media(render(PROMPTS, seed=s, modality="image"), folder, [f"{i:05d}" for i in range(len(PROMPTS))])
        atomic_write_jsonl(folder / "manifest.jsonl", [{"file": Path(p).name, "prompt": q} for p, q in zip(paths, PROMPTS)])
        folders[f"model{s}"] = folder
    return folders


def _arena(url: str, folders: dict, k: int = 3, **kw) -> Arena:
    store = Store(url)
    for name, folder in folders.items():
        store.add_model(name, folder)
    return Arena(store, k=k, seed=0, **kw)


class _Server:
    """The real WSGI server (threaded) on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, arena: Arena) -> None:
        from werkzeug.serving import make_server

        from mmalign.arena.app import create_app

        self.httpd = make_server("127.0.0.1", 0, create_app(arena, TOKEN), threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join(10)


@pytest.fixture
def server_factory():
    yield from servers()


def servers():
    """Yields a function that starts a :class:`_Server`; closes them all when resumed."""
    started = []

    def make(arena: Arena) -> _Server:
        started.append(_Server(arena))
        return started[-1]

    yield make
    for s in started:
        s.close()


# -- the store ---------------------------------------------------------------------------------


def test_store_votes_once_and_rejects_bad_votes(db_url, sample_folders):
    arena = _arena(db_url, sample_folders)
    store = arena.store
    assert store.model_names() == list(sample_folders)
    assert store.add_model("model0", sample_folders["model0"]) == 0  # adding a folder again adds nothing new
    m = arena.next_match()
    assert len(m.items) == 3 and len({it.model for it in m.items}) == 3 and {it.prompt for it in m.items} == {m.prompt}
    with pytest.raises(ArenaError, match="one rank per item"):
        store.vote(m.id, [0, 1])
    with pytest.raises(ArenaError, match="tier"):
        store.vote(m.id, [0, 1, 7])
    with pytest.raises(UnknownMatch):
        store.vote("no-such-match", [0, 1, 2])
    vote_id = store.vote(m.id, [2, 0, 1])
    with pytest.raises(AlreadyVoted):
        store.vote(m.id, [0, 1, 2])
    (v,) = store.votes()
    assert (v.id, v.match_id, v.ranks, v.mode, v.prompt) == (vote_id, m.id, (2, 0, 1), "rank", m.prompt)
    assert [it.id for it in v.items] == [it.id for it in m.items]
    expired = Arena(store, k=3, ttl=-1.0, seed=1).next_match()
    with pytest.raises(ExpiredMatch):
        store.vote(expired.id, [0, 1, 2])
    assert store.count_votes() == 1
    board = arena.leaderboard()
    assert sum(r["votes"] for r in board) == 3 and board[0]["model"] == m.items[1].model
    with pytest.raises(ArenaError, match="manifest"):
        store.add_model("empty", sample_folders["model0"].parent)


def test_a_bad_sample_folder_is_refused_before_anything_is_added(tmp_path):
    from mmalign.errors import InputError

    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "manifest.jsonl").write_text('{"file": "gone.png", "prompt": "a red circle"}\n')
    with pytest.raises(ArenaError, match="1 listed files do not exist, e.g. .*gone.png"):
        store.add_model("m", folder)
    (folder / "manifest.jsonl").write_text("")
    with pytest.raises(ArenaError, match="no items"):
        store.add_model("m", folder)
    (folder / "manifest.jsonl").write_text('{"file": "gone.png"}\n')
    with pytest.raises(InputError, match="a manifest row needs a file"):
        store.add_model("m", folder)
    assert store.model_names() == []  # nothing was registered


def test_unreachable_database_is_a_clear_error(tmp_path):
    from mmalign.errors import InputError

    with pytest.raises(InputError, match="cannot open the database"):
        Store(f"postgresql://arena@/nope?host={tmp_path}")  # no server on that socket
    with pytest.raises(InputError, match="cannot open the database"):
        Store(str(tmp_path / "missing-folder" / "a.db"))


def test_ratings_replay_when_an_earlier_vote_commits_late(tmp_path, sample_folders):
    from sqlalchemy import insert

    from mmalign.arena.service import rate
    from mmalign.arena.store import votes as votes_table

    arena = _arena(str(tmp_path / "a.db"), sample_folders)
    m1, m2, m3 = arena.next_match(), arena.next_match(), arena.next_match()

    def commit(vote_id: int, match_id: str, ranks: list[int]) -> None:  # as a concurrent transaction would
        with arena.store.engine.begin() as conn:
            conn.execute(insert(votes_table).values(id=vote_id, match_id=match_id, ranks=json.dumps(ranks), mode="rank",
                                                    created_at=time.time()))

    assert arena.vote(m1.id, [0, 1, 2]) == 1 and arena.ratings().n_votes == 1
    commit(5, m2.id, [2, 1, 0])
    assert arena.ratings().last_id == 5  # applied incrementally
    commit(3, m3.id, [1, 0, 2])  # a smaller id that committed later
    r = arena.ratings()
    assert r.n_votes == 3 and r.bayes.ratings == rate(arena.store.votes()).bayes.ratings


def test_http_api_bad_input_and_admin_token(db_url, sample_folders, server_factory):
    srv = server_factory(_arena(db_url, sample_folders))
    status, m = srv.request("POST", "api/match")
    assert status == 200 and len(m["items"]) == 3
    assert all(set(it) == {"slot", "url", "modality"} for it in m["items"])  # no model names, no paths
    bad = [b"not json", json.dumps([1, 2]).encode(), {"match_id": m["match_id"]}, {"match_id": m["match_id"], "ranks": "0,1,2"},
           {"match_id": m["match_id"], "ranks": [0, 1]}, {"match_id": m["match_id"], "ranks": [0, 1, 2], "mode": "worst"},
           {"match_id": m["match_id"], "ranks": [0, 2, 1], "mode": "best"}, {"match_id": 5, "ranks": [0, 1, 2]},
           {"match_id": m["match_id"], "ranks": [0, 1, 2], "extra": 1}, {"match_id": m["match_id"], "ranks": [0.5, 1, 2]}]
    for body in bad:
        status, res = srv.request("POST", "api/vote", body)
        assert status == 400 and res["error"], (body, status, res)
    assert srv.request("POST", "api/vote", {"match_id": "unknown", "ranks": [0, 1, 2]})[0] == 404
    assert srv.request("POST", "api/vote", {"match_id": m["match_id"], "ranks": [0, 1, 1], "mode": "best"})[0] == 201
    assert srv.request("POST", "api/vote", {"match_id": m["match_id"], "ranks": [0, 1, 1], "mode": "best"})[0] == 409
    assert srv.request("GET", "media/unknown/0")[0] == 404 and srv.request("GET", f"media/{m['match_id']}/9")[0] == 404
    with urllib.request.urlopen(srv.url + m["items"][0]["url"], timeout=30) as r:
        assert r.headers["Content-Type"] == "image/png" and r.read()[:4] == b"\x89PNG"
    # admin actions need the token
    assert srv.request("GET", "api/admin/export")[0] == 401
    assert srv.request("GET", "api/admin/export", headers={"Authorization": "Bearer wrong"})[0] == 401
    status, res = srv.request("GET", "api/admin/export?format=pairs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and len(res["rows"]) == 2  # pick-the-best: the winner against each of the two others
    assert srv.request("POST", "api/admin/models", {"name": "x", "folder": "/nope"})[0] == 401
    status, res = srv.request("POST", "api/admin/models", {"name": "model9", "folder": str(sample_folders["model1"])},
                              headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 201 and res["added"] == 3


def test_serve_listens_on_localhost_by_default():
    import inspect

    from mmalign.arena.app import serve
    from mmalign.arena.cli import serve_cmd

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_cmd).parameters["host"].default.default == "127.0.0.1"


def test_32_concurrent_voters_each_vote_counted_once(db_url, sample_folders, server_factory):
    srv = server_factory(_arena(db_url, sample_folders))
    matches = [srv.request("POST", "api/match")[1] for _ in range(24)]
    jobs = [(m["match_id"], [0, 1, 2]) for m in matches] + [(matches[i]["match_id"], [2, 1, 0]) for i in range(8)]
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def voter(n: int) -> None:
        barrier.wait()
        results[n] = srv.request("POST", "api/vote", {"match_id": jobs[n][0], "ranks": jobs[n][1]})

    threads = [threading.Thread(target=voter, args=(n,)) for n in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = [r[0] for r in results]
    assert codes.count(201) == 24 and codes.count(409) == 8, codes
    votes = Store(db_url).votes()
    assert len(votes) == 24 and sorted(v.match_id for v in votes) == sorted(m["match_id"] for m in matches)
    assert len({r[1]["vote_id"] for r in results if r[0] == 201}) == 24
    _, board = srv.request("GET", "api/leaderboard")
    assert board["votes"] == 24 and sum(r["votes"] for r in board["rows"]) == 24 * 3


_VOTER = """
import sys
from mmalign.arena.store import Store
store = Store(sys.argv[1])
items = [it.id for it in store.prompts()[sys.argv[2]]][:3]
for n in range(100000):
    m = store.create_match(sys.argv[2], items)
    vote_id = store.vote(m.id, [n % 3, (n + 1) % 3, (n + 2) % 3])
    print(vote_id, m.id, flush=True)
"""


def test_killed_voter_loses_no_committed_vote(db_url, sample_folders, tmp_path):
    Store(db_url).add_model("a", sample_folders["model0"])
    Store(db_url).add_model("b", sample_folders["model1"])
    Store(db_url).add_model("c", sample_folders["model2"])
    script = tmp_path / "voter.py"
    script.write_text(_VOTER)
    p = subprocess.Popen([sys.executable, str(script), db_url, PROMPTS[0]], stdout=subprocess.PIPE, text=True)
    committed = []
    for line in p.stdout:
        committed.append(line.split())
        if len(committed) == 40:
            p.send_signal(signal.SIGKILL)  # while it is in the middle of its next vote
            break
    p.wait(30)
    assert p.returncode == -signal.SIGKILL and len(committed) == 40
    store = Store(db_url)
    stored = {v.id: v.match_id for v in store.votes()}
    for vote_id, match_id in committed:
        assert stored.get(int(vote_id)) == match_id
    assert len(stored) >= 40
    if "://" not in db_url:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # the store goes on working
    m = store.create_match(PROMPTS[0], [it.id for it in store.prompts()[PROMPTS[0]]][:3])
    assert store.vote(m.id, [0, 1, 2]) > max(stored)


# -- votes become data ---------------------------------------------------------------------------


def _voted_arena(url: str, folders: dict, n: int = 6) -> Arena:
    arena = _arena(url, folders)
    for i in range(n):
        m = arena.next_match()
        ranks, mode = ([0, 1, 1], "best") if i % 3 == 2 else ([0, 1, 2] if i % 2 else [1, 0, 0], "rank")
        arena.vote(m.id, ranks, mode)
    return arena


def _app(register):
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_export_files_load_with_mmalign_readers(tmp_path, sample_folders):
    from mmalign.arena.cli import register
    from mmalign.data.pairs import PairDataset, RankingDataset, read_preferences
    from mmalign.scoring.train import read_pair_set

    db = str(tmp_path / "a.db")
    arena = _voted_arena(db, sample_folders)
    app = _app(register)
    r = CliRunner().invoke(app, ["arena", "export", "--db", db, "--out", str(tmp_path / "pairs")])
    assert r.exit_code == 0, r.output
    pairs = read_preferences(tmp_path / "pairs", ties="keep")
    votes = arena.store.votes()
    # rank votes: 3 pairs each (one tied pair in [1, 0, 0]); best votes: 2 pairs each
    assert isinstance(pairs, PairDataset) and len(pairs) == 4 * 3 + 2 * 2
    assert sum(p.label == 0.5 for p in pairs) == 2
    first = votes[0]  # ranks [1, 0, 0]: item 1 and item 2 beat item 0
    assert (pairs[0].chosen, pairs[0].rejected, pairs[0].label) == (first.items[1].path, first.items[0].path, 1.0)
    assert len(read_preferences(tmp_path / "pairs", ties="drop")) == 14
    ps = read_pair_set(tmp_path / "pairs" / "pairs.jsonl")
    assert len(ps) == 16 and ps.a.modality == "image"
    r = CliRunner().invoke(app, ["arena", "export", "--db", db, "--out", str(tmp_path / "rk"), "--format", "rankings"])
    assert r.exit_code == 0, r.output
    rk = read_preferences(tmp_path / "rk")
    assert isinstance(rk, RankingDataset) and rk.k == 3 and len(rk) == 4  # pick-the-best votes are not rankings
    assert list(rk[0].scores) == [0.0, 0.5, 0.5] and list(rk[1].scores) == [1.0, 0.5, 0.0]
    assert len(rk.to_pairs("all", ties="keep")) == 12
    r = CliRunner().invoke(app, ["arena", "export", "--db", db, "--out", str(tmp_path / "x"), "--format", "parquet"])
    assert r.exit_code != 0 and "format must be one of" in str(r.exception)


def test_agreement_with_ci_and_leaderboard_cli(tmp_path, sample_folders):
    from mmalign.arena.agreement import agreement, vote_agreement
    from mmalign.arena.cli import register
    from mmalign.scoring import load_scorer

    db = str(tmp_path / "a.db")
    arena = _arena(db, sample_folders)
    hidden = lambda it: it.id % 5  # noqa: E731  (the voter's taste; items 5 apart tie)
    for i in range(9):
        m = arena.next_match()
        arena.vote(m.id, [sum(hidden(o) > hidden(it) for o in m.items) for it in m.items], "rank")
    votes = arena.store.votes()
    # a scorer with the voter's taste agrees on every non-tied pair, its opposite on none
    taste = {it.id: float(hidden(it)) for v in votes for it in v.items}
    rows = vote_agreement(votes, taste)
    assert rows[:, 1].sum() > 0 and rows[:, 0].sum() == rows[:, 1].sum()
    assert vote_agreement(votes, {i: -s for i, s in taste.items()})[:, 0].sum() == 0

    res = agreement(votes, {"synth-oracle": load_scorer("synth-oracle")}, n_resamples=200)
    r = res["synth-oracle"]
    assert 0.0 <= r["ci_low"] <= r["agreement"] <= r["ci_high"] <= 1.0 and r["pairs"] > 0 and r["votes"] <= 9
    app = _app(register)
    out = CliRunner().invoke(app, ["arena", "agreement", "--db", db, "--scorers", "synth-oracle", "--resamples", "100",
                                   "--out", str(tmp_path / "agree.json"), "--quiet"])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "agree.json").read_text())["synth-oracle"]["pairs"] == r["pairs"]
    out = CliRunner().invoke(app, ["arena", "leaderboard", "--db", db, "--out", str(tmp_path / "lb.json")])
    assert out.exit_code == 0, out.output
    rows = json.loads((tmp_path / "lb.json").read_text())["rows"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and rows[0]["score"] >= rows[-1]["score"]
    assert {"mu", "sigma", "score", "votes", "elo", "bt"} <= set(rows[0])


def test_simulate_cli(tmp_path):
    from mmalign.arena.cli import register

    out = CliRunner().invoke(_app(register), ["arena", "simulate", "--models", "6", "--k", "3", "--seeds", "2", "--budget", "60",
                                              "--pair-budget", "200", "--eval-every", "20", "--threshold", "0.8",
                                              "--out", str(tmp_path), "--quiet"])
    assert out.exit_code == 0, out.output
    res = json.loads((tmp_path / "simulation.json").read_text())
    assert res["config"]["models"] == 6 and (tmp_path / "convergence.png").is_file()
