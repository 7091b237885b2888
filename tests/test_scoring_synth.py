"""The shipped synth scorers load by name and prefer faithful, clean media of the synthetic world; the
oracle is a scorer card too."""

from __future__ import annotations

import json

import pytest
import torch

from mmalign.errors import InputError
from mmalign.media import VideoBatch
from mmalign.scoring import load_scorer
from mmalign.synth.prompts import sample_prompts
from mmalign.synth.render import render

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _mismatch_accuracy(scorer, modality: str, n: int = 24) -> float:
    prompts = sample_prompts(modality, n, seed=5, split="heldout")
    others = prompts[1:] + prompts[:1]
    keep = [i for i in range(n) if prompts[i] != others[i]]
    right = render([prompts[i] for i in keep], seed=1, modality=modality)
    wrong = render([others[i] for i in keep], seed=1, modality=modality)
    p = [prompts[i] for i in keep]
    return float((scorer.score(right, p) > scorer.score(wrong, p)).float().mean())


def test_synth_oracle_is_a_scorer_that_equals_the_oracle_and_loads_in_a_fresh_process():
    import subprocess
    import sys

    from mmalign.scoring import read_card
    from mmalign.synth.oracle import evaluate
    from mmalign.synth.prompts import all_prompts

    s = load_scorer("synth-oracle", device="cpu")
    beta = read_card("synth-oracle").score.bt_scale
    for modality in ("image", "video", "audio"):
        prompts = sample_prompts(modality, 6, seed=2, split="heldout")
        media = render(prompts, seed=3, modality=modality)
        noisy = render(prompts[1:] + prompts[:1], seed=4, modality=modality)  # mostly other prompts' media
        fa, fb = evaluate(media, prompts).faithfulness, evaluate(noisy, prompts).faithfulness
        assert torch.equal(s.score(media, prompts, batch_size=4), fa)
        assert torch.allclose(s.compare(media, noisy, prompts), torch.sigmoid(beta * (fa - fb)), atol=1e-6)
        assert not torch.equal(fa, fb)  # the comparison is not between equal scores only
        assert s.details(media, prompts) == evaluate(media, prompts).per_skill_accuracy()
    with pytest.raises(InputError, match="no gradient"):
        s.score(render(all_prompts("image")[:1], seed=0), all_prompts("image")[:1], differentiable=True)
    probe = "import mmalign, torch; s = mmalign.load_scorer('synth-oracle', device='cpu'); print(type(s).__name__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "OracleScorer"


def test_synth_raters_rate_the_annotators_utility_with_a_fixed_noise_per_item(tmp_path):
    from mmalign.media import load_media, save_media
    from mmalign.synth.annotators import Annotator
    from mmalign.synth.scorer import RaterPanelScorer

    s = load_scorer("synth-raters", device="cpu")
    assert (s.raters, s.seed) == (5, 0)
    for modality in ("image", "video", "audio"):
        prompts = sample_prompts(modality, 48, seed=2, split="heldout")
        media = render(prompts, seed=3, modality=modality)
        score = s.score(media, prompts, batch_size=7)
        noise = score - Annotator().true_utility(media, prompts)
        assert 0.03 < float(noise.std()) < 0.11  # the mean of 5 raters' N(0, 0.15²): σ = 0.067
        order = list(range(47, -1, -1))
        assert torch.equal(s.score(media[order], [prompts[i] for i in order], batch_size=48), score[order])  # per item
        assert not torch.equal(score, RaterPanelScorer(raters=5, seed=1).score(media, prompts))  # another panel
    # an item read back from the file it was saved to gets the raters' noise it had in memory
    img = render(["a red circle", "two blue squares"], seed=0)
    back = [load_media(p) for p in save_media(img, tmp_path, names=["a", "b"])]
    noise_back = torch.cat([s.score(b, [p]) - Annotator().true_utility(b, [p]) for b, p in zip(back, img.prompts)])
    assert torch.allclose(noise_back, s.score(img, img.prompts) - Annotator().true_utility(img, img.prompts), atol=1e-5)
    with pytest.raises(InputError, match="at least one rater"):
        RaterPanelScorer(raters=0)
    with pytest.raises(InputError, match="no gradient"):
        s.score(img, img.prompts, differentiable=True)


