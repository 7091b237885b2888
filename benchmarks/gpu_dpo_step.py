"""LoRA Diffusion-DPO steps on a real-size SDXL UNet (random weights): ours vs the diffusers-script-style step.

On CUDA: the SDXL base architecture (UNet 2.6B, VAE, both CLIP text encoders at full size, random
weights), bf16, 128×128 latents (1024 px), 1 pair per step. Variants:

* ``script``  — VAE-encodes both images and runs both text encoders every step, math attention
  (the reference script used xformers / default attention), reference = LoRA disabled;
* ``ours-math`` / ``ours-flash`` — cached latents and text embeddings (encoders released), the
  trainer's ``compute_loss``, SDPA forced to the math or the flash kernel; ``--compile`` adds
  ``torch.compile`` of the UNet.

Reports pairs/s and peak GPU memory (``torch.cuda.max_memory_allocated``) and ``NN.Nx`` against
``script``. Without CUDA it runs on CPU at a **reduced size** (small UNet/VAE/encoders, 16×16
latents, fp32; flash is CUDA-only so it is skipped) and says so: those numbers do not describe SDXL.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def _pipe(full: bool, dtype: torch.dtype, device: torch.device):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from mmalign.generators.tiny import clip_tokenizer

    tok = clip_tokenizer()
    if full:  # stabilityai/stable-diffusion-xl-base-1.0 configs
        te = dict(h1=768, l1=12, n1=12, h2=1280, l2=32, n2=20)
        unet_kw = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                       transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), norm_num_groups=32)
        vae_kw = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=1024)
    else:
        te = dict(h1=32, l1=2, n1=4, h2=64, l2=2, n2=4)
        unet_kw = dict(sample_size=16, block_out_channels=(32, 64, 128), layers_per_block=1,
                       transformer_layers_per_block=(1, 1, 1), attention_head_dim=(2, 4, 8), norm_num_groups=16)
        vae_kw = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=128)

    def clip(h, layers, heads, projection):
        cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=h, intermediate_size=4 * h, num_hidden_layers=layers,
                             num_attention_heads=heads, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                             pad_token_id=1, projection_dim=h)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)

    with torch.device(device):
        te1, te2 = clip(te["h1"], te["l1"], te["n1"], False), clip(te["h2"], te["l2"], te["n2"], True)
        unet = UNet2DConditionModel(
            in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=te["h1"] + te["h2"], use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256 if full else 8,
            projection_class_embeddings_input_dim=(6 * 256 if full else 6 * 8) + te["h2"], **unet_kw)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.13025,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **vae_kw)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=sched)
    pipe.vae.to(torch.float32)  # the diffusers SDXL DPO script keeps the VAE in fp32
    pipe.unet.to(dtype), te1.to(dtype), te2.to(dtype)
    return pipe


def _peak() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def run(variant: str, full: bool, steps: int, warmup: int, compile_unet: bool) -> dict:
    from mmalign.align.config import load_recipe
    from mmalign.align.trainer import add_lora, compute_loss, lora_disabled, step_generator
    from mmalign.data.cache import EncodedData
    from mmalign.generators.attention import set_attention_backend
    from mmalign.generators.sdxl import SDXLGenerator
    from mmalign.media import ImageBatch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    res = 1024 if full else 128
    torch.manual_seed(0)
    gen = SDXLGenerator(_pipe(full, dtype, device), device=device)
    adapter = gen.trainable()
    recipe = load_recipe({"generator": "sdxl-random", "data": {"path": "-"}, "batch_size": 1,
                          "attention": {"script": "math", "ours-math": "math", "ours-flash": "flash"}[variant]})
    pixels = torch.rand(2, 3, res, res, device=device)
    prompt = ["a photo of a red circle left of a blue square"]

    def encode():
        with torch.no_grad():
            lat = adapter.encode_media(ImageBatch(pixels)).float()
            cond = {k: v.float() for k, v in adapter.encode_prompts(prompt + [""]).items()}
        return EncodedData("pairs", lat, cond, torch.tensor([[0, 1]]), torch.tensor([0]), torch.tensor([[1.0, 0.0]]))

    data = encode()
    if variant != "script":
        adapter.pipe.vae = adapter.pipe.text_encoder = adapter.pipe.text_encoder_2 = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    add_lora(recipe, adapter)
    set_attention_backend(adapter.denoiser, recipe.attention)
    if cuda:
        adapter.denoiser.enable_gradient_checkpointing()
    if compile_unet and variant != "script":
        adapter.pipe.unet = torch.compile(adapter.pipe.unet)
    params = [p for p in adapter.denoiser.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    elapsed = 0.0
    for step in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = encode() if variant == "script" else data
        loss, _ = compute_loss(recipe, adapter, batch, torch.tensor([0]), step_generator(0, step, 0, 0), device,
                               lambda: lora_disabled(adapter.denoiser), autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            elapsed += time.perf_counter() - t0
    return {"variant": variant + ("+compile" if compile_unet and variant != "script" else ""),
            "pairs_per_s": steps / elapsed, "peak_gib": _peak()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet in our variants")
    ap.add_argument("--variants", default="script,ours-math,ours-flash")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        print("NOTE: no CUDA device — running on CPU at a REDUCED size (small UNet/VAE/text encoders, 16×16 latents, "
              "fp32); flash attention skipped. These numbers do not describe real SDXL.")
    else:
        print(f"device: {torch.cuda.get_device_name()} — real-size SDXL UNet, random weights, bf16, 128×128 latents")
    variants = [v for v in args.variants.split(",") if cuda or v != "ours-flash"]
    results = []
    for v in variants:
        r = run(v, cuda, args.steps, args.warmup, args.compile)
        results.append(r)
        print(f"{r['variant']:>20}: {r['pairs_per_s']:8.3f} pairs/s, peak GPU memory "
              + (f"{r['peak_gib']:.2f} GiB" if cuda else "n/a (CPU)"), flush=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    base = next((r for r in results if r["variant"] == "script"), None)
    if base is not None:
        for r in results:
            if r is not base:
                print(f"{r['variant']} vs script: {r['pairs_per_s'] / base['pairs_per_s']:.1f}x pairs/s")


if __name__ == "__main__":
    main()
