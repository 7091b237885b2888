"""``mmalign pairs``: sample k per prompt, score with one or more scorers, write pairs and rankings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmalign.devices import DTYPE_HELP, check_dtype_option, process_state
from mmalign.generators.lora import LORA_HELP


def register(app: typer.Typer) -> None:
    """Add ``pairs`` to the main app."""

    @app.command("pairs")
    def pairs(
        generator: str = typer.Option(..., "--generator", help="Generator preset, folder or hub id (load_generator)"),
        lora: Optional[list[str]] = typer.Option(None, "--lora", help=LORA_HELP),
        scorer: str = typer.Option(..., "--scorer", help="Scorer name(s), comma-separated: S[,S2,...] (load_scorer)"),
        prompts: Optional[str] = typer.Option(
            None, "--prompts", help="Prompt file (UTF-8, one per line) or the name of a shipped prompt set "
            "(synth-{image,video,audio}-{train,heldout}); default: synth-MODALITY-train for the generator's modality"),
        out: Path = typer.Option(..., "--out", help="Output folder (media/, pairs.jsonl, rankings.jsonl, meta.json)"),
        k: int = typer.Option(4, "--k", help="Samples per prompt"),
        n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="Draw N prompts with replacement (seeded by --seed); default: every prompt once"),
        seed: int = typer.Option(0, "--seed", help="Sampling seed (and the seed of the --n-prompts draw)"),
        mode: str = typer.Option("best-worst", "--mode", help="Pairs: best-worst | unifiedreward (pair ranking + point sifting)"),
        steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the generator's)"),
        batch_size: int = typer.Option(8, "--batch-size", help="Sampling batch size"),
        dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars"),
    ) -> None:
        """Build preference data (pairs and Syn-Pic k-wise rankings) from a generator and scorers.

        Under ``accelerate launch`` each process samples and scores a share of the prompts; the files equal one process's."""
        from mmalign.data.build import build_preferences
        from mmalign.data.prompts import read_prompts
        from mmalign.generators import load_generator
        from mmalign.generators.lora import parse_lora_args
        from mmalign.scoring import load_scorer

        loras = parse_lora_args(lora)
        prompt_list = read_prompts(prompts, n_prompts, seed) if prompts else None  # a bad file fails before loading
        state = process_state()  # under accelerate launch: each process samples a share of the prompts
        device = str(state.device) if state.num_processes > 1 else "auto"
        gen = load_generator(generator, lora=loras, device=device, dtype=check_dtype_option(dtype))
        if prompt_list is None:
            prompt_list = read_prompts(f"synth-{gen.modality}-train", n_prompts, seed)
        scorers = [load_scorer(s.strip(), device=device, dtype=dtype) for s in scorer.split(",") if s.strip()]
        res = build_preferences(gen, scorers, prompt_list, out, k=k, seed=seed, mode=mode, batch_size=batch_size,
                                progress=not quiet, sample_kwargs={} if steps is None else {"steps": steps})
        if state.is_main_process:
            typer.echo(f"{res.n_prompts} prompts × {k} samples → {res.n_pairs} pairs ({res.n_ties} ties) in {res.pairs}; "
                       f"rankings in {res.rankings}")
