"""`mmalign synth render` + `mmalign synth check`: a round trip through files (PNG, MP4, WAV) keeps
the oracle at ≥ 99% per skill, and a corrupt file is reported and skipped; `mmalign synth eval`
scores a generator on either prompt split."""

import pytest
import typer
from typer.testing import CliRunner

from mmalign.synth.cli import register


@pytest.fixture(scope="module")
def app():
    root = typer.Typer()
    register(root)
    return root


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_render_then_check_round_trip(app, tmp_path, modality):
    runner = CliRunner()
    r = runner.invoke(app, ["synth", "render", "--modality", modality, "--n", "12", "--split", "heldout",
                            "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "manifest.jsonl").is_file()
    r = runner.invoke(app, ["synth", "check", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if f"{modality} (12)" in line)
    cells = [c.strip() for c in row.split("│") if c.strip().endswith("%")]
    assert cells and all(float(c.rstrip("%")) >= 99.0 for c in cells), row


def test_check_skips_a_corrupt_file(app, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["synth", "render", "--n", "4", "--out", str(tmp_path)]).exit_code == 0
    (tmp_path / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = runner.invoke(app, ["synth", "check", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "image (3)" in r.output and "skipped" in r.output and "00001.png" in r.output


def test_eval_on_the_train_split(app, tmp_path):
    import json

    from mmalign.errors import InputError
    from mmalign.generators.tiny import save_tiny

    folder = save_tiny("sdxl", tmp_path / "model")
    out = tmp_path / "eval.json"
    args = ["synth", "eval", "--generator", str(folder), "--n", "3", "--steps", "1", "--out", str(out)]
    r = CliRunner().invoke(app, [*args, "--split", "train"])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["split"] == "train" and result["n"] == 3 and "color" in result["accuracy"]
    r = CliRunner().invoke(app, [*args, "--split", "test"])
    assert isinstance(r.exception, InputError) and "unknown split" in str(r.exception)
