"""``mmalign score`` and ``mmalign train-scorer``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from mmalign.data.prompts import read_prompts
from mmalign.devices import DTYPE_HELP, check_dtype_option, dtype_name
from mmalign.errors import ConfigError, InputError
from mmalign.fileio import atomic_write_jsonl
from mmalign.media import read_media_manifest

def prompts_for(files: list[Path], every: list[Path], media_dir: Path, prompts_file: Path | None) -> list[str]:
    """One prompt per loaded file: from ``--prompts-file`` (.txt: one line per media file in sorted
    order, skipped files included; .jsonl: a manifest) or ``DIR/manifest.jsonl``."""
    if prompts_file is None:
        manifest = media_dir / "manifest.jsonl"
        if not manifest.exists():
            raise InputError(f"{media_dir}: no prompts; pass --prompts-file or put a manifest.jsonl "
                             '({"file": "x.png", "prompt": "..."} per line) in the folder')
        prompts_file = manifest
    if not prompts_file.exists():
        raise InputError(f"{prompts_file}: no such prompts file")
    if prompts_file.suffix == ".jsonl":
        table = read_media_manifest(prompts_file)
        missing = [f.name for f in files if f.name not in table]
        if missing:
            raise InputError(f"{prompts_file}: no prompt for {missing[:5]}{' …' if len(missing) > 5 else ''}")
        return [table[f.name] for f in files]
    lines = read_prompts(prompts_file)
    if len(lines) != len(every):
        raise InputError(f"{prompts_file}: {len(lines)} prompts for {len(every)} media files in {media_dir}; give one line per file (sorted by name)")
    table = dict(zip(sorted(every), lines))
    return [table[f] for f in files]


def _summary(rows: list[dict]) -> str:
    scores = [r["score"] for r in rows if not math.isnan(r["score"])]
    n = len(scores)
    mean = sum(scores) / n if n else math.nan
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / n) if n else math.nan
    lines = [f"{len(rows)} items, mean {mean:.4f}, std {std:.4f}" + (f", {len(rows) - n} NaN" if n < len(rows) else "")]
    per: dict[str, list[float]] = {}
    for r in rows:
        per.setdefault(r["prompt"], []).append(r["score"])
    for p, v in sorted(per.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        lines.append(f"  {sum(v) / len(v):9.4f}  (n={len(v)})  {p}")
    return "\n".join(lines)



def score_folder(scorer_name: str, media_dir: Path, prompts_file: Path | None = None, *, on_error: str = "raise",
                 batch_size: int = 32, device: str = "auto", progress: bool = True,
                 dtype: str | None = None) -> tuple[list[dict], object]:
    """Load a folder (``mmalign.media.load_folder``, items kept at their own sizes: each scorer resizes
    every item itself), score every file → rows ``{file, prompt, score, scorer, dtype}`` (``dtype``: the
    scorer's compute precision, see :mod:`mmalign.devices`). Under ``accelerate launch``
    (or ``torchrun``) each process scores a contiguous share of the files and the scores are gathered in
    input order."""
    from mmalign.media import load_folder
    from mmalign.scoring import load_scorer

    from accelerate.utils import gather_object

    from mmalign.devices import process_state

    state = process_state(device)  # under accelerate launch / torchrun: this process's share
    scorer = load_scorer(scorer_name, device=str(state.device) if state.num_processes > 1 else device, dtype=dtype)
    modality = scorer.modalities[0] if len(scorer.modalities) == 1 else None
    media, report = load_folder(media_dir, modality, on_error=on_error, progress=progress and state.is_main_process,
                                ragged=True)
    files = list(report.loaded)
    every = sorted(files + [p for p, _ in report.skipped])
    prompts = prompts_for(files, every, media_dir, prompts_file)
    with state.split_between_processes(list(range(len(files)))) as mine:  # contiguous, in order
        scores = scorer.score(media[mine], [prompts[i] for i in mine], batch_size=batch_size,
                              progress=progress and state.is_main_process).tolist() if mine else []
    if state.num_processes > 1:
        scores = gather_object(scores)  # rank order = input order
    precision = dtype_name(scorer.dtype)
    rows = [{"file": f.name, "prompt": p, "score": float(s), "scorer": scorer.name, "dtype": precision}
            for f, p, s in zip(files, prompts, scores)]
    return rows, report


def register(app: typer.Typer) -> None:
    """Add ``score`` and ``train-scorer`` to the main app."""

    @app.command("score")
    def score_cmd(
        scorer: str = typer.Option(..., "--scorer", help="Scorer card name (mmalign.list_scorers()) or card path."),
        media: Path = typer.Option(..., "--media", help="Folder of images, videos or audio."),
        prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", help=".txt (one line per file, sorted) or .jsonl manifest; default DIR/manifest.jsonl."),
        out: Path = typer.Option(Path("scores.jsonl"), "--out", help="Output JSONL (one row per file)."),
        batch_size: int = typer.Option(32, "--batch-size"),
        device: str = typer.Option("auto", "--device"),
        dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
        on_error: str = typer.Option("raise", "--on-error", help="'raise' or 'skip' unreadable files."),
        quiet: bool = typer.Option(False, "--quiet"),
    ) -> None:
        """Score a folder of media against prompts; write scores.jsonl and print mean, std, per prompt."""
        from mmalign.devices import process_state

        rows, report = score_folder(scorer, media, prompts_file, on_error=on_error, batch_size=batch_size, device=device,
                                    progress=not quiet, dtype=check_dtype_option(dtype))
        if not process_state(device).is_main_process:
            return  # the main process writes the gathered scores
        atomic_write_jsonl(out, rows)
        if report.skipped:
            typer.echo(str(report), err=True)
        typer.echo(f"{scorer} ({rows[0]['dtype'] if rows else dtype}): {_summary(rows)}\nwrote {out}")

    @app.command("train-scorer")
    def train_cmd(
        base: str = typer.Option(..., "--base", help="Card of the open_clip-family scorer to start from (e.g. synth-hps)."),
        data: Path = typer.Option(..., "--data", help="Preference data as `mmalign pairs` writes it: pairs.jsonl {prompt, chosen, rejected, label}, "
                                  "rankings.jsonl {prompt, items, scores} (every ranked pair), its folder, or Pick-a-Pic parquet."),
        out: Path = typer.Option(..., "--out", help="Output folder (weights, config, card.yaml, report)."),
        eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Held-out preference data (same formats)."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help="Resize and centre-crop images to N×N first (optional: images of different sizes are each preprocessed by the scorer)."),
        steps: int = typer.Option(500, "--steps"),
        batch_size: int = typer.Option(32, "--batch-size"),
        lr: float = typer.Option(1e-4, "--lr"),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device"),
        quiet: bool = typer.Option(False, "--quiet"),
    ) -> None:
        """HPS-style training (cross-entropy over a prompt's images, soft labels, ties = 0.5)."""
        from mmalign.scoring import load_scorer
        from mmalign.scoring.train import evaluate_pairs, read_pair_set, save_trained, train_scorer

        pairs = read_pair_set(data, resolution=resolution)
        held = read_pair_set(eval_data, resolution=resolution) if eval_data else None
        scorer = load_scorer(base, device=device, dtype="fp32")  # fp32 master weights (autocast on CUDA)
        if scorer.card is None or scorer.card.architecture.family != "open_clip":
            raise ConfigError(f"train-scorer: {base!r} is not an open_clip-family scorer; start from e.g. synth-hps or hpsv2.1")
        train_scorer(scorer, pairs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=not quiet,
                     log=typer.echo, log_every=max(1, steps // 10))
        report = {"train_pairs": len(pairs), "steps": steps, **(evaluate_pairs(scorer, held) if held else {})}
        save_trained(scorer, out, report)
        typer.echo(json.dumps(report) + f"\nwrote {out} (load it with load_scorer('{out / 'card.yaml'}'))")
