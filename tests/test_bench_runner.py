"""Runner, reports and CLI of mmalign.bench on small synthetic videos: unreadable files, resume, cache,
end-to-end ``mmalign bench``, leaderboard, HTML in a headless browser, human alignment."""

from __future__ import annotations

import json
import math
import shutil
import os
import subprocess
from pathlib import Path

import av
import pytest
import torch
from typer.testing import CliRunner

from mmalign.bench.backbones import FeatureBackbone, pixel_features
from mmalign.bench.report import aggregate, write_report
from mmalign.bench.runner import run_benchmark
from mmalign.bench.suites import load_suite
from mmalign.errors import InputError
from mmalign.media import save_media

FAST_DIMS = ["temporal_flickering", "subject_consistency", "dynamic_degree", "object_class", "faithfulness"]


def _suite_prompts(n: int) -> list[str]:
    suite = load_suite("synth-video")
    by_kind: dict[str, list[str]] = {}
    for p in suite.prompts():  # a mix: moving, static, change, colour/object prompts
        by_kind.setdefault(p.split()[2] if "moving" in p else ("static" if "static" in p else ("turning" if "turning" in p else "plain")), []).append(p)
    out = []
    while len(out) < n:
        for v in by_kind.values():
            if v and len(out) < n:
                out.append(v.pop(0))
    return out


@pytest.fixture(scope="module")
def synth_videos(tmp_path_factory) -> tuple[Path, list[str]]:
    from mmalign.synth.render import render

    folder = tmp_path_factory.mktemp("synth_videos")
    prompts = _suite_prompts(6)
    save_media(render(prompts, seed=0, modality="video"), folder, [f"{p}-0" for p in prompts])
    return folder, prompts


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def _zero_frame_mp4(path: Path) -> None:
    c = av.open(str(path), "w", format="mp4")
    s = c.add_stream("libx264", rate=8)
    s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
    c.start_encoding()  # write the header although no frame follows
    for packet in s.encode(None):
        c.mux(packet)
    c.close()
    assert path.stat().st_size > 0


def _add_bad_files(folder: Path, prompts: list[str]) -> list[Path]:
    bad = [folder / f"{prompts[0]}-1.mp4", folder / f"{prompts[1]}-1.mp4", folder / f"{prompts[2]}-1.mp4"]
    bad[0].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)  # corrupt
    bad[1].write_bytes(b"")  # empty
    _zero_frame_mp4(bad[2])  # a valid container with zero frames
    return bad


def test_unreadable_videos_are_reported_and_skipped(synth_videos, tmp_path):
    folder = _copy(synth_videos[0], tmp_path / "videos")
    bad = _add_bad_files(folder, synth_videos[1])
    suite = load_suite("synth-video")
    run = run_benchmark(suite, folder, tmp_path / "out", FAST_DIMS, progress=False)
    assert sorted(s["path"] for s in run.skipped) == sorted(str(b) for b in bad)
    assert all(s["error"] for s in run.skipped)
    assert len(run.records) == 6
    raw = aggregate(run)
    assert all(v is None or math.isfinite(v) for v in raw.values())
    assert raw["temporal_flickering"] is not None and raw["faithfulness"] is not None
    paths = write_report(run, name="t", charts=False)
    res = json.loads(paths["results"].read_text())
    assert len(res["skipped"]) == 3 and res["n_videos"] == 6
    with pytest.raises(InputError, match="strict"):
        run_benchmark(suite, folder, tmp_path / "out_strict", FAST_DIMS, progress=False, strict=True)


class CountingPixels(FeatureBackbone):
    """The pixel stand-in backbone, counting the frames it encodes."""

    def __init__(self) -> None:
        super().__init__("count-pixels", model=pixel_features, preprocess=lambda x: x)
        self.frames_seen = 0

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        self.frames_seen += frames.shape[0]
        return super().features(frames)


def test_resume_skips_done_videos_and_reuses_the_feature_cache(synth_videos, tmp_path):
    folder, _ = synth_videos
    suite = load_suite("synth-video")
    dims = ["subject_consistency", "background_consistency"]
    kw = {"progress": False, "backbones": {"dino": ["count-pixels"], "clip": ["count-pixels"]}}
    n = len(suite.items(folder, dims)[0])  # the moving-object videos of the fixture
    assert n >= 3
    bb = CountingPixels()
    first = run_benchmark(suite, folder, tmp_path / "out", dims, preloaded={"count-pixels": bb}, **kw)
    assert bb.frames_seen == n * 8  # each video encoded once, shared by both dimensions
    # a killed run: 2 records are missing, a temp file is left behind
    recs = sorted((tmp_path / "out" / "records").glob("*.json"))
    for r in recs[:2]:
        r.unlink()
    (tmp_path / "out" / "records" / ".x.json.123.tmp").write_text("{half")
    shutil.rmtree(tmp_path / "out" / "cache")
    bb2 = CountingPixels()
    second = run_benchmark(suite, folder, tmp_path / "out", dims, preloaded={"count-pixels": bb2}, **kw)
    assert bb2.frames_seen == 2 * 8  # only the two unfinished videos
    assert aggregate(second) == pytest.approx(aggregate(first))
    # all records gone, feature cache kept (it holds the 2 videos of the second run): only the others are encoded
    shutil.rmtree(tmp_path / "out" / "records")
    bb3 = CountingPixels()
    third = run_benchmark(suite, folder, tmp_path / "out", dims, preloaded={"count-pixels": bb3}, **kw)
    assert bb3.frames_seen == (n - 2) * 8 and aggregate(third) == pytest.approx(aggregate(first))


