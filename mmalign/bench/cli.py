"""``mmalign bench``: evaluate a folder of videos/images (or a generator's samples) on a suite;
``mmalign bench leaderboard RESULTS...``: compare several runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import typer

from mmalign.errors import ConfigError, InputError
from mmalign.generators.lora import LORA_HELP

_DEFAULT_OUT = Path("bench_out")
_DEFAULT_LEADERBOARD = Path("leaderboard")


def sample_suite(generator: str, suite, folder: Path, *, seed: int = 0, n: int | None = None,
                 device: str = "auto", progress: bool = True, lora: Sequence[Any] = ()) -> Path:
    """Sample ``n`` (the suite's samples_per_prompt) items per prompt and save them in the suite's naming.

    ``generator`` is any :func:`mmalign.generators.load_generator` id, preset or folder; ``lora`` its LoRAs.
    """
    from mmalign.generators import load_generator
    from mmalign.media import save_media

    n = n or suite.samples_per_prompt
    prompts = suite.prompts()
    gen = load_generator(generator, device=device, lora=list(lora))
    if gen.modality != suite.modality:
        raise ConfigError(f"generator {generator!r} makes {gen.modality}, suite {suite.name!r} needs {suite.modality}")
    for i in range(n):  # one call per sample index: file i of every prompt comes from seed + i
        media = gen.sample(prompts, n=1, seed=seed + i, progress=progress)
        names = [suite.naming.format(prompt=p, index=i) for p in prompts]
        save_media(media, folder, names)
    return folder


def _bench(
    ctx: typer.Context,
    suite: str = typer.Option("synth-video", help="vbench-standard | synth-video | synth-image, or a suite.yaml path."),
    videos: Path | None = typer.Option(None, help="Folder of sampled files named '{prompt}-{i}.mp4' (.png for images)."),
    generator: str | None = typer.Option(None, help="Sample the suite with this generator first (e.g. synth-video)."),
    lora: list[str] | None = typer.Option(None, "--lora", help=f"With --generator: {LORA_HELP}."),
    out: Path = typer.Option(_DEFAULT_OUT, help="Output folder (records, feature cache, results, report)."),
    dimensions: str | None = typer.Option(None, help="Comma-separated dimensions (default: the suite's)."),
    weights: Path | None = typer.Option(None, help="Weights folder in VBench's cache layout (default ~/.cache/vbench)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, help="Sampling seed (with --generator)."),
    samples: int | None = typer.Option(None, help="Samples per prompt with --generator (default: the suite's)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first unreadable file instead of skipping it."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the per-video feature cache."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Benchmark a folder of videos (or a generator) on a suite: results JSON, radar PNG, HTML report."""
    if ctx.invoked_subcommand is not None:
        return
    from mmalign.bench.report import write_report
    from mmalign.bench.runner import run_benchmark
    from mmalign.bench.suites import load_suite
    from mmalign.generators.lora import parse_lora_args

    loras = parse_lora_args(lora)
    s = load_suite(suite)
    if (videos is None) == (generator is None):
        raise InputError("give exactly one of --videos DIR (already sampled) or --generator G (sample first)")
    if loras and generator is None:
        raise InputError("--lora attaches to a --generator; with --videos the media are already sampled")
    if generator is not None:
        videos = sample_suite(generator, s, out / "samples", seed=seed, n=samples, device=device, progress=not quiet,
                              lora=loras)
    dims = [d.strip() for d in dimensions.split(",") if d.strip()] if dimensions else None
    run = run_benchmark(s, videos, out, dims, weights_dir=weights, device=device, strict=strict,
                        cache=not no_cache, progress=not quiet)
    if not run.is_main:  # accelerate launch: the main process writes the report
        return
    paths = write_report(run)
    res = __import__("json").loads(paths["results"].read_text())
    for d, e in res["dimensions"].items():
        val = "–" if e["raw"] is None else f"{e['raw']:.4f}"
        extra = e.get("reason") or e.get("note") or ""
        typer.echo(f"{d:24s} {val:>8s}  {extra}")
    typer.echo("scores: " + ", ".join(f"{k}={v:.4f}" for k, v in res["scores"].items() if v is not None))
    if res["skipped"]:
        typer.secho(f"skipped {len(res['skipped'])} unreadable file(s): " + "; ".join(x["path"] for x in res["skipped"]), fg="yellow")
    typer.echo(f"wrote {paths['results']}, {paths['html']}")


def _leaderboard(
    results: list[Path] = typer.Argument(..., help="results.json files or bench output folders."),
    out: Path = typer.Option(_DEFAULT_LEADERBOARD, help="Output folder."),
    names: str | None = typer.Option(None, help="Comma-separated model names (default: folder names)."),
) -> None:
    """Compare several benchmark results side by side (table + grouped bars + radar)."""
    from mmalign.bench.report import leaderboard

    paths = leaderboard(results, out, names.split(",") if names else None)
    typer.echo(paths["markdown"].read_text())
    typer.echo(f"wrote {paths['html']}")


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                            help="Benchmark video/image generators (VBench-style suites).")
    bench_app.callback(invoke_without_command=True)(_bench)
    bench_app.command("leaderboard")(_leaderboard)
    app.add_typer(bench_app, name="bench")
