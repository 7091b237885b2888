"""``python -m mmalign.synth.train_video``: each stage stopped with ``touch WORK/STOP`` and run again
resumes to exactly the weights of an uninterrupted run, and the result is a ``wan`` generator that
loads from disk and samples 9-frame videos (tiny settings)."""

from __future__ import annotations

import torch

from mmalign.synth.train_video import FRAMES, save_pipeline, train_dit, train_vae


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stages_resume_after_stop_and_the_pipeline_loads(tmp_path):
    from diffusers import AutoencoderKLWan

    from mmalign.generators import load_generator

    kw = {"seed": 0, "bank": 4, "batch": 2, "log": lambda line: None}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir()
    stopped.mkdir()

    train_vae(straight, 3, **kw)
    (stopped / "STOP").touch()
    train_vae(stopped, 3, **kw)
    assert not (stopped / "STOP").exists(), "STOP is consumed so a full run goes on with the next stage"
    assert torch.load(stopped / "vae_state.pt", weights_only=False)["step"] == 1
    train_vae(stopped, 3, **kw)
    want_vae = AutoencoderKLWan.from_pretrained(straight / "vae")
    _assert_same(want_vae.state_dict(), AutoencoderKLWan.from_pretrained(stopped / "vae").state_dict())
    assert len(want_vae.config.latents_std) == want_vae.config.z_dim

    want = train_dit(straight, 3, **kw)
    (stopped / "STOP").touch()
    train_dit(stopped, 3, **kw)
    assert torch.load(stopped / "dit_state.pt", weights_only=False)["step"] == 1
    got = train_dit(stopped, 3, **kw)
    _assert_same(want.transformer.state_dict(), got.transformer.state_dict())
    _assert_same(want.text_encoder.state_dict(), got.text_encoder.state_dict())

    save_pipeline(got, tmp_path / "model", shift=1.0)
    gen = load_generator(str(tmp_path / "model"))
    assert gen.family == "wan"
    video = gen.sample(["a red circle moving left"], steps=2, progress=False)
    assert video.pixels.shape == (1, FRAMES, 3, 32, 32)
