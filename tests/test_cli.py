"""The CLI skeleton: command list, --version, placeholders, clean errors, area registration, the fallback demo."""

from __future__ import annotations

import sys
import types

import pytest
import typer
from typer.testing import CliRunner

import mmalign
from mmalign import cli
from mmalign.errors import InputError

runner = CliRunner()


@pytest.fixture
def bare_app():
    """The app with no area registered: every command but the demo is a placeholder."""
    return cli.make_app(areas=())


def fake_area(monkeypatch, area: str, register) -> None:
    """Install ``mmalign.<area>.cli`` with the given ``register`` for this test only."""
    module = types.ModuleType(f"mmalign.{area}.cli")
    module.register = register
    monkeypatch.setitem(sys.modules, f"mmalign.{area}.cli", module)


def test_help_lists_every_command_in_order():
    result = runner.invoke(cli.get_app(), ["--help"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and len(line.split()) > 1]
    commands = [name for name in listed if name in cli.COMMANDS]
    assert commands == list(cli.COMMANDS)
    assert set(cli.COMMANDS) == {"demo", "synth", "sample", "score", "pairs", "train", "train-scorer", "merge", "bench", "arena"}


def test_version(bare_app):
    result = runner.invoke(bare_app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mmalign {mmalign.__version__}"


@pytest.mark.parametrize("name, issue", [("merge", "no issue filed yet"), ("score", "issue #4"), ("train-scorer", "issue #4")])
def test_unbuilt_command_exits_2_with_message(bare_app, name, issue):
    result = runner.invoke(bare_app, [name, "--some-option", "x"])
    assert result.exit_code == 2
    assert f"`mmalign {name}` is not built yet ({issue})" in result.output
    assert f"not built yet: {issue}" in runner.invoke(bare_app, ["--help"]).output


def test_placeholders_of_the_real_app_exit_2():
    app = cli.get_app()
    placeholders = [c.name for c in app.registered_commands if c.callback.__name__ == "placeholder"]
    for name in placeholders:
        result = runner.invoke(app, [name])
        assert result.exit_code == 2 and f"`mmalign {name}` is not built yet" in result.output


def test_mmalign_error_is_one_clean_line_and_debug_shows_traceback(monkeypatch):
    def register(app: typer.Typer) -> None:
        @app.command("merge")
        def merge() -> None:
            raise InputError("experts.safetensors: no such file")

    fake_area(monkeypatch, "align", register)
    app = cli.make_app(areas=("align",))
    result = runner.invoke(app, ["merge"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: experts.safetensors: no such file"
    assert "Traceback" not in result.output
    debug = runner.invoke(app, ["--debug", "merge"])
    assert debug.exit_code == 1 and isinstance(debug.exception, InputError)


def test_area_commands_replace_placeholders_and_broken_areas_are_reported(monkeypatch):
    def register_scoring(app: typer.Typer) -> None:
        @app.command("score")
        def score(n: int = 1) -> None:
            typer.echo(f"scored {n}")

    def register_bench(app: typer.Typer) -> None:
        raise RuntimeError("bench needs a backbone")

    fake_area(monkeypatch, "scoring", register_scoring)
    fake_area(monkeypatch, "bench", register_bench)
    app = cli.make_app(areas=("scoring", "bench"))
    assert runner.invoke(app, ["score", "--n", "3"]).output.strip() == "scored 3"
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 1
    assert "`mmalign bench` is unavailable: mmalign.bench.cli failed to load (RuntimeError: bench needs a backbone)" in result.output
    assert isinstance(runner.invoke(app, ["--debug", "bench"]).exception, RuntimeError)


def test_missing_area_module_is_skipped():
    assert cli.register_areas(typer.Typer(), areas=("no_such_area",)) == {}


def test_fallback_demo_runs_the_synthetic_world(tmp_dir, capsys):
    pytest.importorskip("mmalign.synth.render")
    cli._synth_demo("image", seed=0, out=tmp_dir / "demo")
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "alignment demo" in out and "not built yet" in out
    for skill in ("color", "shape"):
        assert skill in out
    assert (tmp_dir / "demo" / "image_grid.png").is_file()
    assert len(list((tmp_dir / "demo" / "image").glob("*.png"))) == cli._DEMO_N
    with pytest.raises(InputError, match="--modality"):
        cli._synth_demo("smell", seed=0, out=None)
