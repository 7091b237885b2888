"""Reward backpropagation through the sampler: DRaFT-K (Clark et al. 2024, "Directly Fine-Tuning Diffusion
Models on Differentiable Rewards", ICLR, §4) and AlignProp (Prabhudesai et al. 2023) when K is every step.

Each training step samples one item per prompt with the policy, scores it with a differentiable scorer and
descends on ``−mean(reward)``. The latents are detached after every sampling step but the last K, so the
gradient reaches the denoiser (its LoRA) through those K steps only: DRaFT's truncated backpropagation,
which Clark et al. found both cheaper and better behaved than backpropagating through the whole chain.
The loss is ``−mean(reward)``: AlignProp's ``10 − mean(reward)`` (trl ``alignprop_trainer.py`` @ 78f1a928c^,
L277–290) up to a constant. There is no preference data and no reference model: a run's "data" is its
prompts (``data.path``), and nothing but the LoRA's size, the step count and the reward-hacking guard
(``eval.guard``, which should watch a judge the reward is not) keeps the policy near the base model.
Under ``accelerate launch`` each process samples its share of a step's prompts (seeds drawn for the whole
step) and the trainer averages the gradients, so N processes train as one with the same global batch.
"""

from __future__ import annotations

from typing import Any

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
        media = self.generator.sample_differentiable(prompts, noise, rw.grad_steps, steps=rw.steps, guidance=rw.guidance)
        reward = self.scorer.score(media, prompts, differentiable=True, progress=False).float()
        loss = -reward.mean()
        metrics: dict[str, Any] = {"loss": loss.detach(), "reward": reward.detach().mean(),
                                   "reward_std": reward.detach().std() if len(reward) > 1 else torch.zeros(())}
        return loss, metrics


__all__ = ["RewardBackprop"]
