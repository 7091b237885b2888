"""The one config layer: recipes, suites and the demo's settings load through ``mmalign.cards``; every
malformed value, unknown key or missing key (from a file or ``--set``) is one line naming file and key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from mmalign.align.config import load_recipe
from mmalign.bench.suites import SuiteCard, list_suites, load_suite
from mmalign.cards import load_card
from mmalign.demo import DemoConfig, demo_config
from mmalign.errors import ConfigError
from mmalign.paths import asset_path, shipped_dir


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# --- recipes


def _recipe(override: str):
    return load_recipe("synth-diffusion-dpo", [override])


def _demo(override: str):
    return demo_config("image", [override])


@pytest.mark.parametrize("load, override, fragment, where", [
    (_recipe, "lr=[1e-3", "--set lr: value '[1e-3' is not valid YAML", "synth-diffusion-dpo.yaml"),
    (_recipe, "lr=-1", "key 'lr'", "synth-diffusion-dpo.yaml"),
    (_recipe, "optimizer.nme=adamw", "unknown key 'optimizer.nme'; did you mean 'name'?", "synth-diffusion-dpo.yaml"),
    (_recipe, "eval.early_stopping.metric=oracle", "key 'eval.early_stopping.metric'", "synth-diffusion-dpo.yaml"),
    (_recipe, "attention=auto", "key 'attention'", "synth-diffusion-dpo.yaml"),
    (_demo, "kk=8", "unknown key 'kk'; did you mean 'k'?", "demo"),
    (_demo, "k=1", "key 'k'", "demo"),
    (_demo, "modality=text", "key 'modality'", "demo"),
])
def test_bad_overrides_are_one_line_naming_file_and_key(load, override, fragment, where):
    with pytest.raises(ConfigError) as err:
        load(override)
    text = one_line(err)
    assert fragment in text and text.split(":")[0].endswith(where)  # the file (or "demo") comes first


def test_recipe_file_errors_name_the_file(tmp_path):
    src = (shipped_dir("recipes") / "synth-diffusion-dpo.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(src.replace("max_steps: 200", "max_stepz: 200").replace("generator: synth-sdxl\n", ""))
    with pytest.raises(ConfigError) as err:
        load_recipe(bad)
    text = one_line(err)
    assert str(bad) in text and "unknown key 'max_stepz'; did you mean 'max_steps'?" in text
    assert "missing required key 'generator'" in text


def test_cross_field_checks_are_config_errors():
    from mmalign.align.trainer import make_evaluation

    with pytest.raises(ConfigError, match="early_stopping needs eval.every"):
        load_recipe("synth-diffusion-dpo", ["eval.every=0", "eval.early_stopping={metric: score}"])
    no_judge = load_recipe("synth-diffusion-dpo", ["eval.judge=null", "eval.early_stopping={metric: judge}"])
    with pytest.raises(ConfigError, match="metric=judge needs eval.judge"):
        make_evaluation(no_judge, generator=None)
    with pytest.raises(ConfigError, match="needs eval.prompts"):
        make_evaluation(load_recipe("synth-diffusion-dpo", ["eval.prompts=null"]), generator=None)


def test_overrides_apply_in_order_after_the_file():
    r = load_recipe("synth-diffusion-dpo", ["lr=1e-6", "lora.rank=4", "lr=2e-6"])
    assert (r.lr, r.lora.rank, r.lora.alpha) == (2e-6, 4, 32)


# --- suites


def test_every_shipped_suite_loads_through_the_card_loader():
    assert {"vbench-standard", "synth-video", "synth-image"} <= set(list_suites())
    for name in list_suites():
        suite = load_suite(name)
        assert suite.name == name and suite.entries


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace("samples_per_prompt: 5", "samples_per_promt: 5"), "unknown key 'samples_per_promt'; did you mean 'samples_per_prompt'?"),
    (lambda t: t.replace("name: vbench-standard\n", ""), "missing required key 'name'"),
    (lambda t: t.replace("temporal_flickering: 25", "temporal_flickering: many"), "key 'samples_per_dimension.temporal_flickering'"),
    (lambda t: t.replace("backbones:\n", "backbones:\n  extra: dino-vitb16\n", 1), "key 'backbones.extra'"),
    (lambda t: t + "\nplugin: no.such.module\n", "plugin module 'no.such.module' cannot be imported"),
])
def test_bad_suite_files_are_one_line_naming_file_and_key(tmp_path, edit, fragment):
    folder = tmp_path / "suite"
    shutil.copytree(asset_path("suites", "vbench-standard"), folder)
    (folder / "suite.yaml").write_text(edit((folder / "suite.yaml").read_text()))
    with pytest.raises(ConfigError) as err:
        load_suite(folder)
    text = one_line(err)
    assert fragment in text and str(folder / "suite.yaml") in text


def test_a_suite_plugin_registers_its_backbones():
    """The synth suites name ``plugin: mmalign.synth.bench``; loading them makes its backbones known."""
    from mmalign.bench.backbones import list_backbones

    suite = load_suite("synth-video")
    registered = set(list_backbones("synth-*"))
    assert {b for role in suite.backbones.values() for b in role if b.startswith("synth-")} <= registered
    assert "dino-vitb16" not in registered and "dino-vitb16" in list_backbones()


def test_suite_by_unknown_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'synth-video'"):
        load_card("synth-vidoe", SuiteCard, kind="suites")


def test_synth_suite_prompt_files_are_what_the_world_writes():
    from mmalign.synth.suites import suite_prompts_text

    for modality in ("image", "video"):
        assert asset_path("suites", f"synth-{modality}", "prompts.json").read_text() == suite_prompts_text(modality)


# --- the demo's settings


def test_demo_config_layers_preset_changes_then_set():
    cfg = demo_config("video", ["k=8", "recipe_overrides=[max_steps=10]"], seed=3)
    assert (cfg.generator, cfg.train_prompts, cfg.k, cfg.seed, cfg.recipe_overrides) == (
        "synth-video", 96, 8, 3, ["max_steps=10"])




def test_demo_cli_rejects_a_bad_set_before_any_work(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "mmalign.cli", "demo", "--out", str(out), "--set", "annotatorz=3"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: demo: --set annotatorz: unknown key 'annotatorz'; did you mean 'annotators'?"), proc.stderr
    assert not out.exists()
    assert set(DemoConfig.model_fields) >= {"k", "annotators", "recipe_overrides"}


# --- checks that need no data run before any data is read


@pytest.mark.parametrize("override, fragment", [
    ("optimizer.name=adamw8bit", "optimizer.name=adamw8bit"),
    ("mixed_precision=fp16", "mixed_precision=fp16 needs a CUDA device"),
])
def test_device_checks_come_before_the_data(tmp_path, override, fragment):
    from mmalign.align.trainer import Trainer

    trainer = Trainer("synth-diffusion-dpo", [override, "device=cpu", f"data.path={tmp_path / 'missing.jsonl'}",
                                              f"output_dir={tmp_path / 'run'}", "eval.every=0"])
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        trainer.setup()  # the data file does not exist: the device check must come first


def test_train_cli_malformed_set_is_one_red_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmalign.cli", "train", "synth-diffusion-dpo", "--set", "lr=[1e-3",
                           "--set", f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--set lr: value '[1e-3' is not valid YAML" in lines[0], proc.stderr
    assert json.dumps(proc.stdout) == '""'
