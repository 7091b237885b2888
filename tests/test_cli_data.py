"""`mmalign pairs`, `train-scorer`, `score` and `sample` through the real CLI app: the main path and a bad input each."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmalign.cli import get_app
from mmalign.data.pairs import PairDataset, RankingDataset, read_preferences
from mmalign.data.prompts import read_prompts

runner = CliRunner()


def mmalign(*args: str):
    return runner.invoke(get_app(), [str(a) for a in args])


def assert_one_error_line(result, *fragments: str) -> None:
    """Exit 1 and exactly one line of output, ``error: ...``, naming each fragment."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """`mmalign pairs` on the shipped synthetic image generator and scorer (default prompt set)."""
    out = tmp_path_factory.mktemp("pairs") / "D"
    result = mmalign("pairs", "--generator", "synth-sdxl", "--scorer", "synth-hps", "--out", out,
                     "--n-prompts", 6, "--k", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert "6 prompts × 2 samples" in result.output
    return out


def test_pairs_writes_the_one_pair_and_ranking_schema(pairs_dir):
    pairs = [json.loads(line) for line in (pairs_dir / "pairs.jsonl").read_text().splitlines()]
    rankings = [json.loads(line) for line in (pairs_dir / "rankings.jsonl").read_text().splitlines()]
    assert pairs and all(set(p) == {"prompt", "chosen", "rejected", "label", "margin"} for p in pairs)
    assert len(rankings) == 6 and all({"prompt", "items", "scores"} <= set(r) and len(r["items"]) == 2 for r in rankings)
    assert {r["prompt"] for r in rankings} <= set(read_prompts("synth-image-train"))  # the default prompt set
    assert isinstance(read_preferences(pairs_dir / "pairs.jsonl", ties="keep"), PairDataset)
    assert isinstance(read_preferences(pairs_dir / "rankings.jsonl"), RankingDataset)
    for r in rankings:  # higher = better: the chosen item of each pair has the higher win rate
        pair = next((p for p in pairs if p["chosen"] in r["items"]), None)
        if pair is not None and pair["label"] == 1.0:
            psi = dict(zip(r["items"], r["scores"]))
            assert psi[pair["chosen"]] > psi[pair["rejected"]]
            raw = dict(zip(r["items"], r["raw"]["synth-hps"]))  # the margin: the reward gap chosen − rejected
            assert pair["margin"] == pytest.approx(raw[pair["chosen"]] - raw[pair["rejected"]], abs=1e-6)


def test_pairs_bad_prompt_set_is_one_error_line(tmp_path):
    result = mmalign("pairs", "--generator", "synth-sdxl", "--scorer", "synth-hps", "--out", tmp_path / "D",
                     "--prompts", "synth-imag-train")
    assert_one_error_line(result, "synth-imag-train", "did you mean 'synth-image-train'")
    assert not (tmp_path / "D").exists()


@pytest.mark.parametrize("data", ["pairs.jsonl", "rankings.jsonl"])
def test_train_scorer_reads_what_pairs_wrote(pairs_dir, tmp_path, data):
    out = tmp_path / "S"
    result = mmalign("train-scorer", "--base", "synth-hps", "--data", pairs_dir / data, "--eval-data", pairs_dir,
                     "--out", out, "--steps", 2, "--batch-size", 4, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "train_report.json").read_text())
    assert report["steps"] == 2 and report["train_pairs"] >= 1 and 0.0 <= report["pooled_accuracy"] <= 1.0
    assert (out / "card.yaml").is_file() and (out / "open_clip_model.safetensors").is_file()


def test_train_scorer_old_schema_is_one_error_line(tmp_path):
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"prompt": "p", "a": "x.png", "b": "y.png", "label": 1}) + "\n")
    result = mmalign("train-scorer", "--base", "synth-hps", "--data", old, "--out", tmp_path / "S")
    assert_one_error_line(result, "old.jsonl line 1", "'chosen' and 'rejected'")


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """`mmalign sample` with a prompt file: media plus manifest.jsonl."""
    root = tmp_path_factory.mktemp("sample")
    (root / "prompts.txt").write_text("a red circle\n\na blue square\n", encoding="utf-8")
    result = mmalign("sample", "--generator", "synth-sdxl", "--prompts-file", root / "prompts.txt", "--prompts",
                     "two green triangles", "--n", 2, "--out", root / "out", "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote 6 image samples" in result.output
    return root / "out"


def test_sample_writes_media_and_manifest(sample_dir):
    rows = [json.loads(line) for line in (sample_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["two green triangles"] * 2 + ["a red circle"] * 2 + ["a blue square"] * 2
    assert all((sample_dir / r["file"]).is_file() for r in rows)


def test_sample_missing_prompt_file_is_one_error_line(tmp_path):
    result = mmalign("sample", "--generator", "synth-sdxl", "--prompts-file", tmp_path / "nope.txt", "--out", tmp_path)
    assert_one_error_line(result, "nope.txt", "no such file")


def test_score_a_sampled_folder(sample_dir, tmp_path):
    out = tmp_path / "scores.jsonl"
    result = mmalign("score", "--scorer", "synth-hps", "--media", sample_dir, "--out", out, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["prompt"] for r in rows} == {"two green triangles", "a red circle", "a blue square"}
    assert "6 items, mean" in result.output


def test_score_prompt_count_mismatch_is_one_error_line(sample_dir, tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("only one prompt\n")
    result = mmalign("score", "--scorer", "synth-hps", "--media", sample_dir, "--prompts-file", txt, "--device", "cpu",
                     "--out", tmp_path / "s.jsonl", "--quiet")
    assert_one_error_line(result, "prompts.txt", "1 prompts for 6 media files")
