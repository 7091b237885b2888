"""Images/s of ``load_scorer(...).score`` vs two baselines, in the same run.

    python benchmarks/bench_scoring.py                       # CPU, ViT-B-16 random weights, 128 images
    python benchmarks/bench_scoring.py --device cuda --batch 64 --dtype bf16

* ours — ``load_scorer(card)`` once, then ``score(images, prompts, batch_size=B)`` (HPS letterbox
  preprocessing on tensors, raw cosine);
* reload loop — what callers of the reference ``hpsv2.score`` do per image (tgxs002/HPSv2
  @ 866735e, ``hpsv2/img_score.py``: ``score`` reloads the checkpoint on every call): for every
  image, ``torch.load`` the checkpoint and ``load_state_dict`` it into the cached model, preprocess the one image, tokenize the prompt, forward one image;
* bare forward — a batched ``open_clip`` forward with the same preprocessing and no mmalign code
  (the overhead check: ours/bare should be ≥ 1.0x up to timing noise).

The reload loop is slow, so by default it is timed on the first ``--reload-n`` images and reported
as images/s (the per-image cost does not depend on the number of images).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--reload-n", type=int, default=32)
    ap.add_argument("--size", type=int, default=256, help="input images are size×(size·3/4) before letterboxing")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip

    from mmalign.scoring import load_scorer
    from mmalign.scoring.base import resolve_dtype
    from mmalign.scoring.preprocess import ImagePreprocess

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type, enabled=False)
    arch = "ViT-B-16"
    tmp = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    ckpt = tmp / "vit-b-16-random.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    card = tmp / "bench-hps.yaml"
    card.write_text(f"""name: bench-hps
description: HPS pipeline on random ViT-B-16 weights (benchmark only)
architecture: {{family: open_clip, model: {arch}, tokenizer: open_clip}}
checkpoint: {{source: local, path: '{ckpt}', state_dict_key: state_dict}}
preprocessing: {{kind: letterbox, size: 224}}
score: {{formula: cosine, bt_scale: 100.0}}
modalities: [image]
license: none
paper: none
""")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.n, 3, args.size, args.size * 3 // 4, generator=g)
    prompts = [f"a photo of object number {i % 8}" for i in range(args.n)]
    tokenizer = open_clip.get_tokenizer(arch)
    pre = ImagePreprocess("letterbox", 224)

    # ours: load once, score batched
    t0 = time.perf_counter()
    scorer = load_scorer(card, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    scorer.score(images[:2], prompts[:2], batch_size=args.batch, progress=False)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    ours = scorer.score(images, prompts, batch_size=args.batch, progress=False)
    _sync(device)
    ours_ips = args.n / (time.perf_counter() - t0)

    # bare batched open_clip forward, same preprocessing
    bare_model = open_clip.create_model(arch, pretrained=None).to(device).eval()
    bare_model.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True)["state_dict"])

    def bare(n: int) -> torch.Tensor:
        out = []
        with torch.no_grad(), autocast:
            for s in range(0, n, args.batch):
                px = pre(images[s:s + args.batch].to(device))
                img = bare_model.encode_image(px, normalize=True)
                txt = bare_model.encode_text(tokenizer(prompts[s:s + args.batch]).to(device), normalize=True)
                out.append((img * txt).sum(-1).float())
        return torch.cat(out)

    bare(2)
    _sync(device)
    t0 = time.perf_counter()
    ref = bare(args.n)
    _sync(device)
    bare_ips = args.n / (time.perf_counter() - t0)

    # reload loop: the checkpoint is loaded for every image (hpsv2.score per image)
    cached = open_clip.create_model(arch, pretrained=None).to(device).eval()
    m = min(args.reload_n, args.n)
    t0 = time.perf_counter()
    loop = []
    reload_s = 0.0
    for i in range(m):
        t1 = time.perf_counter()
        cached.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True)["state_dict"])
        _sync(device)
        reload_s += time.perf_counter() - t1
        with torch.no_grad(), autocast:
            img = cached.encode_image(pre(images[i:i + 1].to(device)), normalize=True)
            txt = cached.encode_text(tokenizer([prompts[i]]).to(device), normalize=True)
            loop.append((img * txt).sum(-1).float())
    _sync(device)
    reload_ips = m / (time.perf_counter() - t0)

    agree = float((ours[:m].cpu() - torch.cat(loop).cpu()).abs().max())
    agree_bare = float((ours.cpu() - ref.cpu()).abs().max())
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; {arch} random weights; {args.n} images {args.size}x{args.size * 3 // 4}; batch {args.batch}; {args.dtype}")
    print(f"ours (load_scorer once, batched score): {ours_ips:8.2f} images/s  (load {load_s:.1f}s, not timed)")
    print(f"reload loop (checkpoint reloaded per image, {m} images): {reload_ips:8.2f} images/s"
          f"  ({reload_s / m:.2f}s reload + {1 / reload_ips - reload_s / m:.2f}s forward per image)")
    print(f"bare forward (batched open_clip, same preprocessing): {bare_ips:8.2f} images/s")
    print(f"speedup vs reload loop: {ours_ips / reload_ips:4.1f}x"
          f"  (loading once removes the reload share, {reload_s / m * reload_ips:.0%} of the loop's time)")
    print(f"speedup vs bare forward: {ours_ips / bare_ips:4.1f}x")
    print(f"max |score difference| vs reload loop {agree:.2e}, vs bare forward {agree_bare:.2e}")
    print(json.dumps({"ours_ips": ours_ips, "reload_ips": reload_ips, "bare_ips": bare_ips, "reload_s_per_image": reload_s / m,
                      "device": dev}), file=sys.stderr)


if __name__ == "__main__":
    main()
