"""``mmalign train RECIPE.yaml [--set key=value ...] [--resume]``."""

from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``train`` to the main app."""

    @app.command("train")
    def train_cmd(
        recipe: str = typer.Argument(..., help="Recipe YAML file or shipped recipe name (e.g. synth-diffusion-dpo)"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe key: --set lr=1e-6 --set data.ties=keep"),
        resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output_dir"),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars"),
    ) -> None:
        """Fine-tune a generator on preference data (Diffusion-DPO, RankDPO, LiPO-λ, SFT)."""
        from mmalign.align.trainer import train

        overrides = list(set_ or []) + (["progress=false"] if quiet else [])
        res = train(recipe, overrides=overrides, resume=resume)
        typer.echo(f"{res.steps} steps ({res.stopped}); weights in {res.final_dir}; metrics in {res.output_dir / 'metrics.jsonl'}")
