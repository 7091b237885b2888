"""SDXL UNet sampling step time: PyTorch SDPA (AttnProcessor2_0) vs the classic math attention.

Builds the UNet of stabilityai/stable-diffusion-xl-base-1.0 from its config (random weights, no
download) and times denoising steps (batch 2 = one image with classifier-free guidance) under each
attention backend, in the same run. On CUDA: real size, 1024×1024 (128×128 latents), fp16 (or bf16).
Without CUDA it runs on CPU at a reduced size (``--size small``) and says so.

    python benchmarks/gpu_sampling.py [--size real|small] [--steps 5] [--dtype fp16|bf16]
"""

from __future__ import annotations

import argparse
import time

import torch

from mmalign.generators.attention import set_attention_backend

# UNet config of stabilityai/stable-diffusion-xl-base-1.0 (unet/config.json)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    use_linear_projection=True, norm_num_groups=32,
)
SMALL_UNET = dict(SDXL_UNET, sample_size=32, block_out_channels=(32, 64, 128), transformer_layers_per_block=(1, 1, 1),
                  attention_head_dim=(2, 4, 8), cross_attention_dim=64, addition_embed_type="text_time",
                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8)


def time_steps(unet: torch.nn.Module, inputs: dict, steps: int, device: torch.device) -> float:
    """Mean seconds per UNet step (after one warm-up step)."""
    with torch.inference_mode():
        unet(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            unet(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    from diffusers import UNet2DConditionModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["real", "small"], default=None, help="default: real on CUDA, small on CPU")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    size = args.size or ("real" if cuda else "small")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype] if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(1)
        print(f"NOTE: no CUDA device; running on CPU, fp32, at size={size} (not the real SDXL UNet). "
              "Numbers below are NOT representative of GPU sampling.")
    cfg = SDXL_UNET if size == "real" else SMALL_UNET
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).to(device, dtype).eval()
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    b, s = 2, cfg["sample_size"]
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    res = s * 8
    inputs = dict(
        sample=torch.randn(b, 4, s, s, device=device, dtype=dtype),
        timestep=torch.tensor(500, device=device),
        encoder_hidden_states=torch.randn(b, 77, cfg["cross_attention_dim"], device=device, dtype=dtype),
        added_cond_kwargs={"text_embeds": torch.randn(b, pooled, device=device, dtype=dtype),
                           "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * b, device=device, dtype=dtype)},
    )
    print(f"device={device} ({torch.cuda.get_device_name() if cuda else 'cpu'}) size={size} dtype={dtype} "
          f"params={n_params:.0f}M latents={b}x4x{s}x{s} steps={args.steps}")
    results = {}
    for backend in ("math", "sdpa"):
        set_attention_backend(unet, backend)
        results[backend] = time_steps(unet, inputs, args.steps, device)
        print(f"{backend:5s}: {results[backend] * 1000:9.1f} ms/step")
    print(f"sdpa speedup over math: {results['math'] / results['sdpa']:.1f}x")


if __name__ == "__main__":
    main()
