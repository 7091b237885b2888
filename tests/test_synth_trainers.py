"""The training scripts of the shipped synth models (``python -m mmalign.synth.train_audio`` /
``train_video``, tiny settings): a stage stopped with ``touch WORK/STOP`` and run again resumes to
exactly the weights of an uninterrupted run, and the result loads as a generator that samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

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

    from mmalign.synth.train_audio import train_dit, train_vae

    kw = {"seed": 0, "bank": 6, "batch": 2, "log": lambda line: None}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _stop_and_resume(train_vae, "vae", straight, stopped, crop=2048, **kw)
    _assert_same(AutoencoderOobleck.from_pretrained(straight / "vae").state_dict(),
                 AutoencoderOobleck.from_pretrained(stopped / "vae").state_dict())
    want, got = _stop_and_resume(train_dit, "dit", straight, stopped, **kw)
    _assert_same(want.transformer.state_dict(), got.transformer.state_dict())
    _assert_same(want.text_encoder.state_dict(), got.text_encoder.state_dict())


def test_video_stages_resume_after_stop_and_the_pipeline_loads(tmp_path):
    from diffusers import AutoencoderKLWan

    from mmalign.generators import load_generator
    from mmalign.synth.train_video import FRAMES, save_pipeline, train_dit, train_vae

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
