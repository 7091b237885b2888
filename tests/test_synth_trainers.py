"""The training scripts of the shipped models (``python -m mmalign.zoo.train_sdxl`` / ``train_video`` /
``train_audio``, tiny settings): a stage stopped with ``touch WORK/STOP`` and run again resumes to
exactly the weights of an uninterrupted run; the command each preset names writes the folder the
preset loads, with ``eval.json`` next to the model; folders are swapped in atomically."""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _stop_and_resume(stage: Callable[..., Any], name: str, straight: Path, stopped: Path, **kw: Any) -> tuple[Any, Any]:
    """Run ``stage`` for 3 steps in ``straight``; in ``stopped`` stop it after step 1, then run it again."""
    for folder in (straight, stopped):
        folder.mkdir(exist_ok=True)
    want = stage(straight, 3, **kw)
    (stopped / "STOP").touch()
    stage(stopped, 3, **kw)
    assert not (stopped / "STOP").exists(), "STOP is consumed so a full run goes on with the next stage"
    assert torch.load(stopped / f"{name}_state.pt", weights_only=False)["step"] == 1
    return want, stage(stopped, 3, **kw)


def test_audio_stages_resume_after_stop_exactly(tmp_path):
    from diffusers import AutoencoderOobleck

    from mmalign.zoo.train_audio import train_dit, train_vae

    kw = {"seed": 0, "bank": 6, "batch": 2, "log": lambda line: None}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _stop_and_resume(train_vae, "vae", straight, stopped, crop=2048, **kw)
    _assert_same(AutoencoderOobleck.from_pretrained(straight / "vae").state_dict(),
                 AutoencoderOobleck.from_pretrained(stopped / "vae").state_dict())
    dit_with_dropout = functools.partial(train_dit, attr_dropout=0.3)  # its draws are part of the resumed RNG
    want, got = _stop_and_resume(dit_with_dropout, "dit", straight, stopped, **kw)
    _assert_same(want.transformer.state_dict(), got.transformer.state_dict())
    _assert_same(want.text_encoder.state_dict(), got.text_encoder.state_dict())


def test_speed_perturb_shifts_pitch_and_tempo_exactly():
    from mmalign.synth.oracle import analyze_audio
    from mmalign.synth.render import render
    from mmalign.zoo.train_audio import SAMPLE_RATE, speed_perturb

    x = render(["a slow mid melody on a square synth"], seed=0, sample_rate=SAMPLE_RATE).samples[0]
    before = analyze_audio(x[0].numpy(), SAMPLE_RATE)
    for semitones in (-12, -5, 7, 12):
        y = speed_perturb(x, 2 ** (semitones / 12))
        assert y.shape[-1] == round(x.shape[-1] / 2 ** (semitones / 12))
        after = analyze_audio(y[0].numpy(), SAMPLE_RATE)
        assert abs(after["midi_median"] - before["midi_median"] - semitones) < 0.3
        assert after["onsets"] == before["onsets"]  # same notes, faster or slower
        assert abs(float(y.abs().max()) - float(x.abs().max())) < 0.02
    assert torch.allclose(speed_perturb(x, 1.0), x, atol=1e-5)


def test_drop_attributes_leaves_out_only_attribute_words():
    from mmalign.synth.prompts import all_prompts
    from mmalign.zoo.train_audio import drop_attributes, tokenizer

    prompts = all_prompts("audio")
    g = torch.Generator().manual_seed(0)
    assert drop_attributes(prompts, 0.0, g) == prompts
    assert drop_attributes(prompts, 1.0, g) == ["a melody on a synth"] * len(prompts)
    dropped = drop_attributes(prompts * 20, 0.3, g)
    vocab = set(tokenizer().get_vocab())
    for full, part in zip(prompts * 20, dropped):
        assert set(part.split()) <= set(full.split()) and {"a", "melody", "on", "synth"} <= set(part.split())
        assert all("\u2581" + w in vocab for w in part.split())  # no unknown tokens
    kept = sum(len(p.split()) - 5 for p in dropped) / (3 * len(dropped))
    assert 0.6 < kept < 0.8  # each of the 3 attribute words is kept with probability 0.7


