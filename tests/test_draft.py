"""Reward backpropagation (method: draft): the truncated differentiable sampler and the trainer's runs,
on a real tiny SDXL pipeline (diffusers' classes, loaded through ``load_generator``) and the shipped synth-hps."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from mmalign.align.config import load_recipe
from mmalign.align.trainer import train
from mmalign.errors import ConfigError
from mmalign.generators import load_generator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red square", "a yellow circle"]


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    from mmalign.generators.tiny import save_tiny

    return save_tiny("sdxl", tmp_path_factory.mktemp("draft") / "sdxl")


def _noise(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_the_differentiable_sample_is_the_plain_sample_with_gradients_through_the_last_k_steps(sdxl_folder):
    gen = load_generator(sdxl_folder)
    gen.pipe.unet.requires_grad_(True)
    inputs_with_grad = []
    hook = gen.pipe.unet.register_forward_hook(lambda m, args, kw, out: inputs_with_grad.append(args[0].requires_grad),
                                               with_kwargs=True)
    media = gen.sample_differentiable(PROMPTS[:2], _noise([3, 4]), grad_steps=2, steps=4)
    hook.remove()
    # steps 0-1 run on detached latents, step 2 on the output of detach, step 3 on step 2's output
    assert inputs_with_grad == [False, False, False, True]
    with torch.no_grad():
        plain = gen._generate(PROMPTS[:2], _noise([3, 4]), 4, gen.defaults["guidance"])
    torch.testing.assert_close(media.pixels, plain.float().clamp(0, 1))
    media.pixels.mean().backward()
    grads = [p.grad for p in gen.pipe.unet.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ConfigError, match="grad_steps"):
        gen.sample_differentiable(PROMPTS[:1], _noise([0]), grad_steps=5, steps=4)


def _recipe(tmp_path, folder, **over) -> dict:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    recipe = {"generator": str(folder), "data": {"path": str(prompts)}, "method": "draft",
              "reward": {"scorer": "synth-hps", "grad_steps": 1}, "lr": 1e-2, "batch_size": 2, "max_steps": 2,
              "lora": {"rank": 2, "alpha": 2}, "seed": 3, "output_dir": str(tmp_path / "run"), "progress": False,
              "device": "cpu"}
    recipe.update(over)
    return recipe


def test_a_draft_run_trains_the_lora_on_the_reward_and_resumes_to_the_same_weights(tmp_path, sdxl_folder):
    straight = train(_recipe(tmp_path, sdxl_folder, output_dir=str(tmp_path / "a")))
    assert straight.steps == 2 and {"reward", "reward_std", "loss"} <= set(straight.last_metrics)
    assert straight.last_metrics["loss"] == pytest.approx(-straight.last_metrics["reward"])
    a = load_file(str(straight.final_dir / "pytorch_lora_weights.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # the reward's gradient arrived

    train(_recipe(tmp_path, sdxl_folder, output_dir=str(tmp_path / "b"), max_steps=1))  # a run "killed" after step 1
    resumed = train(_recipe(tmp_path, sdxl_folder, output_dir=str(tmp_path / "b")), resume=True)
    b = load_file(str(resumed.final_dir / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_draft_recipes_are_checked_before_any_work(tmp_path, sdxl_folder):
    with pytest.raises(ConfigError, match="needs 'reward'"):
        load_recipe({k: v for k, v in _recipe(tmp_path, sdxl_folder).items() if k != "reward"})
    with pytest.raises(ConfigError, match="remove 'reward'"):
        load_recipe(_recipe(tmp_path, sdxl_folder, method="diffusion_dpo"))
    with pytest.raises(ConfigError, match="reward.grad_steps"):
        load_recipe(_recipe(tmp_path, sdxl_folder), ["reward.grad_steps=0"])
    with pytest.raises(Exception, match="no gradient"):  # the oracle scores exactly and has no gradient
        train(_recipe(tmp_path, sdxl_folder, reward={"scorer": "synth-oracle"}, max_steps=1))


def test_the_shipped_draft_recipe_loads():
    r = load_recipe("synth-draft")
    assert r.method == "draft" and r.reward.scorer == "synth-hps" and r.eval.judge == "synth-oracle"


@pytest.mark.parametrize("family", ["sdxl", "stable_audio"])
def test_only_the_last_k_denoiser_calls_receive_the_rewards_gradient(tmp_path, family):
    """DRaFT-K's truncation also cuts a multistep solver's stored predictions (Stable Audio's DPM-Solver), and
    works through the older ``callback(i, t, latents)`` of pipelines without ``callback_on_step_end``."""
    from mmalign.generators.tiny import save_tiny

    gen = load_generator(save_tiny(family, tmp_path / family))
    gen.denoiser.requires_grad_(True)
    reached = []

    def watch(module, args, kwargs, out):
        out = out[0] if isinstance(out, tuple) else out.sample
        i = len(reached)
        reached.append(False)
        out.register_hook(lambda g: reached.__setitem__(i, True))

    hook = gen.denoiser.register_forward_hook(watch, with_kwargs=True)
    media = gen.sample_differentiable(PROMPTS[:1], _noise([1]), grad_steps=2, steps=5)
    hook.remove()
    media.data.square().mean().backward()
    assert reached == [False, False, False, True, True]


def test_the_kl_anchor_compares_the_last_k_steps_with_the_reference_and_enters_the_loss(tmp_path, sdxl_folder):
    """DPOK's regulariser: zero while the LoRA is zero (policy = reference), one term per step with gradients,
    and its gradient reaches the LoRA; in a run the loss is −reward + kl_weight · kl."""
    import json

    from mmalign.align.draft import kl_anchor
    from mmalign.align.trainer import lora_disabled
    from peft import LoraConfig, inject_adapter_in_model

    gen = load_generator(sdxl_folder)
    unet = gen.denoiser
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]), unet)
    lora_b = [p for n, p in unet.named_parameters() if "lora_B" in n]
    penalties: list[torch.Tensor] = []
    with kl_anchor(unet, lambda: lora_disabled(unet), skip=1, penalties=penalties):
        gen.sample_differentiable(PROMPTS[:2], _noise([3, 4]), grad_steps=3, steps=4)
    assert len(penalties) == 3 and all(float(p.detach()) == 0.0 for p in penalties)
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.1)
    penalties.clear()
    with kl_anchor(unet, lambda: lora_disabled(unet), skip=1, penalties=penalties):
        gen.sample_differentiable(PROMPTS[:2], _noise([3, 4]), grad_steps=3, steps=4)
    assert len(penalties) == 3 and all(float(p.detach()) > 0 for p in penalties)
    torch.stack(penalties).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)

    run = train(_recipe(tmp_path, sdxl_folder, reward={"scorer": "synth-hps", "grad_steps": 2, "kl_weight": 5.0}))
    rows = [json.loads(line) for line in (run.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "kl" in r]
    assert [r["step"] for r in steps] == [1, 2] and steps[0]["kl"] == 0.0 and steps[1]["kl"] > 0
    m = run.last_metrics
    assert m["loss"] == pytest.approx(-m["reward"] + 5.0 * m["kl"], rel=1e-5)


def test_the_kl_anchor_counts_sampling_steps_not_calls_when_a_pipeline_calls_once_per_guidance_branch():
    """Wan's pipeline calls its transformer twice a step (conditional, then unconditional): the anchor must skip
    the first sampling steps, not the first calls, and compare both branches of each later step."""
    from mmalign.align.draft import kl_anchor, timestep_of
    from mmalign.align.trainer import lora_disabled
    from peft import LoraConfig, inject_adapter_in_model

    gen = load_generator("synth-video")
    dit = gen.denoiser
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]), dit)
    seen: list[float] = []
    watch = dit.register_forward_hook(lambda m, a, k, o: seen.append(timestep_of(a, k)), with_kwargs=True)
    penalties: list[torch.Tensor] = []
    with kl_anchor(dit, lambda: lora_disabled(dit), skip=3, penalties=penalties):
        gen.sample_differentiable(["a static red circle"], _noise([1]), grad_steps=2, steps=5)
    watch.remove()
    assert len(set(seen)) == 5 and len(seen) == 2 * 5 + 2 * 2  # two branches a step, plus the reference's calls
    assert len(penalties) == 2 * 2  # the last 2 steps, both guidance branches (counting calls would give 10 - 3)
    assert timestep_of((torch.zeros(1), torch.tensor([7.0])), {}) == 7.0 and timestep_of((), {"timestep": 3}) == 3.0
