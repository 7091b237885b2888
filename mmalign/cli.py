"""The ``mmalign`` command line.

Each area (``mmalign/<area>/cli.py`` for the areas in :data:`AREAS`) adds its commands with
``register(app)``. Every command of :data:`COMMANDS` is listed in ``mmalign --help``; one that no
area registered says it is not built yet and exits with code 2. An :class:`MMAlignError` prints
one red line and exits 1 (``mmalign --debug ...`` shows the traceback instead).

``mmalign demo``: an area may register its own ``demo``; otherwise the demo runs
``mmalign.align.demo.run_demo(modality=..., seed=..., out=...)`` when that module exists, and until
then the synthetic world and its oracle, saying that the alignment demo is not built yet.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, Optional, Sequence

import click
import typer
from typer.core import TyperGroup

from mmalign.errors import InputError, MMAlignError

AREAS: tuple[str, ...] = ("synth", "generators", "scoring", "data", "align", "bench")

#: every command of the CLI, in help order: (the area that registers it, the issue that builds it)
COMMANDS: dict[str, tuple[str, int | None]] = {
    "demo": ("align", 5),
    "synth": ("synth", 2),
    "sample": ("generators", 3),
    "score": ("scoring", 4),
    "pairs": ("data", 5),
    "train": ("align", 5),
    "train-scorer": ("scoring", 4),
    "merge": ("align", None),
    "bench": ("bench", 6),
    "arena": ("bench", None),
}
_DEMO_N = 48  # synth samples per modality in the fallback demo


class _Group(TyperGroup):
    """The root group: commands in :data:`COMMANDS` order; MMAlignError as one red line, exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in COMMANDS if n in names] + sorted(n for n in names if n not in COMMANDS)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MMAlignError as e:
            if ctx.params.get("debug"):
                raise
            from rich.console import Console
            from rich.markup import escape

            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(1) from None


def _print_version(value: bool) -> None:
    if value:
        from mmalign import __version__

        typer.echo(f"mmalign {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """Align generative models of images, video and music to human preferences."""


def _issue(name: str) -> str:
    issue = COMMANDS[name][1]
    return f"issue #{issue}" if issue is not None else "no issue filed yet"


def register_areas(target: typer.Typer, areas: Sequence[str] = AREAS) -> dict[str, BaseException]:
    """Import each area's ``cli`` module and call its ``register(target)``; returns the areas that failed.

    An area whose ``cli`` module does not exist yet is skipped. One that fails to import or register
    is recorded, so that the rest of the CLI still works and its commands can report the failure.
    """
    broken: dict[str, BaseException] = {}
    for area in areas:
        module_name = f"mmalign.{area}.cli"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name in (module_name, f"mmalign.{area}"):
                continue
            broken[area] = e
            continue
        except Exception as e:  # a broken area must not take the whole CLI down
            broken[area] = e
            continue
        try:
            module.register(target)
        except Exception as e:
            broken[area] = e
    return broken


def _command_names(target: typer.Typer) -> set[str]:
    group = typer.main.get_group(target)
    return set(group.list_commands(click.Context(group)))


def _add_placeholder(target: typer.Typer, name: str, failure: BaseException | None) -> None:
    """A command that says it is not built yet (exit 2), or why its area failed to load (exit 1)."""
    area = COMMANDS[name][0]
    summary = f"(not built yet: {_issue(name)})" if failure is None else f"(unavailable: mmalign.{area}.cli failed to load)"

    def placeholder(ctx: typer.Context) -> None:
        if failure is not None:
            if ctx.find_root().params.get("debug"):
                raise failure
            raise MMAlignError(
                f"`mmalign {name}` is unavailable: mmalign.{area}.cli failed to load "
                f"({type(failure).__name__}: {failure}); run `mmalign --debug {name}` for the traceback"
            )
        typer.secho(f"`mmalign {name}` is not built yet ({_issue(name)})", err=True, fg="yellow")
        raise typer.Exit(2)

    target.command(
        name,
        help=summary,
        short_help=summary,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(placeholder)


def demo(
    modality: Optional[str] = typer.Option(None, help="image, video or audio (default: image; without the alignment package, every modality of the synthetic world)."),
    seed: int = typer.Option(0, help="Seed for prompts, sampling and training."),
    out: Optional[Path] = typer.Option(None, help="Folder for media, grids and reports."),
) -> None:
    """The main job: align a shipped model and show the measured effect (until then: the synthetic world)."""
    try:
        from mmalign.align.demo import run_demo
    except ModuleNotFoundError as e:
        if e.name not in ("mmalign.align.demo", "mmalign.align"):
            raise
    else:
        run_demo(modality=modality, seed=seed, out=out)
        return
    _synth_demo(modality, seed, out)


def _synth_demo(modality: str | None, seed: int, out: Path | None) -> None:
    """Render held-out prompts of each modality, run the oracle, print per-skill accuracy."""
    from rich.console import Console
    from rich.table import Table

    try:
        from mmalign.synth.oracle import evaluate
        from mmalign.synth.prompts import sample_prompts
        from mmalign.synth.render import render
    except ModuleNotFoundError as e:
        raise MMAlignError(f"`mmalign demo` needs the synthetic world (mmalign.synth, issue #2), which is missing: {e}") from e
    from mmalign.media import MODALITIES, image_grid, save_media, video_contact_sheet

    if modality not in (None, *MODALITIES):
        raise InputError(f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    console = Console()
    console.print(
        "[bold yellow]The alignment demo (Diffusion-DPO on a shipped model, base vs aligned) is not built yet "
        "(issue #5).[/] Running what exists: the synthetic world, its renderers and its exact oracle."
    )
    table = Table(title=f"Oracle on rendered held-out prompts (seed {seed}, {_DEMO_N} per modality)")
    for column in ("modality", "skill", "accuracy", "items"):
        table.add_column(column)
    for mod in [modality] if modality else MODALITIES:
        prompts = sample_prompts(mod, _DEMO_N, seed=seed, split="heldout")
        media = render(prompts, seed=seed, modality=mod)
        result = evaluate(media, prompts)
        counts = {k: sum(k in s for s in result.skills) for k in result.per_skill_accuracy()}
        for skill, acc in result.per_skill_accuracy().items():
            table.add_row(mod, skill, f"{acc:.1%}", str(counts[skill]))
        if out is not None:
            save_media(media, out / mod)
            if mod == "image":
                image_grid(media[:16], nrow=8).save(out / "image_grid.png")
            elif mod == "video":
                video_contact_sheet(media[:8], frames=8).save(out / "video_contact_sheet.png")
    console.print(table)
    if out is not None:
        console.print(f"media and previews written to {out}")


def make_app(areas: Sequence[str] = AREAS) -> typer.Typer:
    """The root app: the areas' commands, the demo, and a placeholder for every command still missing."""
    root = typer.Typer(
        name="mmalign",
        cls=_Group,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        help="Align generative models of images, video and music to human preferences.",
    )
    root.callback()(_root)
    broken = register_areas(root, areas)
    present = _command_names(root)
    if "demo" not in present:
        root.command("demo")(demo)
    for name in COMMANDS:
        if name not in present and name != "demo":
            _add_placeholder(root, name, broken.get(COMMANDS[name][0]))
    return root


@functools.cache
def get_app() -> typer.Typer:
    """The ``mmalign`` app with every area registered, built once on first use."""
    return make_app()


def __getattr__(name: str) -> Any:  # ``mmalign.cli.app`` is built lazily: importing this module stays cheap
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point (``mmalign``)."""
    get_app()(prog_name="mmalign")


if __name__ == "__main__":
    main()
