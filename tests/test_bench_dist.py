"""``run_benchmark`` as two processes (torchrun / ``accelerate launch`` environment, gloo on CPU): the
process group exists before any backbone is loaded, each file is evaluated by exactly one process,
and every process reads the gathered records back in input order."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from mmalign.media import VideoBatch, save_media

WORKER = r'''
import json, os, sys
import torch
from mmalign.bench.backbones import FeatureBackbone, LoadContext, pixel_features, register_backbone
import mmalign.bench.runner as runner
from mmalign.bench.suites import custom_suite

loaded_after_init = []


@register_backbone("dist-probe")
def _probe(ctx: LoadContext):
    loaded_after_init.append(torch.distributed.is_initialized())  # the rank's device is known before loading
    return FeatureBackbone("dist-probe", model=pixel_features, preprocess=lambda x: x, device=ctx.device)


seen = []
evaluate = runner._evaluate_item


def spy(item, *args, **kwargs):
    seen.append(os.path.basename(item.path))
    return evaluate(item, *args, **kwargs)


runner._evaluate_item = spy
run = runner.run_benchmark(custom_suite(), sys.argv[1], sys.argv[2], ["subject_consistency", "temporal_flickering"],
                           backbones={"dino": ["dist-probe"]}, progress=False)
print(json.dumps({"seen": seen, "main": run.is_main, "probe": loaded_after_init,
                  "order": [os.path.basename(r["path"]) for r in run.records],
                  "values": [r["dims"]["temporal_flickering"]["video_results"] for r in run.records]}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_files_and_gather_in_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    names = [f"clip {i}" for i in range(5)]
    for n in names:
        save_media(VideoBatch(torch.rand(1, 3, 3, 16, 16, generator=g), fps=8.0), tmp_path / "videos", [n])
    (tmp_path / "worker.py").write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "videos"),
                                       str(tmp_path / "out")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    files = sorted(f"{n}.mp4" for n in names)
    assert sorted(outs[0]["seen"] + outs[1]["seen"]) == files and not set(outs[0]["seen"]) & set(outs[1]["seen"])
    assert [o["main"] for o in outs] == [True, False]
    assert all(o["probe"] == [True] for o in outs)
    assert outs[0]["order"] == outs[1]["order"] == files and outs[0]["values"] == outs[1]["values"]
    assert len(list(Path(tmp_path / "out" / "records").glob("*.json"))) == 5