def test_video_stages_resume_after_stop_and_the_pipeline_loads(tmp_path):
    from diffusers import AutoencoderKLWan

    from mmalign.generators import load_generator
    from mmalign.zoo.train_video import FRAMES, save_pipeline, train_dit, train_vae

    kw = {"seed": 0, "bank": 4, "batch": 2, "log": lambda line: None}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _stop_and_resume(train_vae, "vae", straight, stopped, **kw)
    vae = AutoencoderKLWan.from_pretrained(straight / "vae")
    _assert_same(vae.state_dict(), AutoencoderKLWan.from_pretrained(stopped / "vae").state_dict())
    assert len(vae.config.latents_std) == vae.config.z_dim
    want, got = _stop_and_resume(train_dit, "dit", straight, stopped, **kw)
    _assert_same(want.transformer.state_dict(), got.transformer.state_dict())
    _assert_same(want.text_encoder.state_dict(), got.text_encoder.state_dict())

    save_pipeline(got, tmp_path / "model", shift=1.0)
    gen = load_generator(str(tmp_path / "model"))
    assert gen.family == "wan"
    assert gen.sample(["a red circle moving left"], steps=2, progress=False).pixels.shape == (1, FRAMES, 3, 32, 32)

    # --init continues the saved model (step 0 is exactly it) and --role-weight adds the color-role loss;
    # the head is part of the resumed state, so a stopped continuation also resumes exactly
    from diffusers import WanTransformer3DModel

    lines: list[str] = []
    cont = {**kw, "bank": 16, "init": tmp_path / "model", "role_weight": 1.0, "log": lines.append}
    (tmp_path / "zero").mkdir()
    same = train_dit(tmp_path / "zero", 0, **cont)
    _assert_same(same.transformer.state_dict(),
                 WanTransformer3DModel.from_pretrained(tmp_path / "model" / "transformer").state_dict())
    want, got = _stop_and_resume(train_dit, "dit", tmp_path / "c_straight", tmp_path / "c_stopped", **cont)
    _assert_same(want.text_encoder.state_dict(), got.text_encoder.state_dict())
    assert any('"role"' in line for line in lines)


def test_color_roles_point_at_the_first_color_and_the_one_it_turns_to():
    from mmalign.errors import ConfigError
    from mmalign.synth.prompts import parse_prompt, sample_prompts
    from mmalign.zoo.train_video import color_roles, tokenizer

    tok = tokenizer()
    prompts = sample_prompts("video", 40, seed=3, split="train")
    change = [p for p in prompts if parse_prompt(p, "video").kind == "change"]
    ids, mask, pos = color_roles(prompts, tok)
    assert len(ids) == len(mask) == len(pos) == len(change) > 0
    for p, row, (i, j) in zip(change, ids, pos.tolist()):
        spec = parse_prompt(p, "video")
        assert tok.convert_ids_to_tokens([int(row[i]), int(row[j])]) == ["\u2581" + spec.objects[0][0], "\u2581" + spec.color_to]
        assert i < j
    with pytest.raises(ConfigError, match="no change prompts"):
        color_roles([p for p in prompts if p not in change], tok)


def test_init_without_the_dit_stage_or_an_out_folder_is_refused(capsys):
    from mmalign.zoo.train_video import main

    for args in (["--init", "assets/models/synth-video"], ["--init", "assets/models/synth-video", "--stage", "dit"]):
        with pytest.raises(SystemExit):
            main(args)
        assert "add --stage dit and --out FOLDER" in capsys.readouterr().err


#: tiny settings of each preset's training command, and the family the loaded folder must have
TINY_RUNS = {
    "synth-sdxl": (["--vae-bank", "8", "--bank", "8"], "sdxl"),
    "synth-video": (["--bank", "4"], "wan"),
    "synth-audio": (["--bank", "4", "--vae-batch", "2"], "stable_audio"),
}


@pytest.mark.parametrize("preset", sorted(TINY_RUNS))
def test_preset_command_writes_where_the_preset_loads(preset, tmp_path, monkeypatch):
    """``python -m <module>`` of ``PRESETS[preset]`` with its default folders (asset root moved to a temp
    folder): the model and its eval.json land in the folder ``load_generator(preset)`` reads."""
    import mmalign.generators as generators
    import mmalign.zoo.stages as stages

    root = tmp_path / "assets"
    monkeypatch.setattr(stages, "asset_path", lambda *parts: root.joinpath(*parts))
    monkeypatch.setattr(generators, "asset_path", lambda *parts: root.joinpath(*parts))
    module = generators.PRESETS[preset].split()[2]  # "python -m <module> ..."
    extra, family = TINY_RUNS[preset]
    importlib.import_module(module).main(["--vae-steps", "2", "--steps", "2", "--batch", "2", "--eval-n", "2", *extra])

    folder = root / "models" / preset
    gen = generators.load_generator(preset)
    assert gen.family == family
    result = json.loads((folder / "eval.json").read_text())
    assert result["generator"] == preset
    assert (folder / "train_log.jsonl").read_text() == (root / "models" / f"{preset}.work" / "train_log.jsonl").read_text()
    assert sorted(p.name for p in root.joinpath("models").iterdir()) == [preset, f"{preset}.work"]  # no temporary folders


def test_atomic_folder_swaps_whole_folders_and_keeps_the_old_one_on_failure(tmp_path):
    from mmalign.checkpoint import atomic_folder

    target = tmp_path / "model"
    atomic_folder(target, lambda tmp: (tmp / "a.txt").write_text("1"))
    atomic_folder(target, lambda tmp: (tmp / "b.txt").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]

    def fail(tmp: Path) -> None:
        (tmp / "c.txt").write_text("3")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_folder(target, fail)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
