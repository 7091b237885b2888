"""Parity checks of mmalign.bench's formulas against VBench (Vchitect/VBench@45e79ec): normalisation and
totals, frame sampling, rounding, flow thresholds, static filter, pixel scores, consistency, scales;
plus the dimension and backbone registries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmalign.bench import formulas as fm
from mmalign.bench.dimensions import FPS8, HumanAction, Sampling, index_from_filename
from mmalign.bench.report import normalize, vbench_scores
from mmalign.paths import asset_path

# raw values and their normalised values, computed by hand from scripts/constant.py (Min, Max, weight)
RAW_AND_NORMALIZED = {
    "subject_consistency": (0.95, 0.941438), "background_consistency": (0.96, 0.945836),
    "temporal_flickering": (0.97, 0.919072), "motion_smoothness": (0.98, 0.939966),
    "dynamic_degree": (0.50, 0.250000), "aesthetic_quality": (0.60, 0.600000), "imaging_quality": (0.65, 0.650000),
    "object_class": (0.85, 0.850000), "multiple_objects": (0.50, 0.500000), "human_action": (0.90, 0.900000),
    "color": (0.80, 0.800000), "spatial_relationship": (0.60, 0.600000), "scene": (0.45, 0.547312),
    "appearance_style": (0.22, 0.769852), "temporal_style": (0.24, 0.659341), "overall_consistency": (0.26, 0.714286),
}


def test_normalisation_and_worked_totals():
    for dim, (raw, want) in RAW_AND_NORMALIZED.items():
        assert normalize(dim, raw) == pytest.approx(want, abs=1e-6), dim
    s = vbench_scores({d: r for d, (r, _) in RAW_AND_NORMALIZED.items()})
    # totals worked out by hand from the values above, rounded to 6 digits
    assert s["quality"] == pytest.approx(0.807125, abs=1e-6)
    assert s["semantic"] == pytest.approx(0.704532, abs=1e-6)
    assert s["total"] == pytest.approx(0.786606, abs=1e-6)
    assert s["total_present"] == pytest.approx(s["total"], abs=1e-12)  # all 16 present


def test_missing_dimension_gives_no_headline_number():
    assert normalize("subject_consistency", 0.0) == pytest.approx(-0.171234, abs=1e-6)  # B2
    raw = {d: r for d, (r, _) in RAW_AND_NORMALIZED.items() if d != "subject_consistency"}
    s = vbench_scores(raw)
    # nobody measured subject consistency: no Quality, no Total; Semantic is complete
    assert s["quality"] is None and s["total"] is None
    assert s["semantic"] == pytest.approx(0.704532, abs=1e-6)
    assert s["missing"] == {"quality": ["subject_consistency"], "semantic": []}
    assert "subject_consistency" not in s["normalized"]
    assert s["quality_present"] == pytest.approx((5.246312 - 0.941438) / 5.5, abs=1e-6)
    assert s["total_present"] == pytest.approx((4 * s["quality_present"] + s["semantic"]) / 5, abs=1e-12)
    # VBench's own convention on request (cal_final_score.py): missing counts as raw 0
    v = vbench_scores(raw, missing_as_zero=True)
    assert v["quality"] == pytest.approx((5.246312 - 0.941438 - 0.171234) / 6.5, abs=1e-6)
    # nothing measured: every headline is null
    empty = vbench_scores({})
    assert all(empty[k] is None for k in ("quality", "semantic", "total", "quality_present", "total_present"))
    assert len(empty["missing"]["quality"]) == 7 and len(empty["missing"]["semantic"]) == 9


def test_vbench_suite_counts():
    from mmalign.bench.suites import load_suite

    suite = load_suite("vbench-standard")
    assert len(suite.entries) == 946 and len(suite.prompts()) == 944
    per_dim = {}
    for e in suite.entries:
        for d in e.dimensions:
            per_dim[d] = per_dim.get(d, 0) + 1
    assert per_dim["subject_consistency"] == 72 and per_dim["temporal_flickering"] == 75 and per_dim["scene"] == 86
    assert (asset_path("suites", "vbench-standard", "LICENSE")).read_text().lstrip().startswith("Apache License")
    source = Path("/work/shared/data/vbench/VBench_full_info.json")  # where the shipped copy came from
    if source.is_file():
        shipped = json.loads(asset_path("suites", "vbench-standard", "VBench_full_info.json").read_text())
        assert shipped == json.loads(source.read_text())


def test_middle_frame_indices():
    assert fm.frame_indices(16, 100) == [2, 8, 14, 21, 27, 33, 39, 46, 52, 58, 64, 71, 77, 83, 89, 96]
    assert fm.frame_indices(8, 16) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert fm.frame_indices(16, 10) == list(range(10)) + [9] * 6
    assert Sampling("middle", 16).indices(100, 24.0) == fm.frame_indices(16, 100)


def test_bankers_rounding():
    assert [fm.fps_interval(f) for f in (20, 24, 30, 8, 4)] == [2, 3, 4, 1, 1]
    assert FPS8.indices(10, 20.0) == [0, 2, 4, 6, 8]
    # count_num = round(4*count/16): count 10 -> 2, 6 -> 2, 16 -> 4 (decided at the threshold)
    thres = fm.dynamic_threshold(256, 256)  # 6.0
    for count, need in ((10, 2), (6, 2), (16, 4)):
        assert fm.is_dynamic([thres + 1] * need + [0.0] * 5, 256, 256, count)
        assert not fm.is_dynamic([thres + 1] * (need - 1) + [0.0] * 5, 256, 256, count)


def test_dynamic_thresholds():
    assert fm.dynamic_threshold(320, 512) == 7.5
    assert fm.dynamic_threshold(480, 640) == 11.25
    assert fm.dynamic_threshold(1280, 720) == 16.875
    assert not fm.is_dynamic([11.25] * 8, 480, 640, 8)  # strictly greater


def test_static_filter():
    d = fm.is_static([0.0] * 15, [0.0, 0.0], 480, 640, 16)
    assert d.threshold == 5.625 and d.count_num == 2 and d.static
    assert fm.is_static([], [], 480, 640, 20).count_num == 2 and fm.is_static([], [], 480, 640, 24).count_num == 3
    moving = [6.0, 6.0] + [0.0] * 13
    assert fm.is_static(moving, [0.0, 0.0], 480, 640, 16).static  # 2 moving pairs <= count_num 2
    assert not fm.is_static(moving + [6.0], [0.0, 0.0], 480, 640, 17).static  # 3 > round(34/16) = 2
    limit = 5.625 * 2 * 2
    assert fm.is_static([0.0] * 15, [limit, limit], 480, 640, 16).static
    assert not fm.is_static([0.0] * 15, [limit + 1e-3, 0.0], 480, 640, 16).static


def test_pixel_scores_on_hand_made_videos():
    const = torch.full((6, 3, 8, 8), 77, dtype=torch.uint8)
    assert fm.temporal_flickering(const) == 1.0
    # alternating frames with |diff| = 2.55 on average: 51 of every 100 pixels differ by 5
    a = torch.zeros(3, 10, 10, dtype=torch.uint8)
    b = a.clone()
    b.view(-1)[: 153] = 5  # 153 of 300 values differ by 5 -> mean 2.55
    video = torch.stack([a, b, a, b])
    assert fm.temporal_flickering(video) == pytest.approx(0.99, abs=1e-12)
    # motion smoothness: predictions truncate (AMT conversion), (255 - vfi)/255
    x = torch.tensor([0.5, 0.999, 1.2]) / 1.0
    assert fm.to_uint8_truncate(x).tolist() == [127, 254, 255]
    orig = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    pred = orig.clone()
    pred[0] += 10  # vfi = mean(10, 0) = 5
    assert fm.motion_smoothness(orig, pred) == pytest.approx((255 - 5) / 255)


def test_consistency_formula_on_given_features():
    # unit vectors with cos(f0,f1)=0.9, cos(f1,f2)=0.8, cos(f0,f2)=0.7 (Gram matrix factorisation)
    gram = torch.tensor([[1.0, 0.9, 0.7], [0.9, 1.0, 0.8], [0.7, 0.8, 1.0]], dtype=torch.float64)
    feats = torch.linalg.cholesky(gram)  # rows have exactly these inner products
    total, count = fm.consistency_sum(feats * torch.tensor([[2.0], [0.5], [3.0]], dtype=torch.float64))
    assert count == 2 and total / count == pytest.approx(0.825, abs=1e-12)
    # negative cosines are clamped to 0
    neg = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert fm.consistency_sum(neg) == (0.0, 1)


def test_scales_and_aggregation():
    from mmalign.bench.dimensions import ImagingQuality, SubjectConsistency

    # imaging: per-video 0-100, aggregate /100
    recs = [{"video_results": 60.0, "num": 0.6, "den": 1.0}, {"video_results": 80.0, "num": 0.8, "den": 1.0}]
    assert ImagingQuality().aggregate(recs) == pytest.approx(0.7)
    # subject consistency aggregate is frame-pair weighted (1-GPU path)
    recs = [{"num": 0.9 * 3, "den": 3}, {"num": 0.5 * 1, "den": 1}]
    assert SubjectConsistency().aggregate(recs) == pytest.approx((2.7 + 0.5) / 4)


def test_spatial_color_scene_and_filename_rules():
    # spatial: direction sign not checked; IoU >= 0.1 gives 0.1/IoU
    a, b = (0, 0, 10, 10), (20, 0, 30, 10)
    assert fm.spatial_pair_score(a, b, "on the left of") == 1.0
    assert fm.spatial_pair_score(b, a, "on the left of") == 1.0
    assert fm.spatial_pair_score(a, b, "on the top of") == 0.0
    c = (5, 0, 15, 10)  # IoU = 50/150
    assert fm.spatial_pair_score(a, c, "on the right of") == pytest.approx(0.1 / (50 / 150))
    assert fm.color_object_key("a red bicycle", "red") == "bicycle"
    assert fm.scene_frame_success("a view of an amusement park at night", "amusement park")
    assert not fm.scene_frame_success("a park", "amusement park")
    assert HumanAction.label_from_filename("/x/A person is riding a bike-0.mp4") == "riding a bike"
    assert index_from_filename("a cat-3.mp4") == 3 and index_from_filename("a cat.mp4") == 0


class FakeInputs:
    """A hand-made VideoInputs: given detections / features, no decoding."""

    def __init__(self, prompt, aux, dets=None, feats=None, text=None, n=16):
        self.path, self.prompt, self.aux, self.fps = f"{prompt}-0.mp4", prompt, aux, 8.0
        self.num_frames, self.height, self.width = n, 64, 64
        self._dets, self._feats, self._text = dets, feats, text

    def detections(self, role, s, queries=None):
        return self._dets

    def features(self, role, s):
        return self._feats

    def text_features(self, role, texts):
        return self._text

    def video_features(self, role, s):
        return torch.nn.functional.normalize(self._feats[0], dim=0)  # the first row stands for the video embedding


def test_detector_dimensions_follow_vbench_rules():
    from mmalign.bench.detectors import Detection as D
    from mmalign.bench.dimensions import (
        Color,
        MultipleObjects,
        ObjectClass,
        Scene,
        SpatialRelationship,
    )

    box = (0, 0, 10, 10)
    frames = [[D("cat", box), D("dog", (30, 0, 40, 10))], [D("cat", box)], []]
    r = ObjectClass().measure(FakeInputs("a cat", {"object": "cat"}, frames))
    assert (r["success_frame_count"], r["frame_count"]) == (2, 3)
    r = MultipleObjects().measure(FakeInputs("a cat and a dog", {"object": "cat and dog"}, frames))
    assert r["success_frame_count"] == 1 and r["num"] / r["den"] == pytest.approx(1 / 3)
    # colour: every instance is paired with the frame's FIRST class (det_obj[0] quirk)
    color_frames = [[D("car", box, caption="a red car"), D("tree", box, caption="a green tree")],
                    [D("tree", box, caption="a red car")],  # first class is not the object: no object frame
                    [D("car", box, caption="a blue car")]]
    r = Color().measure(FakeInputs("a red car", {"color": "red"}, color_frames))
    assert r["video_results"] == pytest.approx(1 / 2)  # object frames 0 and 2, colour only in 0
    assert Color().measure(FakeInputs("a red car", {"color": "red"}, [[D("tree", box, caption="red")]])) is None
    sp = {"spatial_relationship": {"object_a": "cat", "object_b": "dog", "relationship": "on the left of"}}
    r = SpatialRelationship().measure(FakeInputs("a cat on the left of a dog", sp, frames))
    assert r["frame_results"] == [1.0, 0.0, 0.0]
    scene = [[D("x", box, caption="a view of an alley at night")], [D("x", box, caption="a road")]]
    r = Scene().measure(FakeInputs("alley", {"scene": {"scene": "alley"}}, scene))
    assert r["success_frame_count"] == 1


def test_text_similarity_dimensions():
    from mmalign.bench.dimensions import AppearanceStyle, OverallConsistency

    text = torch.tensor([[1.0, 0.0]])
    feats = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    r = AppearanceStyle().measure(FakeInputs("p", {"appearance_style": "Van Gogh style"}, feats=feats, text=text))
    assert r["frame_results"] == pytest.approx([1.0, 0.6, 0.0]) and r["cur_sim"] == pytest.approx(0.0)
    assert (r["num"], r["den"]) == (pytest.approx(1.6), 3.0)  # frame-weighted aggregate (1-GPU path)
    r = OverallConsistency().measure(FakeInputs("p", {}, feats=feats[1:], text=2 * text))
    assert r["video_results"] == pytest.approx(0.6)  # cos((0.6, 0.8), (1, 0)): the text is normalised too


def test_flow_backbones_padding_and_direction():
    from torchvision.models.optical_flow import raft_small

    from mmalign.bench.backbones import (
        horn_schunck,
        raft_backbone_from_model,
        sintel_pad,
    )

    assert sintel_pad(torch.zeros(1, 3, 36, 44)).shape[-2:] == (40, 48)
    torch.manual_seed(0)
    raft = raft_backbone_from_model(raft_small(weights=None), "raft-small", iters=2)
    frames = torch.randint(0, 255, (2, 3, 130, 140), dtype=torch.uint8)  # RAFT needs >= 128 px
    mags = raft.magnitudes(frames[:1], frames[1:])
    assert mags.shape == (1, 136, 144)  # top-k is taken over the padded field, as VBench's dynamic_degree.py
    # the classical fallback sees a square moving right as positive horizontal flow
    a = torch.full((1, 3, 32, 32), 20.0)
    b = a.clone()
    a[..., 10:20, 8:18] = 200.0
    b[..., 10:20, 10:20] = 200.0
    flow = horn_schunck(a, b)
    assert flow[0, 0, 10:20, 8:20].mean() > 0.5 and flow[0, 1, 10:20, 8:20].abs().mean() < 0.5


def test_vbench_naming_scheme(tmp_path):
    from mmalign.bench.suites import load_suite

    suite = load_suite("vbench-standard")
    flicker = "In a still frame, a stop sign"
    dup = "The bund Shanghai, oil painting"  # listed under appearance_style and overall_consistency
    for i in range(25):
        (tmp_path / f"{flicker}-{i}.mp4").touch()
    for i in range(5):
        (tmp_path / f"{dup}-{i}.mp4").touch()
    (tmp_path / f"{dup}-5.mp4").touch()  # beyond the 5 samples: ignored
    items, missing = suite.items(tmp_path)
    by_prompt: dict[str, list] = {}
    for it in items:
        by_prompt.setdefault(it.prompt, []).append(it)
    assert [it.index for it in by_prompt[flicker]] == list(range(25))  # 25 per temporal_flickering prompt
    assert [it.index for it in by_prompt[dup]] == list(range(5))
    assert {"appearance_style", "overall_consistency"} <= set(by_prompt[dup][0].dimensions)
    assert by_prompt[dup][0].aux["appearance_style"] == {"appearance_style": "oil painting"}
    assert len(items) == 30 and len(missing) + 30 == 4720 + 75 * 20  # 944 x 5, plus 20 more per flicker prompt
    # the postfix comes from the folder's first file
    other = tmp_path / "gifs"
    other.mkdir()
    (other / f"{flicker}-0.gif").touch()
    items, _ = suite.items(other, ["temporal_flickering"])
    assert [Path(it.path).name for it in items] == [f"{flicker}-0.gif"]


def test_dimension_and_backbone_registries():
    from mmalign.bench.backbones import BACKBONES, LoadContext, load_backbone, register_backbone
    from mmalign.bench.dimensions import DIMENSIONS, Sampling, get_dimension
    from mmalign.errors import ConfigError

    vbench = {"subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness", "dynamic_degree",
              "aesthetic_quality", "imaging_quality", "object_class", "multiple_objects", "human_action", "color",
              "spatial_relationship", "scene", "appearance_style", "temporal_style", "overall_consistency"}
    assert vbench <= set(DIMENSIONS.names())
    with pytest.raises(ConfigError, match="unknown dimension 'subject_consistncy'; did you mean 'subject_consistency'"):
        get_dimension("subject_consistncy")
    with pytest.raises(ConfigError, match="registered twice"):
        DIMENSIONS.register("scene")(type("OtherScene", (), {}))
    with pytest.raises(ConfigError, match="unknown backbone 'horn-schunk'; did you mean 'horn-schunck'"):
        load_backbone("horn-schunk", LoadContext(Path("."), torch.device("cpu")))
    with pytest.raises(ConfigError, match="registered twice"):
        register_backbone("pixels")(lambda ctx: None)
    assert "pixels" in BACKBONES
    with pytest.raises(ConfigError, match="mode must be"):
        Sampling("middel", 8)
