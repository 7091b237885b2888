"""The ``mmalign`` command line.

Each area adds its commands with ``register(app)`` in ``mmalign/<area>/cli.py`` (:data:`AREAS`);
this module adds ``demo`` and lists the commands in :data:`ORDER`. Subcommands are thin: they parse,
call the library and print. An :class:`MMAlignError` prints one red line and exits 1
(``mmalign --debug ...`` shows the traceback instead).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, List, Optional

import click
import typer
from typer.core import TyperGroup

from mmalign.errors import MMAlignError

AREAS: tuple[str, ...] = ("synth", "generators", "scoring", "data", "align", "bench", "arena")
#: the order of commands in ``mmalign --help`` (others follow alphabetically)
ORDER: tuple[str, ...] = ("demo", "sample", "score", "pairs", "train", "train-scorer", "merge", "selma", "bench", "arena", "synth")


class _Group(TyperGroup):
    """The root group: commands in :data:`ORDER`; MMAlignError as one red line, exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MMAlignError as e:
            if ctx.params.get("debug"):
                raise
            from rich.console import Console
            from rich.markup import escape

            line = " ".join(str(e).split())  # one line, whatever the message holds
            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(line)}")
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


def demo(
    modality: str = typer.Option("image", help="image, video or audio: which shipped generator to align."),
    seed: int = typer.Option(0, help="Seed for prompts, sampling, training and the bootstrap."),
    out: Optional[Path] = typer.Option(None, help="Folder for data, weights, grids and report.json (default runs/demo-<modality>)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Change a demo setting: --set k=8 --set 'recipe_overrides=[max_steps=100]'"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or tables."),
) -> None:
    """The main job: align a shipped model (DRaFT reward backpropagation) and measure the effect on held-out prompts."""
    from mmalign.demo import run_demo

    run_demo(modality=modality, seed=seed, out=out, overrides=list(set_ or []), quiet=quiet)


def make_app() -> typer.Typer:
    """The root app: every area's commands and the demo."""
    root = typer.Typer(
        name="mmalign",
        cls=_Group,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        help="Align generative models of images, video and music to human preferences.",
    )
    root.callback()(_root)
    root.command("demo")(demo)
    for area in AREAS:
        importlib.import_module(f"mmalign.{area}.cli").register(root)
    return root


@functools.cache
def get_app() -> typer.Typer:
    """The ``mmalign`` app, built once on first use."""
    return make_app()


def main() -> None:
    """Console-script entry point (``mmalign``)."""
    get_app()(prog_name="mmalign")


if __name__ == "__main__":
    main()
