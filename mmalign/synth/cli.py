"""``mmalign synth render | check | eval`` — the synthetic world from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mmalign.errors import InputError
from mmalign.generators.lora import LORA_HELP

console = Console()
synth_app = typer.Typer(help="The synthetic world: render media with ground truth, check media with the exact oracle.")

EXTENSIONS = {"image": ".png", "video": ".mp4", "audio": ".wav"}


def accuracy_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """A table of per-skill accuracies: one row per name, one column per skill."""
    skills = sorted({k for r in rows.values() for k in r})
    table = Table(title=title)
    table.add_column("")
    for s in skills:
        table.add_column(s, justify="right")
    for name, r in rows.items():
        table.add_row(name, *[f"{100 * r[s]:.1f}%" if s in r else "—" for s in skills])
    return table


@synth_app.command("render")
def render_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write media and manifest.jsonl into."),
    modality: str = typer.Option("image", help="image | video | audio"),
    n: int = typer.Option(16, help="Number of items."),
    seed: int = typer.Option(0, help="Seed for prompts and rendering."),
    split: str = typer.Option("train", help="train | heldout | all"),
) -> None:
    """Render N prompts of the grammar with exact ground truth (media + manifest.jsonl)."""
    from mmalign.media import save_media
    from mmalign.synth.prompts import sample_prompts
    from mmalign.synth.render import render

    prompts = sample_prompts(modality, n, seed=seed, split=None if split == "all" else split)
    media = render(prompts, seed=seed, modality=modality)
    names = [f"{i:05d}{EXTENSIONS[modality]}" for i in range(n)]
    save_media(media, out, names=names)
    rows = [{"file": f, "prompt": p, "truth": t} for f, p, t in zip(names, prompts, media.metadata)]
    from mmalign.fileio import atomic_write_jsonl

    atomic_write_jsonl(Path(out) / "manifest.jsonl", rows)
    console.print(f"wrote {n} {modality} items and manifest.jsonl to {out}")


def read_manifest(folder: Path) -> list[dict]:
    path = Path(folder) / "manifest.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: no manifest.jsonl; the folder needs one line {{'file', 'prompt'}} per item")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"file": row["file"], "prompt": row["prompt"]})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path}:{i}: bad manifest line ({e}); expected {{'file': ..., 'prompt': ...}}") from e
    return rows


@synth_app.command("check")
def check_cmd(
    folder: Path = typer.Argument(..., help="Folder with media and manifest.jsonl (as written by render or sample)."),
    on_error: str = typer.Option("skip", help="skip | raise: what to do with unreadable files"),
) -> None:
    """Run the oracle on a folder and print per-skill accuracy."""
    from mmalign.media import load_media
    from mmalign.synth.oracle import evaluate

    rows = read_manifest(folder)
    by_modality: dict[str, tuple[list, list]] = {}
    skipped = []
    for row in rows:
        try:
            m = load_media(Path(folder) / row["file"])
        except InputError as e:
            if on_error == "raise":
                raise
            skipped.append(str(e))
            continue
        items, prompts = by_modality.setdefault(m.modality, ([], []))
        items.append(m)
        prompts.append(row["prompt"])
    results = {}
    for modality, (items, prompts) in by_modality.items():
        media = type(items[0]).cat(items)
        r = evaluate(media, prompts)
        results[f"{modality} ({len(prompts)})"] = {**r.per_skill_accuracy(), "faithfulness": float(r.faithfulness.mean())}
    console.print(accuracy_table(f"oracle on {folder}", results))
    for s in skipped:
        console.print(f"[yellow]skipped[/]: {s}")


@synth_app.command("eval")
def eval_cmd(
    generator: str = typer.Option(..., "--generator", help="Generator preset or folder, e.g. synth-sdxl."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", help=LORA_HELP),
    n: int = typer.Option(200, help="Number of prompts."),
    seed: int = typer.Option(0, help="Seed for prompts and sampling."),
    split: str = typer.Option("heldout", help="Prompt split: heldout (never trained on) or train (seen prompts, new seeds)."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: the generator's)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale."),
    out: Optional[Path] = typer.Option(None, help="Write the JSON result here."),
) -> None:
    """Oracle per-skill accuracy of a generator on a fixed held-out (or train-split) prompt set."""
    from mmalign.generators.lora import parse_lora_args
    from mmalign.synth.evaluate import evaluate_generator

    loras = parse_lora_args(lora)
    result = evaluate_generator(generator, n=n, seed=seed, steps=steps, guidance=guidance, split=split, lora=loras)
    console.print(accuracy_table(f"{generator}: oracle on {n} {split} prompts (seed {seed})", {generator: result["accuracy"]}))
    console.print(f"faithfulness {result['faithfulness']:.3f}  quality {result['quality']:.3f}")
    if out:
        from mmalign.fileio import atomic_write_json

        atomic_write_json(out, result)


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth")
