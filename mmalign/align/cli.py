"""``mmalign train RECIPE.yaml [--set key=value ...] [--resume]``, ``mmalign merge LORA... --method M --out DIR``
and ``mmalign selma RECIPE.yaml [--set key=value ...]``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mmalign.devices import DTYPE_HELP, check_dtype_option


def register(app: typer.Typer) -> None:
    """Add ``train``, ``merge`` and ``selma`` to the main app."""

    @app.command("train")
    def train_cmd(
        recipe: str = typer.Argument(..., help="Recipe YAML file or shipped recipe name (e.g. synth-diffusion-dpo)"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe key: --set lr=1e-6 --set data.ties=keep"),
        resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output_dir"),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="Sets the recipe's mixed_precision (fp32 = no): " + DTYPE_HELP),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars"),
    ) -> None:
        """Fine-tune a generator on preference data (Diffusion-DPO, RankDPO, LiPO-λ, SFT)."""
        from mmalign.align.trainer import train

        precision = [] if dtype is None else [f"mixed_precision={'no' if check_dtype_option(dtype) == 'fp32' else dtype}"]
        overrides = precision + list(set_ or []) + (["progress=false"] if quiet else [])
        res = train(recipe, overrides=overrides, resume=resume)
        typer.echo(f"{res.steps} steps ({res.stopped}, {res.precision}); weights in {res.final_dir}; "
                   f"metrics in {res.output_dir / 'metrics.jsonl'}")

    app.command("merge")(merge_command)

    @app.command("selma")
    def selma_cmd(
        recipe: str = typer.Argument(..., help="SELMA recipe YAML file or shipped name (e.g. synth-selma, sdxl-selma)"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a key: --set samples.prompts=32 --set train.max_steps=50"),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars"),
    ) -> None:
        """SELMA skill experts end to end: skill data from the base model kept by a judge, one SFT LoRA per skill,
        a joint LoRA, every merge, and a held-out table (results.json, table.md, selma.png). Rerun to resume."""
        from mmalign.align.selma import run_selma

        run_selma(recipe, overrides=list(set_ or []), quiet=quiet)


def merge_command(
    loras: List[str] = typer.Argument(..., metavar="LORA...",
                                      help="LoRA folders, .safetensors files or hub ids (same base model, any ranks)"),
    method: str = typer.Option("linear", "--method", help="linear (exact weighted sum of ΔW, rank Σr) | svd (linear truncated "
                               "to --rank) | ties (Yadav et al. 2023) | dare_linear | dare_ties (Yu et al. 2024)"),
    weights: Optional[str] = typer.Option(None, "--weights", help="one weight per LoRA, comma-separated, e.g. 0.7,0.5 "
                                          "(default 1 each, as diffusers' set_adapters)"),
    density: float = typer.Option(0.5, "--density", help="ties: fraction of each ΔW's entries kept by magnitude; "
                                  "dare: probability of keeping an entry; in (0, 1]"),
    rank: Optional[int] = typer.Option(None, "--rank", help="rank of the merged LoRA (required for svd, ties, dare_*; "
                                       "linear keeps the summed rank)"),
    seed: int = typer.Option(0, "--seed", help="seed of DARE's drop masks"),
    out: Path = typer.Option(..., "--out", help="output folder: pytorch_lora_weights.safetensors + mmalign_lora.json"),
    device: str = typer.Option("auto", "--device", help="where ΔW and the SVDs are computed"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Merge LoRA experts into one LoRA in diffusers' format (pipe.load_lora_weights(OUT) loads it).

    linear equals diffusers' multi-adapter inference (load each LoRA, set_adapters with the same weights)."""
    from mmalign.align.merge import merge, parse_weights

    parsed = None if weights is None else parse_weights(weights)
    folder = merge(loras, method=method, weights=parsed, density=density, rank=rank, seed=seed, out=out, device=device,
                   progress=not quiet)
    typer.echo(f"merged {len(loras)} LoRAs ({method}) into {folder}")
