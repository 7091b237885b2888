"""``mmalign bench``: evaluate a folder of videos/images (or a generator's samples) on a suite;
``mmalign bench leaderboard RESULTS...``: compare several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import typer

from mmalign.errors import ConfigError, InputError
from mmalign.generators.lora import LORA_HELP

_DEFAULT_OUT = Path("bench_out")
_DEFAULT_LEADERBOARD = Path("leaderboard")


def sample_suite(generator: str, suite, folder: Path, *, seed: int = 0, n: int | None = None,
                 device: str = "auto", dtype: str | None = None, progress: bool = True, lora: Sequence[Any] = ()) -> Path:
    """Sample ``n`` (the suite's samples_per_prompt) items per prompt and save them in the suite's naming.

    ``generator`` is any :func:`mmalign.generators.load_generator` id, preset or folder; ``lora`` its LoRAs.
    Under ``accelerate launch`` each process samples a contiguous share of the prompts (each prompt once, on
    the process's own device, with the noise it has in a one-process run) and all processes wait until
    every file is written. ``dtype``: the generator's (:func:`mmalign.devices.resolve_dtype`).
    """
    from mmalign.bench.runner import dist_state
    from mmalign.generators import load_generator
    from mmalign.media import save_media

    n = n or suite.samples_per_prompt
    prompts = suite.prompts()
    state = dist_state(device)  # before loading the generator: each rank's device
    first = 0
    if state is not None:
        with state.split_between_processes(list(range(len(prompts)))) as part:
            first, prompts = (part[0] if part else 0), [prompts[i] for i in part]
        device = str(state.device) if device == "auto" else device
    gen = load_generator(generator, device=device, dtype=dtype, lora=list(lora))
    if gen.modality != suite.modality:
        raise ConfigError(f"generator {generator!r} makes {gen.modality}, suite {suite.name!r} needs {suite.modality}")
    for i in range(n):  # one call per sample index: file i of every prompt comes from seed + i
        if prompts:
            media = gen.sample(prompts, n=1, seed=seed + i, progress=progress, first_prompt=first)
            names = [suite.naming.format(prompt=p, index=i) for p in prompts]
            save_media(media, folder, names)
    if state is not None:
        state.wait_for_everyone()
    return folder


def _bench(
    ctx: typer.Context,
    suite: str = typer.Option("synth-video", help="vbench-standard | synth-video | synth-image | custom, or a suite.yaml path."),
    videos: Path | None = typer.Option(None, help="Folder of sampled files named '{prompt}-{i}.mp4' (.png for images); "
                                       "with --suite custom any videos."),
    custom_input: bool = typer.Option(False, "--custom-input", help="Same as --suite custom (VBench's custom_input mode): "
                                      "any videos, the prompt-free dimensions."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="--suite custom: prompts as JSON {video_path: "
                                             "prompt} or a manifest.jsonl (default DIR/manifest.jsonl, else file names)."),
    generator: str | None = typer.Option(None, help="Sample the suite with this generator first (e.g. synth-video)."),
    lora: list[str] | None = typer.Option(None, "--lora", help=f"With --generator: {LORA_HELP}."),
    out: Path = typer.Option(_DEFAULT_OUT, help="Output folder (records, feature cache, results, report)."),
    dimensions: str | None = typer.Option(None, help="Comma-separated dimensions (default: the suite's)."),
    weights: Path | None = typer.Option(None, help="Weights folder in VBench's cache layout (default $VBENCH_CACHE_DIR "
                                        "or ~/.cache/vbench)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    dtype: str = typer.Option("fp32", help="Compute dtype of the learned backbones: fp32 | bf16 | fp16 | auto."),
    seed: int = typer.Option(0, help="Sampling seed (with --generator)."),
    samples: int | None = typer.Option(None, help="Samples per prompt with --generator (default: the suite's)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on an unreadable file or a backbone that cannot be loaded "
                                "instead of skipping it."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the per-video feature cache."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Benchmark a folder of videos (or a generator) on a suite: results JSON, radar PNG, HTML report."""
    if ctx.invoked_subcommand is not None:
        return
    from mmalign.bench.report import score_lines, write_report
    from mmalign.bench.runner import run_benchmark
    from mmalign.bench.suites import custom_suite, load_suite
    from mmalign.devices import check_dtype_option
    from mmalign.generators.lora import parse_lora_args

    loras = parse_lora_args(lora)
    check_dtype_option(dtype)
    if custom_input or suite == "custom":
        s = custom_suite(prompts_file)
    elif prompts_file is not None:
        raise InputError("--prompts-file goes with --suite custom; a named suite brings its own prompts")
    else:
        s = load_suite(suite)
    if (videos is None) == (generator is None):
        raise InputError("give exactly one of --videos DIR (already sampled) or --generator G (sample first)")
    if loras and generator is None:
        raise InputError("--lora attaches to a --generator; with --videos the media are already sampled")
    if generator is not None:
        if s.name == "custom":
            raise InputError("--suite custom evaluates a folder of videos: pass --videos DIR")
        videos = sample_suite(generator, s, out / "samples", seed=seed, n=samples, device=device, dtype=dtype,
                              progress=not quiet, lora=loras)
    dims = [d.strip() for d in dimensions.split(",") if d.strip()] if dimensions else None
    run = run_benchmark(s, videos, out, dims, weights_dir=weights, device=device, dtype=dtype, strict=strict,
                        cache=not no_cache, progress=not quiet)
    if not run.is_main:  # accelerate launch: the main process writes the report
        return
    paths = write_report(run)
    res = json.loads(paths["results"].read_text())
    for d, e in res["dimensions"].items():
        val = "–" if e["raw"] is None else f"{e['raw']:.4f}"
        mark = "" if e["comparable_with_vbench"] or e["raw"] is None or e["group"] == "extra" else " (not comparable with VBench)"
        extra = e.get("reason") or e.get("note") or ""
        typer.echo(f"{d:24s} {val:>8s}  {(e['backbone'] or '-') + mark:40s} {extra}")
    for line in score_lines(res):
        typer.echo(line)
    if res["skipped"]:
        typer.secho(f"skipped {len(res['skipped'])} unreadable file(s): " + "; ".join(x["path"] for x in res["skipped"]), fg="yellow")
    typer.echo(f"wrote {paths['results']}, {paths['html']} (backbones in {res['dtype']})")


def _static_filter(
    videos: Path = typer.Option(..., help="Folder of videos named '{prompt}-{i}.mp4'."),
    out: Path = typer.Option(..., help="Folder for the kept videos, renamed '{prompt}-{i}.mp4', and static_filter.json."),
    scope: str = typer.Option("all", help="all: keep every static video; temporal_flickering: VBench's "
                              "temporal_flickering prompts, the first --keep static videos of each."),
    keep: int = typer.Option(5, help="With --scope temporal_flickering: static videos kept per prompt."),
    weights: Path | None = typer.Option(None, help="Weights folder in VBench's cache layout (raft_model/models/raft-things.pth)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """VBench's static filter (RAFT): keep the static videos for temporal_flickering, as its own step."""
    from mmalign.bench.static_filter import static_filter
    from mmalign.bench.suites import load_suite

    if scope not in ("all", "temporal_flickering"):
        raise InputError(f"--scope {scope!r}: use 'all' or 'temporal_flickering'")
    prompts = None
    if scope == "temporal_flickering":
        prompts = [e.prompt for e in load_suite("vbench-standard").entries if "temporal_flickering" in e.dimensions]
    res = static_filter(videos, out, keep=keep if scope == "temporal_flickering" else None, prompts=prompts,
                        weights_dir=weights, device=device, progress=not quiet)
    n = sum(len(v) for v in res["kept"].values())
    typer.echo(f"kept {n} static video(s) of {len(res['decisions'])} checked with {res['backbone']} -> {out}")


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
    bench_app.command("static-filter")(_static_filter)
    app.add_typer(bench_app, name="bench")