def _bench_app():
    from mmalign.cli import get_app

    return get_app()


def test_cli_end_to_end_synth_video(synth_videos, tmp_path):
    folder, prompts = synth_videos
    out = tmp_path / "run1"
    r = CliRunner().invoke(_bench_app(), ["bench", "--suite", "synth-video", "--videos", str(folder), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["n_videos"] == 6 and res["missing_files"]  # only a handful of the suite's files exist
    dims = res["dimensions"]
    for d in ("temporal_flickering", "motion_smoothness", "dynamic_degree", "object_class", "faithfulness"):
        assert dims[d]["status"] == "ok" and 0.0 <= dims[d]["raw"] <= 1.0, d
    assert "fallback" in dims["dynamic_degree"]["note"] or "classical" in dims["dynamic_degree"]["note"]
    # every number names its backbone; none of the synth suite's is VBench's
    assert dims["dynamic_degree"]["backbone"] == "substitute:horn-schunck"
    assert not dims["dynamic_degree"]["comparable_with_vbench"]
    assert dims["temporal_flickering"]["backbone"] == "model-free" and dims["temporal_flickering"]["comparable_with_vbench"]
    assert res["dtype"] == "fp32"
    # the synth suite measures all 7 quality but only 3 of the 9 semantic dimensions: Quality, but no
    # Semantic and no Total; the partial scores beside them
    assert res["scores"]["quality"] is not None
    assert res["scores"]["total"] is None and res["scores"]["semantic"] is None
    assert res["scores"]["total_present"] is not None and "human_action" in res["scores"]["missing"]["semantic"]
    assert "total: null (missing" in r.output and "total_present" in r.output and "substitute:horn-schunck" in r.output
    evals = list(out.glob("*_eval_results.json"))
    assert len(evals) == 1
    ev = json.loads(evals[0].read_text())
    agg, rows = ev["temporal_flickering"]
    assert isinstance(agg, float) and all({"video_path", "video_results"} <= set(row) for row in rows)
    assert isinstance(ev["dynamic_degree"][1][0]["video_results"], bool)
    for name in ("radar.png", "dimensions.png", "report.html"):
        assert (out / name).stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and html.count("data:image/png;base64,") >= 4
    # a second model (another seed) and the leaderboard
    from mmalign.synth.render import render

    folder2 = tmp_path / "videos2"
    save_media(render(prompts, seed=1, modality="video"), folder2, [f"{p}-0" for p in prompts])
    r = CliRunner().invoke(_bench_app(), ["bench", "--suite", "synth-video", "--videos", str(folder2), "--out",
                                          str(tmp_path / "run2"), "--quiet", "--dimensions", "temporal_flickering,faithfulness"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(_bench_app(), ["bench", "leaderboard", str(out), str(tmp_path / "run2"), "--out",
                                          str(tmp_path / "lb"), "--names", "seed0,seed1"])
    assert r.exit_code == 0, r.output
    table = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert [row[0] for row in table["rows"]] and {row[0] for row in table["rows"]} == {"seed0", "seed1"}
    assert (tmp_path / "lb" / "leaderboard_bars.png").stat().st_size > 1000
    # the leaderboard says which backbone made each number and marks the substitutes' numbers
    seed0 = table["backbones"][[row[0] for row in table["rows"]].index("seed0")]
    assert seed0["dynamic_degree"] == "substitute:horn-schunck" and seed0["temporal_flickering"] == "model-free"
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "†" in md and "not comparable with VBench" in md
    # --strict turns an unreadable file into exit code 1
    _add_bad_files(folder2, prompts)
    r = CliRunner().invoke(_bench_app(), ["bench", "--suite", "synth-video", "--videos", str(folder2), "--out",
                                          str(tmp_path / "run3"), "--quiet", "--strict", "--dimensions", "faithfulness"])
    assert r.exit_code == 1 and "strict" in r.output


def _browser() -> str | None:
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", shutil.which("chromium") or ""):
        if name and Path(name).is_file():
            return name
    return None


def _open_in_browser(browser: str, page: Path) -> tuple[str, list[str]]:
    """Load ``page`` headless; return the DOM after load and the console messages Chromium logged."""
    probe = page.with_name("probe_" + page.name)
    probe.write_text(page.read_text() + "<script>window.addEventListener('load',function(){document.body.setAttribute("
                     "'data-imgs',[].slice.call(document.images).map(function(i){return i.complete&&i.naturalWidth>0?1:0}).join(''))});</script>")
    p = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
                        "--dump-dom", probe.as_uri()], check=False, capture_output=True, text=True, timeout=120)
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line]
    return p.stdout, console


def test_html_report_opens_in_headless_chromium_without_errors(synth_videos, tmp_path):
    browser = _browser()
    if browser is None:
        if os.environ.get("MMALIGN_CI"):
            pytest.fail("no Chromium binary: .ci/run installs Debian's chromium (apt-get install chromium) before the tests")
        pytest.skip("no Chromium binary (/usr/bin/chromium); install Debian's chromium to run this check")
    folder, _ = synth_videos
    run = run_benchmark(load_suite("synth-video"), folder, tmp_path / "out", FAST_DIMS, progress=False)
    page = write_report(run, name="t")["html"]
    dom, console = _open_in_browser(browser, page)
    assert "Benchmark report: synth-video" in dom
    imgs = dom.split('data-imgs="')[1].split('"')[0]
    assert imgs and set(imgs) == {"1"}, f"images that failed to decode: {imgs}"
    assert console == [], console
    # the check can fail: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    _, console = _open_in_browser(browser, broken)
    assert any("undefinedFunction" in line for line in console)


def test_human_alignment_on_synth(tmp_path):
    from mmalign.synth.human_alignment import human_alignment

    res = human_alignment(tmp_path, n_prompts=6, dimensions=["faithfulness", "temporal_flickering"], progress=False)
    assert res["n_pairs"] == 6 and (tmp_path / "alignment.json").is_file()
    for d in ("faithfulness", "temporal_flickering"):
        e = res["dimensions"][d]
        assert e["judgments"] + e["undecided"] > 0
        assert e["agreement"] is None or 0.0 <= e["agreement"] <= 1.0


@pytest.mark.slow
def test_cli_generator_synth_video_under_ten_minutes(tmp_path):
    import time

    from mmalign.paths import asset_path

    assert asset_path("models", "synth-video").is_dir(), (
        "assets/models/synth-video is missing: train it with `python -m mmalign.zoo.train_video`")
    t = time.time()
    r = CliRunner().invoke(_bench_app(), ["bench", "--suite", "synth-video", "--generator", "synth-video",
                                          "--out", str(tmp_path / "gen"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert time.time() - t < 600
    for name in ("results.json", "radar.png", "report.html"):
        assert (tmp_path / "gen" / name).is_file()


def test_synth_image_suite_geneval_overall(tmp_path):
    from mmalign.synth.render import render

    suite = load_suite("synth-image")
    prompts = suite.prompts()
    images = render(prompts, seed=0, modality="image")
    images.pixels[0] = images.pixels[0][[2, 0, 1]]  # one wrong-colour image: its 'colors' check fails
    save_media(images, tmp_path / "img", [f"{p}-0" for p in prompts])
    run = run_benchmark(suite, tmp_path / "img", tmp_path / "out", progress=False)
    res = json.loads(write_report(run, charts=False)["results"].read_text())
    tasks = ["single_object", "colors", "counting", "two_object", "position"]
    raw = {t: res["dimensions"][t]["raw"] for t in tasks}
    assert all(v is not None for v in raw.values()) and raw["colors"] < 1.0
    # GenEval overall = unweighted mean of the task accuracies (B18)
    assert res["scores"]["geneval_overall"] == pytest.approx(sum(raw.values()) / len(raw))
    assert "total" not in res["scores"]  # no VBench dimension, no VBench total


def test_scorer_towers_as_shared_backbone(synth_videos, tmp_path):
    """The synth-hps stand-in path: a CLIP-family scorer's towers serve dino/clip/video_text roles."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _scoring_tiny import tiny_hps

    from mmalign.synth.bench import backbone_from_scorer

    folder, _ = synth_videos
    bb = backbone_from_scorer(tiny_hps(), "tiny-hps", note="test stand-in")
    prefs = {r: ["tiny-hps"] for r in ("dino", "clip", "video_text")}
    dims = ["subject_consistency", "background_consistency", "overall_consistency"]
    run = run_benchmark(load_suite("synth-video"), folder, tmp_path / "out", dims, progress=False,
                        backbones=prefs, preloaded={"tiny-hps": bb})
    raw = aggregate(run)
    assert raw["subject_consistency"] == pytest.approx(raw["background_consistency"])  # same features, same formula
    assert raw["overall_consistency"] is not None and -1.0 <= raw["overall_consistency"] <= 1.0
    assert run.backbones["dino"]["name"] == "tiny-hps" and not run.backbones["dino"]["fallback"]
