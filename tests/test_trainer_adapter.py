"""A minimal real DiffusionAdapter for trainer tests (tiny diffusers UNet2DConditionModel + DDPMScheduler),
plus checks of the trainer's building blocks on it: a fresh LoRA equals the reference bit for bit, and
the k items of a record share their timestep and noise.

Also a command-line entry used by the kill -9 test: ``python tests/test_trainer_adapter.py RECIPE [--resume]``.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import torch

from mmalign.generators.base import Cond, DiffusionAdapter
from mmalign.media import ImageBatch, Media

torch.set_num_threads(1)


class TinyAdapter(DiffusionAdapter):
    """Epsilon-prediction on a DDPM schedule; a byte-embedding text encoder and a strided-conv image encoder."""

    prediction_type = "epsilon"
    num_train_timesteps = 1000

    def __init__(self, seed: int = 0) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.unet = UNet2DConditionModel(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                attention_head_dim=2, norm_num_groups=4)
            self.text = torch.nn.Embedding(256, 16)
            self.image = torch.nn.Conv2d(3, 4, kernel_size=2, stride=2)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.encode_calls = 0

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    @property
    def lora_target_modules(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0"]

    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        if self.text is None:
            raise RuntimeError("text encoder released")
        ids = torch.zeros(len(prompts), 8, dtype=torch.long)
        for i, p in enumerate(prompts):
            b = list(p.encode()[:8])
            ids[i, : len(b)] = torch.tensor(b, dtype=torch.long)
        return {"prompt_embeds": self.text(ids)}

    def encode_media(self, media: Media) -> torch.Tensor:
        if self.image is None:
            raise RuntimeError("image encoder released")
        self.encode_calls += len(media)
        return self.image(media.pixels * 2 - 1)

    def encoders(self) -> dict[str, torch.nn.Module]:
        return {"text": self.text, "image": self.image}

    def release_encoders(self) -> None:
        self.text = self.image = None

    def noise(self, latents, noise, t):
        return self.scheduler.add_noise(latents, noise, t.long())

    def target(self, latents, noise, t):
        return noise

    def predict(self, noisy, t, cond):
        return self.denoise(noisy, t, encoder_hidden_states=cond["prompt_embeds"].to(noisy)).sample


def write_pairs(folder: Path, n: int = 8, size: int = 16, tie_every: int = 0) -> Path:
    """A JSONL manifest of ``n`` pairs of random PNG images (winner first; every ``tie_every``-th a tie)."""
    from mmalign.media import save_media

    g = torch.Generator().manual_seed(0)
    media = ImageBatch(torch.rand(2 * n, 3, size, size, generator=g))
    paths = save_media(media, folder / "media", names=[f"{i:03d}.png" for i in range(2 * n)])
    lines = []
    for i in range(n):
        label = 0.5 if tie_every and i % tie_every == 0 else 1.0
        lines.append(json.dumps({"prompt": f"prompt {i % 3}", "chosen": f"media/{paths[2 * i].name}",
                                 "rejected": f"media/{paths[2 * i + 1].name}", "label": label}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


def base_recipe(tmp: Path, **over) -> dict:
    data = write_pairs(tmp / "data") if not (tmp / "data" / "pairs.jsonl").exists() else tmp / "data" / "pairs.jsonl"
    recipe = {"generator": "tiny-test-adapter", "data": {"path": str(data), "cache_dir": str(tmp / "cache")},
              "method": "diffusion_dpo", "lr": 1e-3, "batch_size": 2, "grad_accum": 2, "max_steps": 3,
              "lora": {"rank": 2, "alpha": 2}, "output_dir": str(tmp / "run"), "progress": False, "device": "cpu"}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(recipe.get(k), dict):
            recipe[k] = {**recipe[k], **v}
        else:
            recipe[k] = v
    return recipe


# ------------------------------------------------------------------------------------------- tests


def test_lora_init_is_bitwise_reference_and_loss_ln2(tmp_path):
    from mmalign.align.config import load_recipe
    from mmalign.align.trainer import add_lora, compute_loss, lora_disabled, step_generator
    from mmalign.data.cache import encode_dataset
    from mmalign.data.pairs import read_manifest

    adapter = TinyAdapter()
    recipe = load_recipe(base_recipe(tmp_path))
    data = encode_dataset(read_manifest(recipe.data.path), adapter, "tiny", None, progress=False)
    add_lora(recipe, adapter)
    assert any("lora_B" in n for n, _ in adapter.denoiser.named_parameters())
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    cond = {"prompt_embeds": torch.randn(2, 8, 16)}
    with torch.no_grad():
        policy = adapter.predict(x, t, cond)
        with lora_disabled(adapter.denoiser):
            ref = adapter.predict(x, t, cond)
    assert torch.equal(policy, ref)  # B = 0: policy and reference are bit-identical
    assert all(p.requires_grad for n, p in adapter.denoiser.named_parameters() if "lora_" in n)
    loss, m = compute_loss(recipe, adapter, data, torch.tensor([0, 1, 2]), step_generator(0, 0, 0, 0),
                           torch.device("cpu"), lambda: lora_disabled(adapter.denoiser), contextlib.nullcontext)
    assert loss.item() == float(torch.tensor(math.log(2), dtype=torch.float32))  # exactly ln 2 in fp32
    assert m["implicit_acc"].item() == 0.5 and m["reward_margin"].item() == 0.0


def test_noise_and_timestep_shared_within_pair():
    from mmalign.align.trainer import shared_noise

    adapter = TinyAdapter()
    b, k = 6, 2
    t, eps = shared_noise(adapter, (4, 8, 8), b, k, torch.Generator().manual_seed(0))
    assert t.shape == (k * b,) and eps.shape == (k * b, 4, 8, 8)
    for i in range(b):
        assert t[i] == t[i + b] and torch.equal(eps[i], eps[i + b])
    assert len(set(t[:b].tolist())) > 1  # different pairs draw different t
    assert not torch.equal(eps[0], eps[1])
    t4, eps4 = shared_noise(adapter, (4, 8, 8), 3, 4, torch.Generator().manual_seed(1))  # rankings: k = 4
    assert all(torch.equal(eps4[i], eps4[i + 3 * j]) and t4[i] == t4[i + 3 * j] for i in range(3) for j in range(4))


def test_full_finetune_reference_is_frozen_copy():
    import copy

    from mmalign.align.trainer import swapped_parameters

    adapter = TinyAdapter()
    ref = copy.deepcopy(adapter.denoiser).requires_grad_(False)
    with torch.no_grad():
        for p in adapter.denoiser.parameters():
            p.add_(0.01)
    x, t, cond = torch.randn(1, 4, 8, 8), torch.tensor([3]), {"prompt_embeds": torch.randn(1, 8, 16)}
    with torch.no_grad():
        moved = adapter.predict(x, t, cond)
        with swapped_parameters(adapter.denoiser, ref):
            frozen = adapter.predict(x, t, cond)
        again = adapter.predict(x, t, cond)
        expected = ref(x, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    assert torch.equal(frozen, expected) and torch.equal(moved, again) and not torch.equal(moved, frozen)


if __name__ == "__main__":  # used by the kill -9 test in test_trainer.py
    from mmalign.align.trainer import train

    recipe_path, resume = sys.argv[1], "--resume" in sys.argv
    result = train(json.loads(Path(recipe_path).read_text()), resume=resume, adapter=TinyAdapter())
    print(json.dumps({"steps": result.steps, "final": str(result.final_dir)}))
