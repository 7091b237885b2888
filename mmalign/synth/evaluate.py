"""Oracle evaluation of a generator on the synthetic world's held-out prompts."""

from __future__ import annotations

from typing import Any

from mmalign.errors import ConfigError
from mmalign.synth.oracle import evaluate
from mmalign.synth.prompts import sample_prompts


def evaluate_generator(
    generator: Any,
    n: int = 200,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    progress: bool = True,
    split: str = "heldout",
    lora: Any = None,
) -> dict[str, Any]:
    """Sample one item for each of ``n`` held-out prompts (seeded) and score them with the oracle.
    ``split="train"`` uses prompts of the training split instead (seen prompts, new noise): the gap
    to held-out is what the model fails to generalise to unseen combinations.

    ``generator`` is a loaded :class:`~mmalign.generators.base.Generator` or a name for
    :func:`~mmalign.generators.load_generator`, with ``lora`` (its ``lora=``: LoRAs to attach).
    """
    if isinstance(generator, str):
        from mmalign.generators import load_generator

        name, generator = generator, load_generator(generator, lora=lora)
    elif lora:
        raise ConfigError("lora= attaches to a generator given by name; load a Generator with "
                          "load_generator(..., lora=...) instead")
    else:
        name = type(generator).__name__
    prompts = sample_prompts(generator.modality, n, seed=seed, split=split)
    media = generator.sample(prompts, n=1, seed=seed, steps=steps, guidance=guidance, progress=progress)
    result = evaluate(media, prompts)
    return {
        "generator": name,
        "n": n,
        "seed": seed,
        "split": split,
        "accuracy": result.per_skill_accuracy(),
        "faithfulness": float(result.faithfulness.mean()),
        "quality": float(result.quality.mean()),
    }
