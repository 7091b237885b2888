"""LoRA Diffusion-DPO step on the tiny SDXL: ours vs the diffusers-script-style baseline (CPU).

* ours — latents and text embeddings encoded once (``mmalign.data.cache``), the VAE and both text
  encoders released afterwards, reference = the same UNet with LoRA disabled (the trainer's
  ``compute_loss``);
* baseline — as ``train_diffusion_dpo_sdxl.py`` does: VAE-encode both images and run both text
  encoders on every step, then the same loss and update.

Each variant runs in its own subprocess so its peak memory (``ru_maxrss``) is its own. Prints
pairs/s, peak RSS, the speed-up ``NN.Nx`` and the memory ratio. Usage:
``python benchmarks/bench_dpo_step.py [--steps 12] [--batch 2] [--res 32]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _variant(name: str, steps: int, batch: int, res: int, warmup: int) -> dict:
    import contextlib

    import torch

    torch.set_num_threads(1)
    from mmalign.align.config import load_recipe
    from mmalign.align.trainer import add_lora, compute_loss, lora_disabled, step_generator
    from mmalign.data.cache import EncodedData
    from mmalign.generators.sdxl import SDXLGenerator
    from mmalign.generators.tiny import build_tiny
    from mmalign.media import ImageBatch

    gen = SDXLGenerator(build_tiny("sdxl", seed=0), device=torch.device("cpu"))
    adapter = gen.trainable()
    recipe = load_recipe({"generator": "tiny-sdxl", "data": {"path": "-"}, "lora": {"rank": 8, "alpha": 8},
                          "batch_size": batch})
    g = torch.Generator().manual_seed(0)
    n_pairs = 16
    pixels = torch.rand(2 * n_pairs, 3, res, res, generator=g)  # chosen 0..n-1, rejected n..2n-1
    prompts = [f"a red circle left of a blue square {i}" for i in range(n_pairs)]

    def encode(idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            lat = adapter.encode_media(ImageBatch(torch.cat([pixels[idx], pixels[idx + n_pairs]])))
            cond = adapter.encode_prompts([prompts[i] for i in idx.tolist()] + [""])
        return lat, cond

    t0 = time.perf_counter()
    if name == "ours":
        chunks = [encode(torch.arange(s, min(s + batch, n_pairs))) for s in range(0, n_pairs, batch)]  # as the cache
        lat = torch.cat([torch.cat([c[0][: len(c[0]) // 2] for c in chunks]), torch.cat([c[0][len(c[0]) // 2 :] for c in chunks])])
        cond = {k: torch.cat([c[1][k][:-1] for c in chunks] + [chunks[0][1][k][-1:]]) for k in chunks[0][1]}
        items = torch.stack([torch.arange(n_pairs), torch.arange(n_pairs) + n_pairs], 1)
        cached = EncodedData("pairs", lat, cond, items, torch.arange(n_pairs), torch.tensor([[1.0, 0.0]] * n_pairs))
        pipe = adapter.pipe
        pipe.vae = pipe.text_encoder = pipe.text_encoder_2 = None  # released once cached
        gc.collect()
    encode_s = time.perf_counter() - t0
    add_lora(recipe, adapter)
    params = [p for p in adapter.denoiser.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ref = lambda: lora_disabled(adapter.denoiser)  # noqa: E731
    timed = 0.0
    for step in range(warmup + steps):
        idx = torch.arange(step * batch, step * batch + batch) % n_pairs
        start = time.perf_counter()
        if name == "ours":
            data, index = cached, idx
        else:
            lat, cond = encode(idx)
            items = torch.stack([torch.arange(batch), torch.arange(batch) + batch], 1)
            data = EncodedData("pairs", lat, cond, items, torch.arange(batch), torch.tensor([[1.0, 0.0]] * batch))
            index = torch.arange(batch)
        loss, _ = compute_loss(recipe, adapter, data, index, step_generator(0, step, 0, 0), torch.device("cpu"), ref,
                               contextlib.nullcontext)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            timed += time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": name, "pairs_per_s": steps * batch / timed, "peak_rss_mb": peak_mb, "encode_once_s": encode_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--variant", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(_variant(args.variant, args.steps, args.batch, args.res, args.warmup)))
        return
    results = {}
    for name in ("baseline", "ours"):
        cmd = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch", str(args.batch), "--res", str(args.res)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    for r in results.values():
        print(f"{r['variant']:>8}: {r['pairs_per_s']:7.2f} pairs/s, peak RSS {r['peak_rss_mb']:7.1f} MB"
              + (f" (one-time encode {r['encode_once_s']:.2f} s)" if r["variant"] == "ours" else ""))
    speed = results["ours"]["pairs_per_s"] / results["baseline"]["pairs_per_s"]
    mem = results["ours"]["peak_rss_mb"] / results["baseline"]["peak_rss_mb"]
    print(f"tiny SDXL, LoRA DPO step, batch {args.batch} pairs, {args.res}px, CPU 1 thread: "
          f"speed {speed:.1f}x, peak memory ratio (ours/baseline) {mem:.3f}")


if __name__ == "__main__":
    main()
