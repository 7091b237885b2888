"""Train synth-iqa, the synthetic world's image-quality model, on simulated mean opinion scores.

    python -m mmalign.zoo.train_quality

writes ``assets/models/synth-iqa/`` (the :class:`~mmalign.synth.quality.QualityNet` folder the card
``scorers/synth-iqa.yaml`` loads) with ``train_report.json``.

Data, as an IQA study collects it (SPAQ, KonIQ-10k): pictures of the kinds the model will judge —
frames of synth-video samples, synth-sdxl samples, and renders of the grammar with Gaussian noise and blur
of random strength (:func:`mmalign.zoo.train_scorers.corrupted_renders`), so clean, sharp pictures are
among them — each rated for quality alone by a panel of simulated people
(:meth:`~mmalign.synth.annotators.Annotator.rate_quality`); the label is the panel's mean opinion score.
Prompts of the train split for training; the report's correlations (SRCC, PLCC, the IQA literature's
measures) are on held-out prompts' pictures against one other rater panel and against the noise-free
quality, separately for generated video frames, the pictures the video reward will see.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from scipy import stats

from mmalign.checkpoint import atomic_folder
from mmalign.fileio import atomic_write_json
from mmalign.media import ImageBatch
from mmalign.paths import asset_path
from mmalign.synth.annotators import Annotator
from mmalign.synth.quality import QualityNet
from mmalign.zoo.stages import TrainStage, seeded
from mmalign.zoo.train_scorers import corrupted_renders, generated_groups


def pictures(n_video: int, n_image: int, n_render: int, seed: int, split: str) -> dict[str, ImageBatch]:
    """The pictures of one split by source: every frame of ``n_video`` synth-video samples, ``n_image``
    synth-sdxl samples and ``n_render`` corrupted renders."""
    from mmalign.synth.prompts import sample_prompts

    video, _ = generated_groups("synth-video", n_video, 1, seed, split, "video")
    image, _ = generated_groups("synth-sdxl", n_image, 1, seed + 1, split, "image")
    drawn = sample_prompts("image", n_render, seed=seed + 2, split=split)
    render = corrupted_renders(drawn, "image", seed + 2, random.Random(seed), drawn)
    return {"video frames": ImageBatch(video.pixels.flatten(0, 1)), "synth-sdxl": ImageBatch(image.pixels),
            "renders": ImageBatch(render.pixels)}


def mos(images: ImageBatch, raters: int, seed: int) -> torch.Tensor:
    """Mean opinion score of a panel of ``raters`` simulated people (seeds ``seed …``)."""
    return torch.stack([Annotator(seed=seed + j).rate_quality(images) for j in range(raters)]).mean(0)


def correlations(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    p, t = pred.double().numpy(), target.double().numpy()
    return {"srcc": float(stats.spearmanr(p, t).statistic), "plcc": float(stats.pearsonr(p, t).statistic)}


@seeded
def run(out: Path, seed: int = 0, n_video: int = 400, n_image: int = 1500, n_render: int = 3000, raters: int = 5,
        steps: int = 3000, batch_size: int = 128, lr: float = 2e-3, width: int = 16, work: Path | None = None,
        log=print) -> dict:
    """Train into ``work`` (resumable: ``touch WORK/STOP`` stops it, the same call resumes; default ``OUT.work``),
    evaluate on held-out prompts, write the model folder ``out`` with ``train_report.json``."""
    t0 = time.time()
    train = pictures(n_video, n_image, n_render, seed, "train")
    x = torch.cat([b.pixels for b in train.values()])
    y = mos(ImageBatch(x), raters, seed + 1)
    held = pictures(n_video // 4, n_image // 4, n_render // 4, seed + 1000, "heldout")
    log(f"data: {len(x)} train pictures ({', '.join(f'{len(b)} {k}' for k, b in train.items())}), "
        f"{sum(len(b) for b in held.values())} held-out ({time.time() - t0:.0f}s)")

    model = QualityNet(size=x.shape[-1], width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    work = work or out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    stage = TrainStage(work, "iqa", model, opt, sched, seed, every=500, log=log,
                       clip=None, log_every=max(1, steps // 10))

    def loss(rng: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(x), (batch_size,), generator=rng)
        return {"loss": torch.nn.functional.mse_loss(model(x[idx]), y[idx])}

    stage.run(steps, loss)
    if stage.step < steps:
        log(f"stopped at step {stage.step}/{steps}; run the same command again to resume")
        return {"stopped_at": stage.step}

    model.eval()
    report: dict = {"scorer": "synth-iqa", "seed": seed, "train_pictures": len(x), "raters": raters, "steps": steps,
                    "heldout": {}}
    with torch.no_grad():
        for name, b in held.items():
            pred = model(b.pixels)
            panel = mos(b, raters, seed + 2001)
            truth = Annotator(noise=0.0).rate_quality(b)
            report["heldout"][name] = {"n": len(b), "vs_panel": correlations(pred, panel), "vs_truth": correlations(pred, truth),
                                       "panel_vs_truth": correlations(panel, truth),
                                       "mean_truth": float(truth.mean()), "mean_pred": float(pred.mean())}
    report["seconds"] = round(time.time() - t0, 1)
    log(str(report))
    atomic_folder(out, lambda tmp: model.save_pretrained(str(tmp)))
    atomic_write_json(out / "train_report.json", report)
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="model folder (default: assets/models/synth-iqa, the one its card loads)")
    ap.add_argument("--work", type=Path, default=None, help="folder of the resumable training state (default: OUT.work)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-video", type=int, default=400, help="synth-video samples of train prompts (every frame is a picture)")
    ap.add_argument("--n-image", type=int, default=1500, help="synth-sdxl samples of train prompts")
    ap.add_argument("--n-render", type=int, default=3000, help="renders of train prompts with random noise and blur")
    ap.add_argument("--raters", type=int, default=5, help="simulated raters whose mean rating labels each picture")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16, help="channels of the full-resolution convolutions")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run(args.out or asset_path("models", "synth-iqa"), args.seed, args.n_video, args.n_image, args.n_render, args.raters,
        args.steps, args.batch_size, args.lr, args.width, args.work, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
