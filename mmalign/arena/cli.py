"""``mmalign arena serve | leaderboard | export | agreement | simulate`` — people rank K samples at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mmalign.errors import InputError

console = Console()
arena_app = typer.Typer(help="Arena: people rank K samples at once in a web page; K-wise Bayesian ratings; votes become training data.")

DB_HELP = "SQLite file (default arena.db) or postgresql://USER@HOST/DB"


def _require_arena_extra() -> None:
    """An InputError that says how to install the web and database packages when they are missing."""
    import importlib.util

    missing = [m for m in ("flask", "sqlalchemy") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"the arena needs {', '.join(missing)}: pip install 'mmalign[arena]'")


def _named(specs: list[str] | None, option: str, what: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` options as pairs."""
    out = []
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{option} {spec!r}: write NAME={what}")
        out.append((name, value))
    return out


@arena_app.command("serve")
def serve_cmd(
    db: str = typer.Option("arena.db", "--db", help=DB_HELP),
    model: Optional[list[str]] = typer.Option(None, "--model", help="NAME=FOLDER: a `mmalign sample` folder shown as model NAME (repeatable)"),
    generator: Optional[list[str]] = typer.Option(None, "--generator", help="NAME=GENERATOR: a preset, folder or hub id that "
                                                  "samples on demand for each match's prompt (repeatable)"),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Prompts for the generators: a file (one per line) or a "
                                          "shipped prompt set; the folders' prompts are used too"),
    media_dir: Path = typer.Option(Path("arena-media"), "--media-dir", help="Where on-demand samples are saved"),
    k: int = typer.Option(4, "--k", help="Items per match"),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (127.0.0.1: this machine only)"),
    port: int = typer.Option(8000, "--port"),
    token: Optional[str] = typer.Option(None, "--token", help="Admin token (default: $MMALIGN_ARENA_TOKEN, else a random one, printed)"),
    ttl: float = typer.Option(3600.0, "--ttl", help="Seconds a match stays open for its vote"),
    alpha: float = typer.Option(1.0, "--alpha", help="UCB exploration weight of matchmaking"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of prompt choice, matchmaking ties and shuffling"),
) -> None:
    """Serve the voting page and API (admin actions need the token)."""
    _require_arena_extra()
    from mmalign.arena.app import serve
    from mmalign.arena.service import Arena
    from mmalign.arena.store import Store
    from mmalign.data.prompts import read_prompts
    from mmalign.generators import load_generator

    folders, generators = _named(model, "--model", "FOLDER"), _named(generator, "--generator", "PRESET|FOLDER|HUB_ID")
    prompt_list = read_prompts(prompts) if prompts else []
    if generators and not prompt_list and not folders:
        raise InputError("--generator needs prompts: pass --prompts FILE (or a shipped prompt set) or --model folders")
    store = Store(db)
    for name, folder in folders:
        console.print(f"model {name}: {store.add_model(name, folder)} new item(s) from {folder}")
    arena = Arena(store, k=k, alpha=alpha, ttl=ttl, seed=seed, prompts=prompt_list, media_dir=media_dir)
    for name, spec in generators:
        arena.add_generator(name, load_generator(spec))
    serve(arena, host, port, token or os.environ.get("MMALIGN_ARENA_TOKEN"))


