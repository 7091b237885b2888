"""Benchmark runner throughput: mmalign's runner vs the reference (VBench) way, same videos, same math.

Dimensions: temporal_flickering, motion_smoothness, dynamic_degree (model-free,
classical flow/interpolation fallbacks) and subject_consistency / background_consistency (feature
backbones: a DINO-preprocessed timm ViT and an open_clip ViT with random weights saved to disk,
tiny by default so the script runs on a shared 2-core CPU; ``--arch base`` uses ViT-B/16 + ViT-B/32).

* reference way (VBench ``45e79ec``): every dimension decodes every video again, loads its own
  backbone from disk, and runs one frame (or frame pair) per forward pass; dynamic_degree computes
  its flows separately;
* ours: ``run_benchmark`` — decode once, each backbone loaded once, frames batched, flows shared.

Both produce the same aggregates (checked). Prints videos/s for each and the speed-up ``NN.Nx``.
Usage: ``python benchmarks/bench_suite.py [--videos 32] [--frames 8] [--size 64] [--arch tiny|base]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mmalign.bench import formulas as fm
from mmalign.bench.backbones import (
    clip_backbone_from_model,
    clip_transform,
    dino_backbone_from_model,
    dino_transform,
    horn_schunck,
    linear_midpoint,
    register_backbone,
)
from mmalign.bench.dimensions import FPS8
from mmalign.bench.report import aggregate
from mmalign.bench.runner import run_benchmark
from mmalign.bench.suites import Entry, Suite
from mmalign.media import load_video, save_media

DIMS = ["temporal_flickering", "motion_smoothness", "dynamic_degree", "subject_consistency", "background_consistency"]


def make_dino(arch: str):
    import timm

    name = "vit_base_patch16_224" if arch == "base" else "vit_tiny_patch16_224"
    return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True).eval()


def make_clip(arch: str):
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    if arch == "base":
        return open_clip.create_model("ViT-B-32", pretrained=None).eval()
    vision = CLIPVisionCfg(layers=6, width=192, head_width=64, patch_size=32, image_size=224)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2, layers=2)
    return open_clip.CLIP(embed_dim=128, vision_cfg=vision, text_cfg=text).eval()


def load_weights(kind: str, arch: str, wdir: Path) -> torch.nn.Module:
    model = make_dino(arch) if kind == "dino" else make_clip(arch)
    model.load_state_dict(torch.load(wdir / f"{kind}.pt", map_location="cpu", weights_only=True))
    return model.eval()


def reference_way(files: list[Path], arch: str, wdir: Path) -> dict[str, float]:
    """VBench's structure: per dimension, reload the backbone and re-decode; one frame/pair per call."""
    def frames_of(path: Path) -> tuple[torch.Tensor, float]:
        v = load_video(path)
        return (v.pixels[0] * 255).round().to(torch.uint8), v.fps

    out = {}
    # temporal_flickering of every video it is given (VBench's static filter is a separate preprocessing step)
    vals = []
    for f in files:
        x, _ = frames_of(f)
        vals.append(fm.temporal_flickering(x))
    out["temporal_flickering"] = sum(vals) / len(vals)
    vals = []
    for f in files:  # motion_smoothness: one interpolation per pair
        x, _ = frames_of(f)
        even = x[0::2]
        preds = torch.stack([linear_midpoint(even[i][None], even[i + 1][None])[0] for i in range(len(even) - 1)])
        vals.append(fm.motion_smoothness(x[1::2], preds))
    out["motion_smoothness"] = sum(vals) / len(vals)
    vals = []
    for f in files:  # dynamic_degree: its own flows
        x, fps = frames_of(f)
        idx = FPS8.indices(len(x), fps)
        s = x[idx]
        scores = [fm.top_fraction_mean(horn_schunck(s[i][None].float(), s[i + 1][None].float())[0].square().sum(0).sqrt(), 0.05)
                  for i in range(len(s) - 1)]
        vals.append(float(fm.is_dynamic(scores, x.shape[-2], x.shape[-1], len(idx))))
    out["dynamic_degree"] = sum(vals) / len(vals)
    for dim, kind in (("subject_consistency", "dino"), ("background_consistency", "clip")):
        model = load_weights(kind, arch, wdir)  # each dimension loads its own backbone
        num = den = 0.0
        for f in files:
            x, _ = frames_of(f)
            feats = []
            with torch.no_grad():
                for fr in x:  # one frame per forward pass
                    if kind == "dino":
                        feats.append(model(dino_transform(fr[None].float()))[0])
                    else:
                        feats.append(model.encode_image(clip_transform(fr[None].float()))[0])
            s, c = fm.consistency_sum(torch.stack(feats))
            num, den = num + s, den + c
        out[dim] = num / den
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", choices=("tiny", "base"), default="tiny")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from mmalign.synth.prompts import sample_prompts
    from mmalign.synth.render import render

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wdir = tmp / "weights"
        wdir.mkdir()
        torch.save(make_dino(args.arch).state_dict(), wdir / "dino.pt")
        torch.save(make_clip(args.arch).state_dict(), wdir / "clip.pt")
        register_backbone("bench-dino")(lambda ctx: dino_backbone_from_model(load_weights("dino", args.arch, wdir)))
        register_backbone("bench-clip")(lambda ctx: clip_backbone_from_model(load_weights("clip", args.arch, wdir)))
        prompts = sample_prompts("video", args.videos, seed=0, split=None)
        media = render(prompts, seed=0, modality="video", size=args.size, frames=args.frames)
        names = [f"video{i:03d}-0" for i in range(args.videos)]
        files = save_media(media, tmp / "videos", names)
        suite = Suite(name="bench", modality="video", entries=[Entry(f"video{i:03d}", tuple(DIMS)) for i in range(args.videos)],
                      dimensions=DIMS, samples_per_prompt=1,
                      backbones={"dino": ["bench-dino"], "clip": ["bench-clip"], "flow": ["horn-schunck"],
                                 "interp": ["linear-interp"]})

        t0 = time.perf_counter()
        ref = reference_way(files, args.arch, wdir)
        t_ref = time.perf_counter() - t0

        t0 = time.perf_counter()
        run = run_benchmark(suite, tmp / "videos", tmp / "out", DIMS, progress=False, device="cpu")
        ours = aggregate(run)
        t_ours = time.perf_counter() - t0

    diff = max(abs((ours[d] or 0) - (ref[d] or 0)) for d in DIMS)
    print(f"{args.videos} videos x {args.frames} frames at {args.size}px, arch={args.arch}, threads={args.threads}")
    print(f"reference way: {args.videos / t_ref:.2f} videos/s ({t_ref:.1f} s)")
    print(f"mmalign runner: {args.videos / t_ours:.2f} videos/s ({t_ours:.1f} s)")
    print(f"max |aggregate difference| = {diff:.2e}")
    print(f"speed-up: {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
