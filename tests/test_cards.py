"""Cards: strict validation with the nearest valid key, --set overrides, lookup in checkout and wheel layouts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

import mmalign.paths
from mmalign.cards import Card, apply_overrides, list_cards, load_card
from mmalign.errors import ConfigError


class Preprocess(Card):
    size: int = 224
    mean: list[float] = [0.5, 0.5, 0.5]


class Head(Card):
    kind: str
    dims: list[int] = []


class ToyCard(Card):
    name: str
    modalities: list[str] = ["image"]
    preprocess: Preprocess = Preprocess()
    heads: list[Head] = []
    extras: dict[str, Head] = {}
    fallback: Optional[Preprocess] = None


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_valid_card_loads_with_its_source(tmp_dir):
    path = write(tmp_dir / "toy.yaml", "name: toy\npreprocess: {size: 32}\nheads: [{kind: linear, dims: [4, 1]}]\n")
    card = load_card(path, ToyCard)
    assert card.preprocess.size == 32 and card.heads[0].dims == [4, 1] and card.source == path


@pytest.mark.parametrize(
    "text, key, nearest",
    [
        ("name: t\npreprocss: {size: 3}\n", "preprocss", "preprocess"),
        ("name: t\npreprocess: {sise: 3}\n", "preprocess.sise", "size"),
        ("name: t\nheads: [{kind: a}, {kind: b, dimz: [1]}]\n", "heads[1].dimz", "dims"),
        ("name: t\nextras: {aux: {kind: a, dimss: [1]}}\n", "extras.aux.dimss", "dims"),
        ("name: t\nfallback: {meen: [1]}\n", "fallback.meen", "mean"),
    ],
)
def test_unknown_key_names_file_dotted_key_and_nearest(tmp_dir, text, key, nearest):
    path = write(tmp_dir / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_card(path, ToyCard)
    message = str(info.value)
    assert str(path) in message
    assert f"unknown key '{key}'; did you mean '{nearest}'?" in message


def test_validation_errors_name_file_and_key(tmp_dir):
    path = write(tmp_dir / "bad.yaml", "preprocess: {size: big}\n")
    with pytest.raises(ConfigError) as info:
        load_card(path, ToyCard)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message  # every problem, on one line
    assert "missing required key 'name'" in message
    assert "key 'preprocess.size': Input should be a valid integer" in message and "'big'" in message


def test_bad_yaml_and_non_mapping(tmp_dir):
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML \(.* at line 2, column 1\)"):
        load_card(write(tmp_dir / "broken.yaml", "name: t\n\tsize: 1\n"), ToyCard)
    with pytest.raises(ConfigError, match=r"list\.yaml: a card must be a YAML mapping"):
        load_card(write(tmp_dir / "list.yaml", "- a\n- b\n"), ToyCard)


def test_overrides_parse_yaml_values_and_reject_unknown_keys():
    data = {"name": "t", "preprocess": {"size": 224}, "heads": [{"kind": "a"}]}
    out = apply_overrides(data, ["preprocess.size=32", "heads.0.dims=[1, 2]", "name=null", "preprocess.mean=[0.1,0.2,0.3]"], ToyCard)
    assert out == {"name": None, "preprocess": {"size": 32, "mean": [0.1, 0.2, 0.3]}, "heads": [{"kind": "a", "dims": [1, 2]}]}
    assert data["preprocess"]["size"] == 224  # the input is not modified
    # without a schema only existing keys can be set
    with pytest.raises(ConfigError, match=r"^--set preprocess.mean: unknown key 'preprocess.mean' \(valid keys here: size\)$"):
        apply_overrides(data, ["preprocess.mean=[1]"])
    with pytest.raises(ConfigError, match=r"^--set preprocess.sze: unknown key 'preprocess.sze'; did you mean 'size'\?"):
        apply_overrides(data, ["preprocess.sze=3"], ToyCard)
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides(data, ["preprocess.size"], ToyCard)
    with pytest.raises(ConfigError, match="no index of a list of 1 items"):
        apply_overrides(data, ["heads.5.kind=b"], ToyCard)
    with pytest.raises(ConfigError, match="'name' is a value, not a mapping"):
        apply_overrides({"name": "t"}, ["name.first=x"], ToyCard)


def test_load_card_with_overrides_validates_the_result(tmp_dir):
    path = write(tmp_dir / "toy.yaml", "name: toy\n")
    assert load_card(path, ToyCard, overrides=["fallback.size=8"]).fallback.size == 8
    with pytest.raises(ConfigError, match=r"toy\.yaml: key 'preprocess.size'"):
        load_card(path, ToyCard, overrides=["preprocess.size=[1]"])


@pytest.mark.parametrize("layout", ["checkout", "wheel"])
def test_cards_found_by_name_in_checkout_and_wheel_layouts(tmp_path, monkeypatch, layout):
    # checkout: <root>/mmalign + <root>/scorers ; wheel: site-packages/mmalign/_shipped/scorers
    package = tmp_path / "site" / "mmalign"
    package.mkdir(parents=True)
    folder = package / "_shipped" / "scorers" if layout == "wheel" else package.parent / "scorers"
    write(folder / "toy-b.yaml", "name: b\n")
    write(folder / "toy-a.yml", "name: a\n")
    if layout == "wheel":  # a stray folder beside the installed package must not shadow the wheel's own
        write(package.parent / "scorers" / "stray.yaml", "name: s\n")
    monkeypatch.setattr(mmalign.paths, "_PACKAGE", package)
    assert list_cards("scorers") == ["toy-a", "toy-b"]
    card = load_card("toy-b", ToyCard, kind="scorers")
    assert card.name == "b" and card.source == folder / "toy-b.yaml"
    assert load_card("toy-a", ToyCard).name == "a"
    with pytest.raises(ConfigError, match=r"toy-c: no scorer of that name in .*did you mean 'toy-[ab]'\? available scorers: toy-a, toy-b"):
        load_card("toy-c", ToyCard)


def test_list_cards_of_a_missing_folder_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(mmalign.paths, "_PACKAGE", tmp_path / "mmalign")
    assert list_cards("recipes") == []


IGNORED_IN_COPY = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "venv", "runs", "outputs", ".pytest_cache")


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_finds_its_cards(tmp_path):
    """``pip wheel . --no-deps``, install into a new venv, import from outside the checkout."""
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    shutil.copytree(root, source, ignore=IGNORED_IN_COPY)  # build outside the checkout: no stale build/ there
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels")], check=True, env=env)
    (wheel,) = (tmp_path / "wheels").glob("mmalign-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True, env=env)
    probe = (
        "import json, mmalign, mmalign.paths, mmalign.cards; "
        "print(json.dumps({'version': mmalign.__version__, 'module': mmalign.__file__, "
        "'scorers': str(mmalign.paths.shipped_dir('scorers')), 'cards': mmalign.cards.list_cards('scorers'), "
        "'recipes': mmalign.cards.list_cards('recipes')}))"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path, env=env)
    info = json.loads(out.stdout)
    site = Path(info["module"]).parent
    assert info["version"] == "0.1.0"
    assert site.is_relative_to(venv), f"imported {info['module']}, not the wheel in {venv}"
    assert Path(info["scorers"]) == site / "_shipped" / "scorers"
    assert info["cards"] == sorted(p.stem for p in (root / "scorers").glob("*.y*ml"))
    assert info["recipes"] == sorted(p.stem for p in (root / "recipes").glob("*.y*ml"))
    assert info["cards"], "the checkout ships no scorer cards, so the wheel test proves nothing"
