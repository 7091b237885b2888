"""SELMA end to end (``mmalign selma``): skill data kept by a judge, one SFT LoRA per skill, a joint LoRA
with the same total steps, every merge, multi-adapter inference, and the held-out table — on the synthetic
world (small setting) and with ``recipes/sdxl-selma.yaml`` on a tiny SDXL folder saved by diffusers' own
classes. Then the pieces by hand (the filter, the CI of a mean over skills, sample manifests) and every
bad input: one clear error before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmalign.align import selma
from mmalign.align.selma import kept_indices, load_selma_recipe, run_selma, skill_values
from mmalign.align.selma_report import mean_of_means_ci
from mmalign.errors import ConfigError, InputError
from test_cli import error_line, mmalign_in_process

ROWS = ["base", "expert:color", "expert:count", "joint", "merge:linear", "merge:svd", "merge:ties", "merge:dare_linear",
        "merge:dare_ties", "multi-adapter"]


def small(out: Path) -> list[str]:
    """synth-selma at test size: two skills, 8 prompts × 2 samples, 3 steps per expert, 12 held-out items."""
    return [f"output_dir={out}", "skills={color: {prompts: synth-image-train, heldout: synth-image-heldout}, "
            "count: {prompts: synth-image-count-train, heldout: synth-image-count-heldout}}",
            "samples.prompts=8", "samples.k=2", "train.max_steps=3", "train.batch_size=4", f"train.data.cache_dir={out / 'cache'}",
            "eval.n_per_skill=12", "eval.batch_size=12"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("selma") / "run"
    return out, run_selma("synth-selma", small(out), quiet=True)


def test_table_has_every_row_and_column_with_cis(run):
    out, report = run
    assert list(report["rows"]) == ROWS
    assert report["columns"] == ["color", "count", "mean skill", "faithfulness", "reward"]
    for row, cells in report["rows"].items():
        for col, cell in cells.items():
            est, lo, hi = cell["ci"]
            assert lo <= est <= hi, (row, col)
            assert ("delta_base" in cell) == (row != "base") and ("delta_joint" in cell) == (row != "joint")
    assert report["rows"]["base"]["count"]["n"] == 12 and report["rows"]["base"]["faithfulness"]["n"] == 24
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"].keys() == report["rows"].keys()
    assert (out / "selma.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert all(f"| {row} |" in table for row in ROWS) and "vs joint" in table


def test_kept_samples_pass_their_skill_check(run):
    """filter.by=skill with the exact oracle: every kept sample shows its skill, re-judged from the saved file."""
    from mmalign.data.pairs import read_manifest
    from mmalign.media import ImageBatch
    from mmalign.synth.oracle import evaluate

    out, report = run
    for skill in ("color", "count"):
        data = read_manifest(out / "data" / skill / "samples.jsonl")
        assert data.k == 1 and len(data) == report["data"][skill]["kept"] > 0
        media = ImageBatch.cat([data.load(r.items[0]) for r in data])
        assert all(checks[skill] for checks in evaluate(media, [r.prompt for r in data]).skills)
    joint = read_manifest(out / "data" / "joint" / "samples.jsonl")
    assert len(joint) == report["data"]["color"]["kept"] + report["data"]["count"]["kept"]


def test_joint_has_the_experts_total_steps(run):
    out, _ = run

    def steps(final: Path) -> int:
        return json.loads((final / "mmalign_lora.json").read_text())["provenance"]["steps"]

    assert [steps(out / "experts" / s / "final") for s in ("color", "count")] == [3, 3]
    assert steps(out / "joint" / "final") == 6


def test_linear_merge_equals_multi_adapter_and_full_rank_svd(run):
    """Σ_k w_k·ΔW_k stored at rank Σr_k (linear) samples what diffusers' set_adapters does, and svd at that rank too."""
    out, _ = run
    rows = {name: json.loads((out / "eval" / f"{name}.json").read_text())["sets"]
            for name in ("merge-linear", "multi-adapter", "merge-svd", "base")}
    for source, ref in rows["merge-linear"].items():
        for other in ("multi-adapter", "merge-svd"):
            assert rows[other][source]["details"] == ref["details"]
            np.testing.assert_allclose(rows[other][source]["reward"], ref["reward"], atol=1e-4)
    assert rows["base"] != rows["merge-linear"]  # the experts changed the samples


def test_rerun_reuses_every_stage(run, monkeypatch):
    out, report = run

    def never(*a, **k):
        raise AssertionError("a finished stage ran again")

    for name in ("build_skill_data", "evaluate_row"):
        monkeypatch.setattr(selma, name, never)
    monkeypatch.setattr("mmalign.align.trainer.train", never)
    monkeypatch.setattr("mmalign.align.merge.merge", never)
    again = run_selma("synth-selma", small(out), quiet=True)
    assert json.loads(json.dumps(again["rows"])) == json.loads(json.dumps(report["rows"]))


