"""bf16 against fp32 on this machine, each measured against the GEMM roofline of its dtype.

One run measures, in fp32 and in bf16 (weights cast once, :mod:`mmalign.devices`):

1. the GEMM roofline: the best GFLOP/s of a 2048³ matmul in each dtype;
2. scoring: an open_clip ViT-B-16 scorer (random weights) through mmalign's ``ClipScorer``, 128 real
   photo crops (matplotlib's ``grace_hopper.jpg``), 8 prompts; also bf16 under ``torch.autocast`` with
   fp32 weights, the per-op alternative the weight cast replaces;
3. a mid-size SDXL-class pipeline built from diffusers classes (UNet block channels 128/256/512,
   cross-attention 2048, 32×32 latents, random weights): sampling 4 images in one batch, and one
   LoRA Diffusion-DPO step of the trainer (2 pairs = 4 latents per forward, policy + reference +
   backward) with the recipe's ``mixed_precision`` no / bf16 (the model in bf16, fp32 master LoRA
   weights); also the step under autocast (fp32 weights), and sampling with the UNet in ``channels_last``;
4. the shipped synth-sdxl: sampling (16 images) and one LoRA DPO step;
5. the synth-video suite: sampling its prompts with synth-video and evaluating them with
   ``run_benchmark`` (backbones in the same dtype).

For each task: throughput in both dtypes, the ratio printed as ``N.Nx`` on a line naming the task,
each as a percentage of the matching GEMM roofline (FLOPs counted by ``torch.utils.flop_counter`` in
a separate pass), and what ``dtype="auto"`` picks for it. On a CUDA device a GPU branch adds the bf16
GEMM and SDPA's flash / memory-efficient kernels against the math kernel; without one it prints why
it is skipped. ``torch.compile`` is not measured on CPU (its compile time on two cores exceeds the
whole run); say ``--compile`` to time it for the scorer. Results: ``benchmarks/results/precision/``.

Usage: ``python benchmarks/bench_precision.py [--quick] [--compile]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import (  # noqa: E402
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from mmalign.devices import auto_dtype, cpu_bf16_feature, dtype_name, num_parameters  # noqa: E402
from mmalign.fileio import atomic_write_json  # noqa: E402

OUT = Path(__file__).parent / "results" / "precision"
DTYPES = (torch.float32, torch.bfloat16)


# -- counting and timing ---------------------------------------------------------------------------


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's flop counter knows SDPA's CUDA kernels but not the CPU flash kernel: same count."""
    return sdpa_flop_count(query, key, value)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; an untimed pass)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def best_time(fn: Callable[[], Any], reps: int) -> float:
    """The fastest of ``reps`` calls, in seconds (the least disturbed by other processes)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_roofline(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n³ matmul in ``dtype`` (best of ``reps``, after one warm-up)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)

    def run() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()
    return 2 * n**3 / best_time(run, reps) / 1e9


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    return next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")),
                platform.processor() or platform.machine())


class Report:
    """Rows of (task, dtype) measurements; prints each task's ratio line and writes the JSON."""

    def __init__(self, roofline: dict[torch.dtype, float]):
        self.roofline, self.tasks = roofline, []

    def add(self, task: str, unit: str, items: float, flops: float, seconds: dict[torch.dtype, float],
            params: int | None = None, note: str = "") -> dict[str, Any]:
        """``items`` per call (images, pairs, videos), ``flops`` per call, the best call time per dtype."""
        row: dict[str, Any] = {"task": task, "unit": unit, "items": items, "gflop_per_call": flops / 1e9,
                               "params": params, "note": note}
        for dt, s in seconds.items():
            name = dtype_name(dt)
            row[name] = {"seconds": s, "throughput": items / s, "gflops": flops / s / 1e9,
                         "roofline_pct": 100 * flops / s / 1e9 / self.roofline[dt]}
        row["ratio"] = seconds[torch.float32] / seconds[torch.bfloat16]
        if params is not None:
            chosen, why = auto_dtype(torch.device("cpu"), params)
            faster = "bf16" if row["ratio"] > 1 else "fp32"
            row["auto"] = {"dtype": dtype_name(chosen), "why": why, "faster": faster,
                           "ok": dtype_name(chosen) == faster or abs(row["ratio"] - 1) < 0.05}
        self.tasks.append(row)
        f, b = row["fp32"], row["bf16"]
        auto = f"; auto → {row['auto']['dtype']}" if "auto" in row else ""
        print(f"{task}: {row['ratio']:.1f}x bf16 vs fp32 — fp32 {f['throughput']:.2f} {unit}/s "
              f"({f['roofline_pct']:.0f}% of fp32 GEMM), bf16 {b['throughput']:.2f} {unit}/s "
              f"({b['roofline_pct']:.0f}% of bf16 GEMM){auto}", flush=True)
        return row


