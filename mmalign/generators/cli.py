"""``mmalign sample``: draw samples from a generator into a folder with a ``manifest.jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmalign.data.prompts import read_prompts
from mmalign.devices import DTYPE_HELP, check_dtype_option, dtype_name
from mmalign.errors import InputError
from mmalign.fileio import atomic_write, atomic_write_jsonl
from mmalign.generators.attention import BACKENDS
from mmalign.generators.lora import LORA_HELP, parse_lora_args
from mmalign.media import ImageBatch, Media, VideoBatch, image_grid, save_media, video_contact_sheet


def _read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """``--prompts`` texts, then those of ``--prompts-file`` (a file or a shipped prompt set)."""
    out = [p.strip() for p in prompts or [] if p.strip()]
    if prompts_file is not None:
        out += read_prompts(prompts_file)
    if not out:
        raise InputError("no prompts: pass --prompts TEXT (repeatable) or --prompts-file FILE (one per line, or a "
                         "shipped prompt set such as synth-image-heldout)")
    return out


def write_grid(media: Media, path: Path, columns: int) -> bool:
    """Contact sheet: an image grid (``columns`` per row) or every frame of each video in a row."""
    if isinstance(media, ImageBatch):
        sheet = image_grid(media, nrow=columns)
    elif isinstance(media, VideoBatch):
        sheet = video_contact_sheet(media, frames=media.pixels.shape[1])
    else:
        return False
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return True


def sample_command(
    generator: str = typer.Option(..., "--generator", help="preset (synth-sdxl, synth-video, synth-audio), folder or hub id"),
    lora: Optional[list[str]] = typer.Option(None, "--lora", help=LORA_HELP),
    prompts: Optional[list[str]] = typer.Option(None, "--prompts", help="a prompt (repeatable)"),
    prompts_file: Optional[str] = typer.Option(None, "--prompts-file", help="text file (UTF-8, one prompt per line) or a shipped prompt set (synth-image-heldout, ...)"),
    n: int = typer.Option(4, "--n", help="samples per prompt"),
    seed: int = typer.Option(0, "--seed"),
    steps: Optional[int] = typer.Option(None, "--steps", help="denoising steps (default: the model's; diffusion models)"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="audio tokens to generate (autoregressive models such as MusicGen; default: the model's)"),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="classifier-free guidance scale"),
    batch_size: int = typer.Option(8, "--batch-size"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    grid: bool = typer.Option(False, "--grid", help="also write grid.png (images) / a frames contact sheet (video)"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    attention: str = typer.Option("sdpa", "--attention", help=" | ".join(BACKENDS)),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Sample N media per prompt with a fixed seed; writes media files and manifest.jsonl to OUT."""
    from mmalign.generators import load_generator

    if n < 1 or batch_size < 1:
        raise InputError(f"--n {n} --batch-size {batch_size}: both must be at least 1")
    loras = parse_lora_args(lora)
    texts = _read_prompts(prompts, prompts_file)
    gen = load_generator(generator, device=device, dtype=check_dtype_option(dtype), attention=attention, lora=loras)
    length = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    media = gen.sample(texts, n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size, progress=not quiet,
                       **length)
    paths = save_media(media, out, names=[f"{i:05d}" for i in range(len(media))])
    rows, precision = [], dtype_name(gen.dtype)
    for i, path in enumerate(paths):
        meta = media.metadata[i] if media.metadata else {}
        rows.append({"file": Path(path).name, "prompt": media.prompts[i], "seed": seed, "item_seed": meta.get("seed"),
                     "index": meta.get("index", i), "prompt_index": meta.get("prompt_index"), "dtype": precision})
    atomic_write_jsonl(out / "manifest.jsonl", rows)
    if grid and not write_grid(media, out / "grid.png", columns=n):
        typer.echo("--grid: no contact sheet for audio", err=True)
    typer.echo(f"wrote {len(media)} {media.modality} samples ({precision}) to {out}")


def register(app: typer.Typer) -> None:
    app.command("sample")(sample_command)
