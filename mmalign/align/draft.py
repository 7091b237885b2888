"""Reward backpropagation through the sampler: DRaFT-K (Clark et al. 2024, "Directly Fine-Tuning Diffusion
Models on Differentiable Rewards", ICLR, §4) and AlignProp (Prabhudesai et al. 2023) when K is every step.

Each training step samples one item per prompt with the policy, scores it with a differentiable scorer and
descends on ``−mean(reward)``. The latents are detached after every sampling step but the last K, so the
gradient reaches the denoiser (its LoRA) through those K steps only: DRaFT's truncated backpropagation,
which Clark et al. found both cheaper and better behaved than backpropagating through the whole chain.
The loss is ``−mean(reward)``: AlignProp's ``10 − mean(reward)`` (trl ``alignprop_trainer.py`` @ 78f1a928c^,
L277–290) up to a constant. There is no preference data: a run's "data" is its prompts (``data.path``).
What keeps the policy near the base model is the LoRA's size, the step count, the reward-hacking guard
(``eval.guard``, which should watch a judge the reward is not) and, with ``reward.kl_weight`` > 0, DPOK's
KL regulariser (Fan et al. 2023, "DPOK: Reinforcement Learning for Fine-tuning Text-to-Image Diffusion
Models"): the KL between the policy's and the reference's sampling chains is bounded by the sum of the
per-step KLs, each ∝ ‖ε_θ(x_t) − ε_ref(x_t)‖² for Gaussian steps of equal variance, so the loss adds
``kl_weight · mean_t mean ‖ε_θ − ε_ref‖²`` over the steps the reward's gradient flows through, ε_ref being
the reference denoiser (LoRA disabled) run without gradients on the policy's own input.
Under ``accelerate launch`` each process samples its share of a step's prompts (seeds drawn for the whole
step) and the trainer averages the gradients, so N processes train as one with the same global batch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from mmalign.align.config import Recipe
from mmalign.errors import ConfigError
from mmalign.generators.base import Generator


class RewardBackprop:
    """The prompts and the reward of a ``method: draft`` run, and the loss of one micro-batch."""

    def __init__(self, recipe: Recipe, generator: Generator | None, device: torch.device) -> None:
        from mmalign.data.prompts import read_prompts
        from mmalign.scoring import load_scorer

        if generator is None:
            raise ConfigError("method: draft samples while it trains and needs the generator, not a bare adapter")
        self.recipe, self.generator, self.device = recipe, generator, device
        self.reference: Callable[[], Any] | None = None  # the trainer's reference context (reward.kl_weight)
        self.prompts = read_prompts(recipe.data.path)
        self.scorer = load_scorer(recipe.reward.scorer, device=str(device))
        for module in self.scorer.modules():
            module.requires_grad_(False)

    def __len__(self) -> int:
        return len(self.prompts)

    def loss(self, index: torch.Tensor, generator: torch.Generator,
             part: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``−mean(reward)`` of this process's share of the global micro-batch ``index``; the sampling seeds
        are drawn for the whole micro-batch from ``generator`` first, as :func:`compute_loss` draws its noise."""
        g = len(index)
        if g % part[1]:
            raise ConfigError(f"a global micro-batch of {g} prompts does not split over {part[1]} processes")
        rows = slice(part[0] * g // part[1], (part[0] + 1) * g // part[1])
        seeds = torch.randint(0, 2**31 - 1, (g,), generator=generator)[rows].tolist()
        prompts = [self.prompts[int(i)] for i in index[rows]]
        noise = [torch.Generator(self.generator.device).manual_seed(s) for s in seeds]
        rw = self.recipe.reward
        steps = int(rw.steps or self.generator.defaults.get("steps", 30))
        penalties: list[torch.Tensor] = []
        anchor = contextlib.nullcontext()
        if rw.kl_weight > 0:
            if self.reference is None:
                raise ConfigError("reward.kl_weight needs the trainer's reference model; set it to 0 outside the trainer")
            anchor = kl_anchor(self.generator.denoiser, self.reference, steps - rw.grad_steps, penalties)
        with anchor:
            media = self.generator.sample_differentiable(prompts, noise, rw.grad_steps, steps=steps, guidance=rw.guidance)
        reward = self.scorer.score(media, prompts, differentiable=True, progress=False).float()
        loss = -reward.mean()
        metrics: dict[str, Any] = {"reward": reward.detach().mean(),
                                   "reward_std": reward.detach().std() if len(reward) > 1 else torch.zeros(())}
        if penalties:
            kl = torch.stack(penalties).mean()
            loss = loss + rw.kl_weight * kl
            metrics["kl"] = kl.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


@contextlib.contextmanager
def kl_anchor(denoiser: torch.nn.Module, reference: Callable[[], Any], skip: int,
              penalties: list[torch.Tensor]) -> Iterator[None]:
    """While active, every denoiser call after the first ``skip`` sampling steps appends ``mean ‖ε_θ − ε_ref‖²``
    to ``penalties``: ε_ref is the same call under ``reference()`` without gradients. A step is a timestep: most
    diffusers pipelines batch the two classifier-free-guidance branches into one call a step, Wan's calls its
    transformer once for each, so calls are grouped by the timestep they are made at."""
    steps, last_t, inside = [0], [None], [False]

    def first(out: Any) -> torch.Tensor:
        return out if torch.is_tensor(out) else out[0]  # a tensor, a tuple or a diffusers BaseOutput

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        if inside[0]:
            return
        t = timestep_of(args, kwargs)
        if t is None or steps[0] == 0 or t != last_t[0]:  # no timestep found: each call is a step
            steps[0], last_t[0] = steps[0] + 1, t
        if steps[0] <= skip or not torch.is_grad_enabled():
            return
        inside[0] = True
        try:
            with torch.no_grad(), reference():
                ref = first(module(*args, **kwargs))
        finally:
            inside[0] = False
        penalties.append((first(out).float() - ref.float()).pow(2).mean())

    handle = denoiser.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def timestep_of(args: tuple, kwargs: dict) -> float | None:
    """The timestep a denoiser is called at: the ``timestep`` keyword (Wan, SD3) or the second positional argument
    (UNets, ``unet(latents, t, ...)``), as one number (a batch's timesteps are equal within a sampling step)."""
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if torch.is_tensor(t):
        return float(t.detach().flatten()[0]) if t.numel() else None
    return None if t is None else float(t)


__all__ = ["RewardBackprop", "kl_anchor", "timestep_of"]
