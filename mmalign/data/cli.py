"""``mmalign pairs``: sample k per prompt, score with one or more scorers, write pairs and rankings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``pairs`` to the main app."""

    @app.command("pairs")
    def pairs(
        generator: str = typer.Option(..., "--generator", help="Generator preset, folder or hub id (load_generator)"),
        scorer: str = typer.Option(..., "--scorer", help="Scorer name(s), comma-separated: S[,S2,...] (load_scorer)"),
        prompts: str = typer.Option("synth:train", "--prompts", help="Prompt file (one per line) or synth:train / synth:heldout"),
        out: Path = typer.Option(..., "--out", help="Output folder (media/, pairs.jsonl, rankings.jsonl, meta.json)"),
        k: int = typer.Option(4, "--k", help="Samples per prompt"),
        n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="Use the first N prompts (synth: draw N)"),
        seed: int = typer.Option(0, "--seed", help="Sampling seed (and synth prompt seed)"),
        mode: str = typer.Option("best-worst", "--mode", help="Pairs: best-worst | unifiedreward (pair ranking + point sifting)"),
        steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the generator's)"),
        batch_size: int = typer.Option(8, "--batch-size", help="Sampling batch size"),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars"),
    ) -> None:
        """Build preference data (pairs and Syn-Pic k-wise rankings) from a generator and scorers."""
        from mmalign.data.build import build_preferences, read_prompts
        from mmalign.generators import load_generator
        from mmalign.scoring import load_scorer

        gen = load_generator(generator)
        scorers = [load_scorer(s.strip()) for s in scorer.split(",") if s.strip()]
        prompt_list = read_prompts(prompts, n_prompts, seed, gen.modality)
        res = build_preferences(gen, scorers, prompt_list, out, k=k, seed=seed, mode=mode, batch_size=batch_size,
                                progress=not quiet, sample_kwargs={} if steps is None else {"steps": steps})
        typer.echo(f"{res.n_prompts} prompts × {k} samples → {res.n_pairs} pairs ({res.n_ties} ties) in {res.pairs}; "
                   f"rankings in {res.rankings}")
