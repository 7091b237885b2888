"""VBench-style benchmarking of video (and image) generators: dimensions, suites, runner, reports.

``run_benchmark(load_suite("synth-video"), "videos/", "out/")`` then ``write_report(run)``; or
``mmalign bench --suite vbench-standard --videos DIR``. VBench's own models are ported here and load
VBench's weight files (``AMTS``, ``MUSIQ``, and the UMT / ViCLIP / RAFT loaders registered as backbones).
"""

from mmalign.bench.amt import AMTS
from mmalign.bench.dimensions import DIMENSIONS, Dimension, Sampling, get_dimension
from mmalign.bench.musiq import MUSIQ
from mmalign.bench.report import (
           build_results,
           leaderboard,
           normalize,
           vbench_scores,
           write_report,
)
from mmalign.bench.runner import RunResult, run_benchmark
from mmalign.bench.suites import Suite, list_suites, load_suite

__all__ = [
           "AMTS",
           "DIMENSIONS",
           "Dimension",
           "MUSIQ",
           "RunResult",
           "Sampling",
           "Suite",
           "build_results",
           "get_dimension",
           "leaderboard",
           "list_suites",
           "load_suite",
           "normalize",
           "run_benchmark",
           "vbench_scores",
           "write_report",
]
