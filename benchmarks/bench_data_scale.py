"""Does training scale with the data? Peak resident memory and steps/s of `mmalign train` at 1k, 4k and 16k pairs.

    python benchmarks/bench_data_scale.py                  # 1k, 4k, 16k pairs (~10 min on 2 cores)
    python benchmarks/bench_data_scale.py --sizes 500 2000

For each size, Pick-a-Pic-format parquet shards (``jpg_0, jpg_1, label_0, caption``; small JPEGs drawn on
the fly, one row group per 1,000 rows, ~12% ties as in Pick-a-Pic) are written, then a fresh process runs
``mmalign.train`` with ``recipes/sdxl-diffusion-dpo.yaml`` on a tiny SDXL pipeline saved with diffusers'
own classes: read the shards, build the latent and text cache, 200 LoRA DPO steps. Each child reports its
peak resident memory (``ru_maxrss``) and the steps/s of its last 180 steps. A first round builds each cache
(its peak memory counts, its steps/s is printed apart); two timed rounds, the sizes in both orders, read it,
so a slow moment of the machine (or the disk writing back a cache just built) does not land on one size;
the script prints the peak memory (the largest) and the mean steps/s of the timed rounds for each size, and the ratios
of the largest size to the smallest (goal: memory ≤ 1.15×, steps/s within 10%) and writes ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROWS_PER_GROUP = 1000
STEPS = 200  # the issue asks for 20; at ~0.1 s a step on 2 cores, rates over 15 or 50 steps varied up to 2× run to run
WARMUP = 20  # steps left out of steps/s (allocator and kernel warm-up)


def write_shards(folder: Path, pairs: int, seed: int = 0) -> Path:
    """``pairs`` Pick-a-Pic rows in shards of 4 row groups; images are 40×48 JPEGs of random coloured blocks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def jpeg() -> bytes:
        blocks = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    per_file = 4 * ROWS_PER_GROUP
    for f, start in enumerate(range(0, pairs, per_file)):
        n = min(per_file, pairs - start)
        labels = rng.choice([1.0, 0.0, 0.5], size=n, p=[0.44, 0.44, 0.12]).tolist()
        table = pa.table({"jpg_0": [jpeg() for _ in range(n)], "jpg_1": [jpeg() for _ in range(n)], "label_0": labels,
                          "caption": [f"a photo of thing number {start + i}" for i in range(n)]})
        pq.write_table(table, folder / f"train-{f:05d}.parquet", row_group_size=ROWS_PER_GROUP)
    return folder


def child(data: Path, model: Path, work: Path) -> None:
    """One training run in this process; prints its measurements as one JSON line."""
    from mmalign.align.trainer import train

    t0 = time.perf_counter()
    res = train("sdxl-diffusion-dpo", overrides=[
        f"generator={model}", f"data.path={data}", "data.resolution=32", f"data.cache_dir={work / 'cache'}",
        f"max_steps={STEPS}", "batch_size=8", "grad_accum=1", "optimizer.name=adamw", "mixed_precision=no",
        "gradient_checkpointing=false", "device=cpu", "checkpoint_every=0", f"output_dir={work / 'run'}",
        "progress=false"])
    lines = [json.loads(line) for line in (res.output_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    elapsed = [line["step"] * 8 / line["pairs_per_s"] for line in lines]  # pairs_per_s is the run's running mean
    steps_per_s = (STEPS - WARMUP) / (elapsed[-1] - elapsed[WARMUP - 1])  # steady state: steps after the warm-up
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak_mib, "steps_per_s": steps_per_s, "wall_s": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--work", type=Path, default=Path("runs/bench-data-scale"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_data_scale.json"))
    ap.add_argument("--child", nargs=3, type=Path, metavar=("DATA", "MODEL", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    from mmalign.fileio import atomic_write_json
    from mmalign.generators.tiny import save_tiny

    model = args.work / "tiny-sdxl"
    if not (model / "model_index.json").exists():
        save_tiny("sdxl", model)
    import shutil

    runs: dict[int, list[dict]] = {n: [] for n in args.sizes}
    builds: dict[int, dict] = {}
    # round 0 builds each cache; rounds 1 and 2 (sizes in both orders) read it and are the timed ones, so the
    # disk writing back a just-built cache does not land on one size's training steps
    for rnd, order in enumerate((args.sizes, args.sizes[::-1], args.sizes)):
        for n in order:
            data = args.work / f"pickapic-{n}"
            if not data.exists():
                write_shards(data, n)
            work = args.work / f"run-{n}"
            if rnd == 0 and work.exists():
                shutil.rmtree(work)  # round 0 builds the cache
            shutil.rmtree(work / "run", ignore_errors=True)
            proc = subprocess.run([sys.executable, __file__, "--child", str(data), str(model), str(work)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{n} pairs failed:\n{proc.stderr[-3000:]}")
            record = json.loads(proc.stdout.strip().splitlines()[-1])
            if rnd == 0:
                builds[n] = record
            else:
                runs[n].append(record)
    results = {n: {"peak_rss_mib": max(r["peak_rss_mib"] for r in [builds[n], *rs]),
                   "steps_per_s": sum(r["steps_per_s"] for r in rs) / len(rs), "runs": rs, "build": builds[n]}
               for n, rs in runs.items()}
    for n, r in results.items():
        each = ", ".join(f"{x['steps_per_s']:.2f}" for x in r["runs"])
        print(f"{n:>6} pairs: peak RSS {r['peak_rss_mib']:.0f} MiB (cache build included), {r['steps_per_s']:.2f} steps/s "
              f"(mean of the timed runs: {each}; while building the cache: {r['build']['steps_per_s']:.2f}, "
              f"{r['build']['wall_s']:.0f} s)")
    lo, hi = min(args.sizes), max(args.sizes)
    ratios = {"peak_rss": results[hi]["peak_rss_mib"] / results[lo]["peak_rss_mib"],
              "steps_per_s": results[hi]["steps_per_s"] / results[lo]["steps_per_s"]}
    print(f"{hi}/{lo} pairs: peak RSS ×{ratios['peak_rss']:.3f} (goal ≤ 1.15), steps/s ×{ratios['steps_per_s']:.3f} "
          "(goal within 0.90–1.10)")
    atomic_write_json(args.out, {"sizes": results, "ratios": ratios, "steps": STEPS})


if __name__ == "__main__":
    main()