def test_sdxl_selma_recipe_runs_on_tiny_sdxl(tmp_path):
    """The SDXL recipe's code path (scorer-filtered: best of k by score, bf16 off the GPU aside) on a tiny SDXL folder."""
    from mmalign.generators import load_generator
    from mmalign.generators.tiny import save_tiny

    base = save_tiny("sdxl", tmp_path / "tiny-sdxl")
    out = tmp_path / "run"
    report = run_selma("sdxl-selma", [
        f"generator={base}", f"output_dir={out}", "filter.judge=synth-hps", "filter.threshold=-1e9",
        "samples.prompts=2", "samples.k=2", "samples.steps=2", "samples.batch_size=4",
        "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1", "train.mixed_precision=no",
        "train.data.resolution=32", "train.lora={rank: 4, alpha: 4}", f"train.data.cache_dir={tmp_path / 'cache'}",
        "merge.methods=[linear, ties]", "eval.scorer=synth-hps", "eval.n_per_skill=2", "eval.steps=2"], quiet=True)
    assert list(report["rows"]) == ["base", *(f"expert:{s}" for s in ("color", "count", "shape", "spatial")), "joint",
                                    "merge:linear", "merge:ties", "multi-adapter"]
    assert all(report["data"][s]["kept"] == 2 for s in report["skills"])  # keep_per_prompt=1 of k=2, 2 prompts
    gen = load_generator(base, lora=out / "merged" / "ties")  # a merge loads like any LoRA
    assert gen.pipe.get_active_adapters()


# --- the pieces by hand


def test_skill_values_and_filter_by_hand():
    details = [{"color": 1.0, "count": 0.0}, {"color": 0.0}, {"color": 1.0, "count": 1.0}]
    assert skill_values([0.5, 0.2, 0.9], details, "count") == [0.0, None, 1.0]
    assert skill_values([0.5, 0.2, 0.9], [{}, {}, {}], "count") == [0.5, 0.2, 0.9]  # a plain scorer: its score
    # two prompts × 3 samples: value ≥ 0.5 passes; then the best (by score) 1 per prompt
    prompt_of, scores, values = [0, 0, 0, 1, 1, 1], [0.1, 0.9, 0.5, 0.3, 0.2, 0.8], [1, 1, 0, 1, None, 0]
    assert kept_indices(prompt_of, scores, values, 0.5, None) == [0, 1, 3]
    assert kept_indices(prompt_of, scores, values, 0.5, 1) == [1, 3]


def test_mean_of_means_ci_by_hand():
    a, b = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0])
    est, lo, hi = mean_of_means_ci([a, b], seed=0)
    assert est == pytest.approx((0.75 + 1 / 3) / 2) and lo < est < hi
    assert mean_of_means_ci([np.ones(5), np.zeros(3)]) == (0.5, 0.5, 0.5)


def test_sample_manifest_reads_as_rankings_of_one(tmp_path):
    from mmalign.align.config import load_recipe
    from mmalign.align.trainer import select_data
    from mmalign.data.pairs import read_manifest

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "samples.jsonl").write_text('{"prompt": "a red circle", "media": "a.png"}\n')
    data = read_manifest(tmp_path / "samples.jsonl")
    assert data.k == 1 and data[0].items == ("a.png",) and data[0].scores == (1.0,)
    recipe = {"generator": "synth-sdxl", "data": {"path": "x"}}
    assert select_data(load_recipe({**recipe, "method": "sft"}), data) is data
    with pytest.raises(ConfigError, match="only with method: sft"):
        select_data(load_recipe(recipe), data)
    (tmp_path / "mixed.jsonl").write_text('{"prompt": "p", "media": "a.png"}\n'
                                          '{"prompt": "p", "chosen": "a.png", "rejected": "a.png"}\n')
    with pytest.raises(InputError, match="mixes pairs"):
        read_manifest(tmp_path / "mixed.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "media": 3}\n')
    with pytest.raises(InputError, match="bad.jsonl line 1: 'media' must be"):
        read_manifest(tmp_path / "bad.jsonl")


# --- bad input: one error before any work


@pytest.mark.parametrize("override, fragment", [
    ("skills.color.promts=x", "unknown key 'skills.color.promts'; did you mean 'prompts'?"),
    ("train.data.path=x", "train.data.path is set by the SELMA run itself"),
    ("train.lr=-1", "train: recipe: key 'lr'"),
    ("train.method=dpo", "train.method is set by the SELMA run itself"),
    ("merge.weights=[1.0]", "merge.weights has 1 values for 4 skills"),
    ("merge.methods=[lineer]", "key 'merge.methods.0'"),
    ("skills={color: {prompts: a, heldout: b}}", "merging needs at least two skills"),
])
def test_bad_recipe_keys_are_one_line(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_selma_recipe("synth-selma", [override])
    assert fragment in str(err.value) and "\n" not in str(err.value) and "synth-selma.yaml" in str(err.value)


def test_bad_input_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("mmalign.generators.load_generator", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(InputError, match="no-such-prompts"):
        run_selma("synth-selma", [f"output_dir={tmp_path}", "skills.count.prompts=no-such-prompts"], quiet=True)
    with pytest.raises(ConfigError, match="filter.by=skill needs a judge that checks skills per item; 'synth-hps'"):
        run_selma("synth-selma", [f"output_dir={tmp_path}", "filter.judge=synth-hps"], quiet=True)


def test_judge_that_keeps_nothing_names_the_skill(tmp_path):
    with pytest.raises(InputError, match="skill 'color': the judge 'synth-oracle' kept none of 2 samples"):
        run_selma("synth-selma", [*small(tmp_path), "samples.prompts=1", "filter.threshold=2"], quiet=True)


def test_cli_errors_and_the_wrong_command():
    assert "merge.weights has 1 values" in error_line(mmalign_in_process("selma", "synth-selma", "--set", "merge.weights=[1]"))
    assert "SELMA recipe" in error_line(mmalign_in_process("train", "synth-selma"))
    assert "training recipe" in error_line(mmalign_in_process("selma", "synth-diffusion-dpo"))