def test_synth_hps_prefers_the_prompted_image_and_scores_videos_by_frames():
    s = load_scorer("synth-hps", device="cpu")
    assert s.modalities == ("image", "video") and s.bt_scale > 1.0
    assert _mismatch_accuracy(s, "image") >= 0.8
    clean = render(["a red circle"] * 4, seed=0)
    noisy = (clean.pixels + 0.3 * torch.randn(clean.pixels.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert float((s.score(clean, "a red circle") > s.score(noisy, "a red circle")).float().mean()) >= 0.75
    v = render(["a static red circle", "a blue square moving left"], seed=0, modality="video")
    sv = s.score(v, v.prompts)
    frames = s.score(VideoBatch(v.pixels).frames(), [p for p in v.prompts for _ in range(v.pixels.shape[1])])
    assert torch.allclose(sv, frames.view(2, -1).mean(1), atol=1e-6)


def test_synth_clap_loads_and_prefers_clean_audio():
    from mmalign.media import AudioBatch
    from mmalign.synth.prompts import all_prompts

    s = load_scorer("synth-clap", device="cpu")
    assert s.modalities == ("audio",)
    prompts = all_prompts("audio")
    clean = render(prompts, seed=1, modality="audio")
    noise = 0.15 * torch.randn(clean.samples.shape, generator=torch.Generator().manual_seed(0))
    noisy = AudioBatch((clean.samples + noise).clamp(-1, 1), sample_rate=clean.sample_rate)
    assert float((s.score(clean, prompts) > s.score(noisy, prompts)).float().mean()) >= 0.9


def test_train_synth_hps_mixes_generated_groups_and_reports_them(tmp_path):
    """HPD v2-style data: rendered groups plus groups sampled from the shipped generator, each evaluated."""
    from mmalign.zoo.train_scorers import run

    report = run("synth-hps", tmp_path / "hps", n_train=6, n_eval=5, k=4, steps=3, batch_size=8, label_annotators=2,
                 generator="synth-sdxl", n_generated=4, generator_steps=2, log=lambda s: None)
    assert report["train_pairs"] == (6 + 4) * 6 and report["heldout_pairs"] == 5 * 6
    gen = report["generated"]
    assert gen["generator_steps"] == 2 and gen["heldout_pairs"] == 5 * 6 and 0.0 <= gen["pooled_accuracy"] <= 1.0 and 0.0 < gen["annotator_ceiling"] <= 1.0
    assert json.loads((tmp_path / "hps" / "train_report.json").read_text())["generated"] == gen


def test_train_synth_hps_from_a_trained_folder_with_shape_groups(tmp_path):
    """``--init`` starts from a trained synth-hps (before any step it scores as the shipped one); ``--shape-groups``
    adds groups of one prompt's object in each of the three shapes, same color, 3 pairs each; a folder without
    weights is a ConfigError."""
    from mmalign.errors import ConfigError
    from mmalign.paths import asset_path
    from mmalign.scoring.tokenizer import WordTokenizer
    from mmalign.synth.prompts import SHAPES, VOCABULARY, parse_prompt
    from mmalign.zoo.train_scorers import build_synth_hps, load_init, run, shape_groups

    media, prompts = shape_groups(4, seed=1, split="train")
    assert len(media) == 4 * len(SHAPES) and media.prompts == [p for p in prompts for _ in SHAPES]
    assert all(parse_prompt(p, "image").kind == "single" for p in prompts)
    scorer, _ = build_synth_hps(WordTokenizer(VOCABULARY, context_length=16))
    load_init(scorer, asset_path("models", "synth-hps"))
    scenes = render(prompts, seed=2)
    assert torch.allclose(scorer.score(scenes, prompts), load_scorer("synth-hps", dtype="fp32").score(scenes, prompts), atol=1e-5)
    with pytest.raises(ConfigError, match="no open_clip_model.safetensors"):
        load_init(scorer, tmp_path)
    report = run("synth-hps", tmp_path / "hps", n_train=4, n_eval=3, k=4, steps=2, batch_size=8,
                 init=asset_path("models", "synth-hps"), n_shape=5, log=lambda s: None)
    assert report["shape_groups"] == 5 and report["train_pairs"] == 4 * 6 + 5 * 3 and report["init"].endswith("synth-hps")
    with pytest.raises(ConfigError, match="for --scorer synth-hps"):  # before any data is built
        run("synth-clap", tmp_path / "clap", n_train=4, n_shape=5, log=lambda s: None)


def test_synth_hps_shapes_sees_the_shape_synth_hps_misses():
    """On 150 renders of the 15 one-object prompts, against each of the three shapes in the prompt:
    synth-hps-shapes (fine-tuned on shape hard negatives) picks the rendered shape 39% of the time,
    synth-hps 28%, below chance (33%)."""
    from mmalign.media import ImageBatch
    from mmalign.synth.prompts import SHAPES, all_prompts, parse_prompt

    singles = [p for p in all_prompts("image") if parse_prompt(p, "image").kind == "single"]
    media, prompts = ImageBatch.cat([render(singles, seed=seed) for seed in range(10)]), singles * 10
    own = torch.tensor([SHAPES.index(parse_prompt(p, "image").objects[0][1]) for p in prompts])

    def right(scorer) -> float:
        scores = torch.stack([scorer.score(media, [p.rsplit(" ", 1)[0] + f" {v}" for p in prompts]) for v in SHAPES], 1)
        return float((scores.argmax(1) == own).float().mean())

    shapes = right(load_scorer("benchmarks/cards/synth-hps-video-shapes.yaml", device="cpu"))
    assert shapes > 0.36 and shapes > right(load_scorer("synth-hps", device="cpu")) + 0.06


def test_train_synth_clap_with_captioned_renders_reports_them(tmp_path):
    """``--captions``: the contrastive term on captioned renders of train prompts runs and is recorded."""
    from mmalign.zoo.train_scorers import caption_set, run

    captions = caption_set("audio", 6, seed=3)
    assert len(captions) == 6 and captions.media.prompts == captions.prompts
    report = run("synth-clap", tmp_path / "clap", n_train=4, n_eval=3, k=4, steps=2, batch_size=4, n_captions=6,
                 caption_weight=0.5, log=lambda s: None)
    assert report["captions"] == 6 and report["caption_weight"] == 0.5
    assert json.loads((tmp_path / "clap" / "train_report.json").read_text())["captions"] == 6


def test_synth_clap_hears_what_the_prompt_asks_for():
    """Against the same render, synth-clap scores the prompt's own timbre, tempo and register above the alternatives
    (36 renders of the 18 audio prompts: 72 / 78 / 100%; chance 33 / 50 / 33%, which a text-blind scorer gets)."""
    from mmalign.synth.prompts import REGISTERS, TEMPOS, TIMBRES, all_prompts, parse_prompt

    s = load_scorer("synth-clap", device="cpu")
    prompts = all_prompts("audio")
    media = type(render(prompts[:1], modality="audio")).cat([render(prompts, seed=seed, modality="audio") for seed in (1, 2)])
    prompts = prompts * 2
    for attr, values, floor in (("timbre", TIMBRES, 0.6), ("tempo", TEMPOS, 0.65), ("register", REGISTERS, 0.9)):
        own = [getattr(parse_prompt(p, "audio"), attr) for p in prompts]
        scores = torch.stack([s.score(media, [p.replace(f" {o} ", f" {v} ") for p, o in zip(prompts, own)]) for v in values], 1)
        right = float((scores.argmax(1) == torch.tensor([list(values).index(o) for o in own])).float().mean())
        assert right >= floor, (attr, right)