# -- 1. scoring ------------------------------------------------------------------------------------


def photo_crops(n: int, size: int = 256, seed: int = 0):
    """``n`` square crops of matplotlib's grace_hopper.jpg at random positions and scales, resized to ``size``."""
    from matplotlib import cbook
    from PIL import Image

    from mmalign.media import ImageBatch

    rng = np.random.default_rng(seed)
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        full = np.asarray(im.convert("RGB"))
    out = []
    for _ in range(n):
        s = int(rng.integers(96, min(full.shape[:2])))
        y, x = int(rng.integers(0, full.shape[0] - s + 1)), int(rng.integers(0, full.shape[1] - s + 1))
        out.append(np.asarray(Image.fromarray(full[y : y + s, x : x + s]).resize((size, size), Image.Resampling.BICUBIC)))
    return ImageBatch(torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255)


def bench_scoring(report: Report, n_images: int, compile_: bool) -> None:
    import open_clip

    from mmalign.scoring.clip import ClipScorer
    from mmalign.scoring.preprocess import ImagePreprocess

    torch.manual_seed(0)
    base = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    media = photo_crops(n_images)
    prompts = [f"a photo of a person, style {i % 8}" for i in range(n_images)]

    def scorer(dtype: torch.dtype) -> ClipScorer:
        return ClipScorer(copy.deepcopy(base), tokenizer, ImagePreprocess("center_crop", 224), formula="cosine",
                          device="cpu", dtype=dtype, name=f"vit-b-16-{dtype_name(dtype)}")

    per_image = count_flops(lambda: base.encode_image(torch.zeros(1, 3, 224, 224)))
    per_prompt = count_flops(lambda: base.encode_text(tokenizer(["a photo of a person, style 0"])))
    flops = n_images * per_image + len(set(prompts)) * per_prompt
    seconds, scores = {}, {}
    for dt in DTYPES:
        s = scorer(dt)
        s.score(media[:16], prompts[:16], batch_size=16)  # warm-up
        seconds[dt] = best_time(lambda: scores.__setitem__(dt, s.score(media, prompts, batch_size=16)), 1)
        del s
    a, b = scores[torch.float32].double(), scores[torch.bfloat16].double()
    rho = float(np.corrcoef(np.argsort(np.argsort(a.numpy())), np.argsort(np.argsort(b.numpy())))[0, 1])
    report.add(f"scoring ViT-B-16 ({n_images} images, batch 16)", "images", n_images, flops, seconds,
               params=num_parameters([base]), note=f"Spearman bf16 vs fp32 scores {rho:.4f}")
    # the per-op alternative: fp32 weights, bf16 autocast (a subset: it is the slow one)
    k = min(32, n_images)
    s = scorer(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s.score(media[:16], prompts[:16], batch_size=16)
        t_auto = best_time(lambda: s.score(media[:k], prompts[:k], batch_size=16), 1)
    t_bf16 = seconds[torch.bfloat16] * k / n_images
    print(f"scoring ViT-B-16 under torch.autocast (fp32 weights): {k / t_auto:.2f} images/s, "
          f"{t_bf16 / t_auto:.1f}x the weights cast to bf16", flush=True)
    report.tasks[-1]["autocast_images_per_s"] = k / t_auto
    if compile_:
        s = scorer(torch.bfloat16)
        s.model.visual = torch.compile(s.model.visual)
        start = time.perf_counter()
        s.score(media[:16], prompts[:16], batch_size=16)
        compile_s = time.perf_counter() - start
        t = best_time(lambda: s.score(media, prompts, batch_size=16), 1)
        print(f"scoring ViT-B-16 bf16 + torch.compile: {n_images / t:.2f} images/s "
              f"({seconds[torch.bfloat16] / t:.2f}x the eager bf16; compile {compile_s:.0f} s)", flush=True)
        report.tasks[-1]["compile"] = {"images_per_s": n_images / t, "compile_s": compile_s}


# -- 2./3. SDXL-class pipelines ----------------------------------------------------------------------


def save_mid_sdxl(folder: Path) -> Path:
    """A mid-size SDXL-class pipeline (random weights) saved with ``save_pretrained``: UNet 128/256/512 with
    cross-attention 2048 (two CLIP text encoders, 768 + 1280), a VAE from 256 px to 32×32×4 latents."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from mmalign.generators._common import write_defaults
    from mmalign.generators.tiny import clip_text_encoder, clip_tokenizer

    torch.manual_seed(0)
    tok = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2), attention_head_dim=(2, 4, 8), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=6 * 256 + 1280)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 32, 64, 64),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=256, scaling_factor=0.13025)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=clip_text_encoder(len(tok), 768), tokenizer=tok,
                                     text_encoder_2=clip_text_encoder(len(tok), 1280, projection=1280), tokenizer_2=tok,
                                     unet=unet, scheduler=sched)
    pipe.save_pretrained(folder)
    write_defaults(folder, {"family": "sdxl", "steps": 4, "guidance": 5.0, "height": 256, "width": 256})
    return folder


def write_pairs(folder: Path, n: int, size: int) -> Path:
    """A JSONL manifest of ``n`` pairs of random ``size``-px PNG images (the trainer's input)."""
    from mmalign.media import ImageBatch, save_media

    g = torch.Generator().manual_seed(0)
    paths = save_media(ImageBatch(torch.rand(2 * n, 3, size, size, generator=g)), folder / "media",
                       names=[f"{i:03d}.png" for i in range(2 * n)])
    rows = [{"prompt": f"a red circle left of a blue square {i}", "chosen": f"media/{paths[2 * i].name}",
             "rejected": f"media/{paths[2 * i + 1].name}", "label": 1.0} for i in range(n)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "pairs.jsonl"


def bench_sampling(report: Report, name: str, source: str, prompts: list[str], batch: int,
                   channels_last: bool = False) -> None:
    from mmalign.generators import load_generator

    gens = {dt: load_generator(source, device="cpu", dtype=dt) for dt in DTYPES}
    params = num_parameters([gens[torch.float32].denoiser])

    def run(dt: torch.dtype) -> None:
        gens[dt].sample(prompts, n=1, seed=0, batch_size=batch, progress=False)

    flops = count_flops(lambda: run(torch.float32))  # also the fp32 warm-up
    run(torch.bfloat16)
    seconds = {dt: best_time(lambda: run(dt), 1) for dt in DTYPES}
    report.add(f"{name} sampling ({len(prompts)} images, batch {batch}, {gens[torch.float32].defaults.get('steps')} steps)",
               "images", len(prompts), flops, seconds, params=params)
    if channels_last:
        gens[torch.bfloat16].denoiser.to(memory_format=torch.channels_last)
        t = best_time(lambda: run(torch.bfloat16), 1)
        print(f"{name} sampling, bf16 UNet in channels_last: {seconds[torch.bfloat16] / t:.2f}x the default layout "
              f"({'pays' if t < 0.95 * seconds[torch.bfloat16] else 'does not pay'})", flush=True)
        report.tasks[-1]["channels_last_speedup"] = seconds[torch.bfloat16] / t


def bench_dpo_step(report: Report, name: str, source: str, data: Path, work: Path, autocast_variant: bool = False) -> None:
    """One LoRA Diffusion-DPO optimizer step of the trainer (batch 2 pairs), mixed_precision no vs bf16."""
    from mmalign.align.trainer import Trainer
    from mmalign.generators import load_generator

    def trainer(precision: str, tag: str) -> Trainer:
        recipe = {"generator": source, "data": {"path": str(data), "cache_dir": str(work / "cache")},
                  "method": "diffusion_dpo", "batch_size": 2, "grad_accum": 1, "max_steps": 100, "lr": 1e-5,
                  "lora": {"rank": 8, "alpha": 8}, "mixed_precision": precision, "device": "cpu", "progress": False,
                  "output_dir": str(work / f"run-{name}-{tag}")}
        t = Trainer(recipe, generator=load_generator(source, device="cpu"))
        t.setup()
        return t

    trainers = {torch.float32: trainer("no", "fp32"), torch.bfloat16: trainer("bf16", "bf16")}
    assert trainers[torch.bfloat16].dtype == torch.bfloat16
    params = num_parameters([trainers[torch.float32].adapter.denoiser])
    flops = count_flops(trainers[torch.float32].step)  # also the fp32 warm-up
    trainers[torch.bfloat16].step()
    seconds = {dt: best_time(t.step, 2) for dt, t in trainers.items()}
    report.add(f"{name} LoRA DPO step (2 pairs)", "pairs", 2, flops, seconds, params=params)
    if autocast_variant:  # fp32 frozen weights, bf16 per op (accelerate's CPU bf16)
        t = trainers[torch.float32]
        t.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        t.step()
        s = best_time(t.step, 1)
        print(f"{name} LoRA DPO step under torch.autocast (fp32 weights): {seconds[torch.float32] / s:.1f}x fp32, "
              f"{seconds[torch.bfloat16] / s:.1f}x the trainer's bf16 (weights cast, fp32 masters)", flush=True)
        report.tasks[-1]["autocast_ratio_vs_fp32"] = seconds[torch.float32] / s


# -- 4. the synth-video suite ----------------------------------------------------------------------


def bench_video_suite(report: Report, work: Path, n_prompts: int | None) -> None:
    from mmalign.bench.runner import run_benchmark
    from mmalign.bench.suites import load_suite
    from mmalign.generators import load_generator
    from mmalign.media import save_media

    suite = load_suite("synth-video")
    prompts = suite.prompts()[:n_prompts] if n_prompts else suite.prompts()
    gens = {dt: load_generator("synth-video", device="cpu", dtype=dt) for dt in DTYPES}
    params = num_parameters([gens[torch.float32].denoiser])

    def sample(dt: torch.dtype) -> Any:
        return gens[dt].sample(prompts, n=1, seed=0, progress=False)

    flops = count_flops(lambda: gens[torch.float32].sample(prompts[:1], n=1, seed=0, progress=False)) * len(prompts)
    sample(torch.bfloat16)
    seconds, media = {}, {}
    for dt in DTYPES:
        seconds[dt] = best_time(lambda: media.__setitem__(dt, sample(dt)), 1)
    report.add(f"synth-video suite sampling ({len(prompts)} videos)", "videos", len(prompts), flops, seconds, params=params)

    seconds, flops = {}, 0
    for dt in DTYPES:
        folder = work / f"videos-{dtype_name(dt)}"
        save_media(media[dt], folder, [suite.naming.format(prompt=p, index=0) for p in prompts])

        def evaluate(tag: str) -> None:
            run_benchmark(suite, folder, work / f"bench-{tag}", dtype=dtype_name(dt), device="cpu", cache=False,
                          progress=False)

        if dt == torch.float32:
            flops = count_flops(lambda: evaluate("count"))
        else:
            evaluate("warm")
        seconds[dt] = best_time(lambda: evaluate(dtype_name(dt)), 1)
    report.add(f"synth-video suite evaluation ({len(prompts)} videos, run_benchmark)", "videos", len(prompts), flops,
               seconds, note="the suite's one learned backbone, synth-hps, loads in fp32 whatever the runner's dtype "
                             "(mmalign/synth/bench.py) and the rest is model-free: the ratio is run-to-run noise")


# -- the GPU branch --------------------------------------------------------------------------------


def bench_gpu() -> dict[str, Any]:
    if not torch.cuda.is_available():
        print("GPU branch skipped: no CUDA device (torch.cuda.is_available() is False)", flush=True)
        return {"skipped": "no CUDA device"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "bf16_supported": torch.cuda.is_bf16_supported()}
    out["gemm_gflops"] = {dtype_name(dt): gemm_roofline(dt, dev, n=8192, reps=10) for dt in DTYPES}
    print(f"GPU {out['device']}: GEMM 8192³ fp32 {out['gemm_gflops']['fp32']:.0f} GFLOP/s, "
          f"bf16 {out['gemm_gflops']['bf16']:.0f} GFLOP/s", flush=True)
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(8, 16, 4096, 64, generator=g, device=dev, dtype=torch.bfloat16) for _ in range(3))
    flops = sdpa_flop_count(q.shape, k.shape, v.shape)
    times = {}
    for backend in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, k, v)
                torch.cuda.synchronize()

                def run() -> None:
                    torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    torch.cuda.synchronize()

                times[backend.name] = best_time(run, 10)
        except RuntimeError as err:
            print(f"GPU SDPA {backend.name}: unavailable ({str(err)[:80]})", flush=True)
    for name, s in times.items():
        ratio = times.get("MATH", s) / s
        print(f"GPU SDPA {name} bf16 (8×16 heads × 4096 tokens × 64): {flops / s / 1e12:.1f} TFLOP/s, "
              f"{ratio:.1f}x the math kernel", flush=True)
    out["sdpa_seconds"] = times
    return out


# -- the run ----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and prompts (a smoke run, not the figures)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on the bf16 scorer")
    ap.add_argument("--skip", nargs="*", default=[], choices=["scoring", "mid", "synth-sdxl", "video"])
    args = ap.parse_args()
    load_start = os.getloadavg()
    cpu = torch.device("cpu")
    print(f"CPU: {cpu_model()}, bf16 feature: {cpu_bf16_feature()}, "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads; "
          f"load average {load_start[0]:.2f}", flush=True)
    roofline = {dt: gemm_roofline(dt, cpu) for dt in DTYPES}
    print(f"GEMM 2048³ roofline: fp32 {roofline[torch.float32]:.0f} GFLOP/s, bf16 {roofline[torch.bfloat16]:.0f} GFLOP/s "
          f"({roofline[torch.bfloat16] / roofline[torch.float32]:.1f}x)", flush=True)
    report = Report(roofline)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "scoring" not in args.skip:
            bench_scoring(report, 32 if args.quick else 128, args.compile)
        if "mid" not in args.skip:
            mid = str(save_mid_sdxl(work / "mid-sdxl"))
            bench_sampling(report, "mid-size SDXL", mid, [f"a red circle {i}" for i in range(4)], batch=4, channels_last=True)
            bench_dpo_step(report, "mid-size SDXL", mid, write_pairs(work / "mid-data", 8, 256), work, autocast_variant=True)
        if "synth-sdxl" not in args.skip:
            from mmalign.synth.prompts import sample_prompts

            bench_sampling(report, "synth-sdxl", "synth-sdxl", sample_prompts("image", 4 if args.quick else 16, seed=0),
                           batch=8)
            bench_dpo_step(report, "synth-sdxl", "synth-sdxl", write_pairs(work / "synth-data", 8, 32), work)
        if "video" not in args.skip:
            bench_video_suite(report, work, 4 if args.quick else None)
    gpu = bench_gpu()
    load_end = os.getloadavg()
    contended = max(load_start[0], load_end[0]) > 0.5 * (os.cpu_count() or 1) + 0.5
    if contended:
        print(f"note: load average {load_start[0]:.2f} → {load_end[0]:.2f} on {os.cpu_count()} CPUs: other processes "
              "shared the machine; rerun alone for the figures", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / ("bench_precision_quick.json" if args.quick else "bench_precision.json")
    atomic_write_json(path, {
        "command": "python benchmarks/bench_precision.py" + (" --quick" if args.quick else ""),
        "machine": {"cpu": cpu_model(), "bf16_feature": cpu_bf16_feature(),
                    "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_average": {"start": load_start[0], "end": load_end[0]}, "contended": contended},
        "gemm_roofline_gflops": {dtype_name(dt): v for dt, v in roofline.items()},
        "tasks": report.tasks, "gpu": gpu}, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
