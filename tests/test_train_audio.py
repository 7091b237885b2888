"""``python -m mmalign.synth.train_audio``: a stage stopped with ``touch WORK/STOP`` and run again
resumes to exactly the weights of an uninterrupted run (VAE and DiT stages, tiny settings)."""

from __future__ import annotations

import torch

from mmalign.synth.train_audio import train_dit, train_vae


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stages_resume_after_stop_exactly(tmp_path):
    from diffusers import AutoencoderOobleck

    kw = {"seed": 0, "bank": 6, "batch": 2, "log": lambda line: None}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir()
    stopped.mkdir()

    train_vae(straight, 3, crop=2048, **kw)
    (stopped / "STOP").touch()
    train_vae(stopped, 3, crop=2048, **kw)
    assert not (stopped / "STOP").exists(), "STOP is consumed so a full run goes on with the next stage"
    assert torch.load(stopped / "vae_state.pt", weights_only=False)["step"] == 1
    train_vae(stopped, 3, crop=2048, **kw)
    _assert_same(AutoencoderOobleck.from_pretrained(straight / "vae").state_dict(),
                 AutoencoderOobleck.from_pretrained(stopped / "vae").state_dict())

    want = train_dit(straight, 3, **kw)
    (stopped / "STOP").touch()
    train_dit(stopped, 3, **kw)
    assert torch.load(stopped / "dit_state.pt", weights_only=False)["step"] == 1
    got = train_dit(stopped, 3, **kw)
    _assert_same(want.transformer.state_dict(), got.transformer.state_dict())
    _assert_same(want.text_encoder.state_dict(), got.text_encoder.state_dict())