@arena_app.command("leaderboard")
def leaderboard_cmd(
    db: str = typer.Option("arena.db", "--db", help=DB_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the rows as JSON here"),
) -> None:
    """Models by conservative score μ − 3σ, with μ, σ, votes, Elo and Bradley–Terry."""
    _require_arena_extra()
    from mmalign.arena.service import Arena
    from mmalign.arena.store import Store

    store = Store(db)
    rows = Arena(store).leaderboard()
    table = Table(title=f"arena leaderboard ({store.count_votes()} votes)")
    for col in ("#", "model", "μ − 3σ", "μ", "σ", "votes", "Elo", "BT"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(str(r["rank"]), r["model"], f"{r['score']:.2f}", f"{r['mu']:.2f}", f"{r['sigma']:.2f}", str(r["votes"]),
                      f"{r['elo']:.0f}", f"{r['bt']:.2f}")
    console.print(table)
    if out:
        from mmalign.fileio import atomic_write_json

        atomic_write_json(out, {"rows": rows})


@arena_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for pairs.jsonl or rankings.jsonl and meta.json"),
    db: str = typer.Option("arena.db", "--db", help=DB_HELP),
    format: str = typer.Option("pairs", "--format", help="pairs (mmalign train / train-scorer) | rankings (RankDPO)"),
    ties: str = typer.Option("keep", "--ties", help="keep tied pairs with label 0.5 | drop them"),
    k: Optional[int] = typer.Option(None, "--k", help="Only votes on matches of k items (rankings need one k per file)"),
) -> None:
    """Write the votes as preference data that `mmalign train` and `mmalign train-scorer` read unchanged."""
    _require_arena_extra()
    from mmalign.arena.export import write_export
    from mmalign.arena.store import Store

    path = write_export(Store(db).votes(), out, format, ties, k)
    console.print(f"wrote {path}")


@arena_app.command("agreement")
def agreement_cmd(
    scorers: str = typer.Option(..., "--scorers", help="Scorer names, comma-separated (load_scorer): hpsv2,pickscore,..."),
    db: str = typer.Option("arena.db", "--db", help=DB_HELP),
    resamples: int = typer.Option(2000, "--resamples", help="Bootstrap resamples for the 95% CI"),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the result as JSON here"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars"),
) -> None:
    """How often each scorer agrees with the people's votes (pooled over compared pairs, bootstrap CI over votes)."""
    _require_arena_extra()
    from mmalign.arena.agreement import agreement
    from mmalign.arena.store import Store
    from mmalign.scoring import load_scorer

    names = [s.strip() for s in scorers.split(",") if s.strip()]
    if not names:
        raise InputError("--scorers: give at least one scorer name")
    votes = Store(db).votes()
    res = agreement(votes, {n: load_scorer(n) for n in names}, n_resamples=resamples, seed=seed, progress=not quiet)
    table = Table(title=f"agreement with {len(votes)} votes")
    for col in ("scorer", "agreement", "95% CI", "pairs", "votes"):
        table.add_column(col, justify="left" if col == "scorer" else "right")
    for n, r in sorted(res.items(), key=lambda kv: -kv[1]["agreement"]):
        table.add_row(n, f"{100 * r['agreement']:.1f}%", f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f}%", str(r["pairs"]),
                      str(r["votes"]))
    console.print(table)
    if out:
        from mmalign.fileio import atomic_write_json

        atomic_write_json(out, res)


def synth_voters():
    """The synthetic world's annotators as simulation voters: their utility noise, tie margin and utility range
    (faithfulness + w_q·quality, :class:`mmalign.synth.annotators.Annotator`)."""
    from mmalign.arena.simulate import Voters
    from mmalign.synth.annotators import Annotator

    a = Annotator()
    return Voters(noise=a.noise, tie_margin=a.tie_margin, skill_range=a.w_faithfulness + a.w_quality)


@arena_app.command("simulate")
def simulate_cmd(
    models: int = typer.Option(50, "--models", help="Models with known true skills"),
    k: int = typer.Option(4, "--k", help="Items per K-wise vote"),
    seeds: int = typer.Option(5, "--seeds", help="Independent runs per method"),
    budget: int = typer.Option(3000, "--budget", help="K-wise votes per run"),
    pair_budget: int = typer.Option(10000, "--pair-budget", help="Pairwise votes per Elo / BT run"),
    eval_every: int = typer.Option(10, "--eval-every", help="Votes between Spearman checks"),
    threshold: float = typer.Option(0.95, "--threshold", help="Spearman with the true order that counts as converged"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/arena-simulate"), "--out", help="Folder for simulation.json, curves.json, convergence.png"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar"),
) -> None:
    """Votes needed to reach the true order: K-wise Bayesian vs pairwise Elo vs Bradley–Terry (synthetic annotators)."""
    from mmalign.arena.simulate import SimConfig, simulate

    cfg = SimConfig(voters=synth_voters(), models=models, k=k, seeds=seeds, budget=budget, pair_budget=pair_budget, eval_every=eval_every,
                    threshold=threshold, seed=seed)
    res = simulate(cfg, out, progress=not quiet)
    table = Table(title=f"votes to Spearman ≥ {threshold} and staying there ({models} models, {seeds} seeds)")
    for col in ("method", "votes (mean)", "95% CI", "not converged", "final Spearman"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for m, r in res["methods"].items():
        c = r["votes_to_converge"]
        ci = "—" if c["mean"] is None else f"{c['ci_low']:.0f}–{c['ci_high']:.0f}"
        table.add_row(m, "—" if c["mean"] is None else f"{c['mean']:.0f}", ci, str(c["not_converged"]), f"{r['final_spearman']:.3f}")
    console.print(table)
    ratio = res["ratios"]["elo/kwise-bayes votes_to_converge"]
    if ratio:
        console.print(f"Elo / K-wise Bayes: {ratio['ratio']:.2f}× fewer votes (95% CI {ratio['ci_low']:.2f}–{ratio['ci_high']:.2f}; "
                      "K-Sort Arena reports 16.3×)")
    console.print(f"wrote {out / 'simulation.json'} and {out / 'convergence.png'}")


def register(app: typer.Typer) -> None:
    app.add_typer(arena_app, name="arena")
