"""The CLI through its real entry point (``python -m mmalign.cli``, the console script's ``main``):
the command list, --version, one red line per error, and ``train`` / ``bench`` main and error paths.

``pairs``, ``score``, ``train-scorer`` and ``sample`` are covered in ``test_cli_data.py``, ``synth``
in ``test_synth_cli.py``, ``demo``'s error path in ``test_config.py`` and its main path in
``test_demo.py`` (slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mmalign
from mmalign import cli
from test_trainer_adapter import write_pairs


def mmalign_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmalign.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd or Path.home())})


def mmalign_in_process(*args: str) -> subprocess.CompletedProcess:
    """The app ``main()`` runs, invoked in this process: for the many error cases of one command, whose
    entry-point path one subprocess test already covers."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.get_app(), list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line an MMAlignError prints; the process must have exited 1 with nothing else on stderr."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_help_lists_the_commands_in_order():
    proc = mmalign_cli("--help")
    assert proc.returncode == 0, proc.stderr
    panel = proc.stdout.split("Commands")[1]
    listed = [line.split()[1] for line in panel.splitlines() if line.startswith("│ ") and not line.startswith("│  ")]
    assert listed == [*cli.ORDER]
    assert "not built" not in proc.stdout


def test_version():
    proc = mmalign_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"mmalign {mmalign.__version__}"


def test_debug_shows_the_traceback_instead_of_one_line(tmp_path):
    proc = mmalign_cli("--debug", "train", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_train_main_path_and_error_path(tmp_path):
    from mmalign.generators.tiny import save_tiny

    folder = save_tiny("sdxl", tmp_path / "tiny-sdxl")
    data = write_pairs(tmp_path / "data", n=4, size=32)
    args = ["train", "synth-diffusion-dpo", "--set", f"generator={folder}", "--set", f"data.path={data}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", f"output_dir={tmp_path / 'run'}",
            "--set", "max_steps=2", "--set", "batch_size=2", "--set", "eval.every=0", "--set", "checkpoint_every=0",
            "--quiet"]
    proc = mmalign_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 steps (max_steps, fp32)" in proc.stdout and (tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    again = mmalign_cli(*args, cwd=tmp_path)  # the folder holds checkpoints: resume or choose another
    assert "pass --resume" in error_line(again)


def test_train_unknown_recipe_suggests_the_nearest(tmp_path):
    line = error_line(mmalign_cli("train", "synth-diffusion-dop", cwd=tmp_path))
    assert "did you mean 'synth-diffusion-dpo'?" in line


def test_bench_main_path_and_error_path(tmp_path):
    from mmalign.bench.suites import load_suite
    from mmalign.media import VideoBatch, save_media

    suite = load_suite("synth-video")
    prompts = [e.prompt for e in suite.entries if "subject_consistency" in e.dimensions][:2]
    folder = tmp_path / "videos"
    video = VideoBatch(torch_rand((1, 4, 3, 32, 32)), fps=8.0)
    for p in prompts:
        save_media(video, folder, names=[suite.naming.format(prompt=p, index=0)])
    out = tmp_path / "out"
    proc = mmalign_cli("bench", "--suite", "synth-video", "--videos", str(folder), "--out", str(out),
                       "--dimensions", "subject_consistency", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["n_videos"] == 2 and results["dimensions"]["subject_consistency"]["raw"] is not None
    line = error_line(mmalign_cli("bench", "--suite", "synth-video", "--out", str(out), cwd=tmp_path))
    assert "give exactly one of --videos DIR" in line


def torch_rand(shape):
    import torch

    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("args, fragment", [
    (["sample"], "Missing option"),
])
def test_usage_errors_exit_2_with_typer_usage(args, fragment):
    proc = mmalign_cli(*args)
    assert proc.returncode == 2 and fragment in proc.stderr


def test_synth_main_path_and_error_path(tmp_path):
    proc = mmalign_cli("synth", "render", "--modality", "image", "--n", "4", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "r").glob("*.png"))) == 4 and (tmp_path / "r" / "manifest.jsonl").is_file()
    line = error_line(mmalign_cli("synth", "check", str(tmp_path / "nothing-here"), cwd=tmp_path))
    assert "nothing-here" in line


def test_demo_main_path_small(tmp_path):
    """The demo end to end through the console entry point, at a small size (the real size is in the README)."""
    out = tmp_path / "demo"
    proc = mmalign_cli("demo", "--out", str(out), "--quiet", "--set", "train_prompts=12", "--set", "k=2",
                       "--set", "val_prompts=4", "--set", "eval_prompts=12", "--set", "annotators=3",
                       "--set", "recipe_overrides=[max_steps=3, eval.every=3]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 12 and report["train"]["steps"] == 3 and report["config"]["k"] == 2
    assert set(report["oracle"]) >= {"color", "faithfulness", "quality"}
    assert [e["step"] for e in report["train"]["eval_history"]] == [0, 3]
    assert "judge/color" in report["train"]["eval_history"][0]
    assert (out / "before_after.png").is_file() and (out / "train" / "final" / "pytorch_lora_weights.safetensors").is_file()
