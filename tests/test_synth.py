"""The synthetic world: grammar, renderers, oracle accuracy (≥ 99% per skill on ≥ 1,000 samples
per modality), graceful degradation under noise, and simulated annotators."""

import numpy as np
import pytest
import torch

from mmalign.errors import InputError
from mmalign.media import AudioBatch, ImageBatch, VideoBatch
from mmalign.data.pairs import read_pickapic
from mmalign.synth.annotators import Annotator, agreement, panel_votes, write_pickapic_parquet
from mmalign.synth.oracle import evaluate, find_blobs
from mmalign.synth.prompts import (
    SKILLS,
    VOCABULARY,
    all_prompts,
    format_prompt,
    parse_prompt,
    sample_prompts,
    split_of,
)
from mmalign.synth.render import render

MODALITIES = ("image", "video", "audio")


@pytest.mark.parametrize("modality", MODALITIES)
def test_grammar_round_trip_and_skills(modality):
    prompts = all_prompts(modality)
    assert len(set(prompts)) == len(prompts)
    for p in prompts:
        spec = parse_prompt(p, modality)
        assert format_prompt(spec) == p
        assert set(spec.skills) <= set(SKILLS[modality])
    assert all(w in VOCABULARY for p in prompts for w in p.split())


@pytest.mark.parametrize("modality", MODALITIES)
def test_splits_are_disjoint_and_seeded(modality):
    train = sample_prompts(modality, 200, seed=1, split="train")
    held = sample_prompts(modality, 200, seed=1, split="heldout")
    assert not set(train) & set(held)
    assert all(split_of(p) == "heldout" for p in held)
    assert train == sample_prompts(modality, 200, seed=1, split="train")
    assert train != sample_prompts(modality, 200, seed=2, split="train")


def test_unknown_prompt_and_wrong_modality_are_input_errors():
    with pytest.raises(InputError, match="not in the synthetic world's grammar"):
        parse_prompt("a photo of a cat")
    with pytest.raises(InputError, match="audio prompt"):
        parse_prompt("a fast high melody on a square synth", "image")


@pytest.mark.parametrize("modality,n", [("image", 1200), ("video", 1000), ("audio", 1000)])
def test_oracle_accuracy_on_rendered_ground_truth(modality, n):
    prompts = sample_prompts(modality, n, seed=11, split=None)
    media = render(prompts, seed=5)
    result = evaluate(media)
    acc = result.per_skill_accuracy()
    assert set(acc) == set(SKILLS[modality])
    assert all(v >= 0.99 for v in acc.values()), acc
    assert result.quality.min() > 0.8


@pytest.mark.parametrize("modality", MODALITIES)
def test_oracle_degrades_gracefully_with_noise(modality):
    prompts = sample_prompts(modality, 60, seed=3, split=None)
    media = render(prompts, seed=2)
    gen = torch.Generator().manual_seed(0)
    faith, quality = [], []
    for sigma in (0.0, 0.1, 0.5):
        x = media.data + sigma * torch.randn(media.data.shape, generator=gen)
        if isinstance(media, AudioBatch):
            noisy = AudioBatch(x.clamp(-1, 1), sample_rate=media.sample_rate)
        elif isinstance(media, VideoBatch):
            noisy = VideoBatch(x.clamp(0, 1), fps=media.fps)
        else:
            noisy = ImageBatch(x.clamp(0, 1))
        r = evaluate(noisy, prompts)  # never crashes on imperfect media
        faith.append(float(r.faithfulness.mean()))
        quality.append(float(r.quality.mean()))
    assert faith[0] == pytest.approx(1.0, abs=0.02)
    assert faith[0] >= faith[1] >= faith[2] and faith[2] < 0.95
    assert quality[0] > quality[1] > quality[2] or quality[2] == 0.0
    assert quality[0] > quality[1]


def test_oracle_sees_wrong_color_and_shape():
    media = render(["a red circle"], seed=0)
    assert evaluate(media, ["a red circle"]).skills[0] == {"color": True, "shape": True}
    assert evaluate(media, ["a blue circle"]).skills[0] == {"color": False, "shape": True}
    assert evaluate(media, ["a red square"]).skills[0] == {"color": True, "shape": False}
    blank = ImageBatch(torch.zeros(1, 3, 32, 32))
    assert evaluate(blank, ["two red circles"]).skills[0] == {"color": False, "shape": False, "count": False}


def test_oracle_spatial_relation_is_directional():
    media = render(["a red circle left of a blue square"], seed=4)
    assert evaluate(media, ["a red circle left of a blue square"]).skills[0]["spatial"]
    assert not evaluate(media, ["a red circle right of a blue square"]).skills[0]["spatial"]


def test_render_is_seeded_and_batch_independent():
    prompts = sample_prompts("image", 8, seed=0)
    a = render(prompts, seed=7)
    b = render(prompts, seed=7)
    assert torch.equal(a.pixels, b.pixels)
    assert not torch.equal(a.pixels, render(prompts, seed=8).pixels)
    assert len(find_blobs(a.pixels[0].numpy())) >= 1


def test_oracle_prompt_count_mismatch():
    media = render(["a red circle", "a blue square"], seed=0)
    with pytest.raises(InputError, match="2 media items"):
        evaluate(media, ["a red circle"])


def test_annotators_bradley_terry_ties_and_ceiling():
    prompts = sample_prompts("image", 300, seed=5)
    good = render(prompts, seed=1)
    bad = ImageBatch((good.pixels + 0.15 * torch.randn_like(good.pixels)).clamp(0, 1))
    ann = Annotator(seed=0)
    labels = ann.choose(good, bad, prompts)
    assert set(labels.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert (labels == 1.0).float().mean() > 0.7  # clean beats noisy most of the time
    # two independent annotators agree less than perfectly, more than chance
    second = Annotator(seed=1).choose(good, bad, prompts)
    assert 0.6 < agreement(labels, second) < 1.0
    # ties: identical items are always ties, whatever the rater's noise
    for noise in (0.0, 0.15, 1.0):
        assert (Annotator(seed=0, noise=noise).choose(good, good, prompts) == 0.5).all()
    assert Annotator(seed=3).choose(good, bad, prompts).tolist() == Annotator(seed=3).choose(good, bad, prompts).tolist()


def test_panel_votes_are_the_panel_members_choices():
    prompts = sample_prompts("image", 40, seed=6)
    good = render(prompts, seed=1)
    bad = ImageBatch((good.pixels + 0.2 * torch.randn_like(good.pixels)).clamp(0, 1))
    votes = panel_votes(good, bad, prompts, annotators=3, seed=7)
    assert votes.shape == (3, 40)
    for j in range(3):  # rater j is Annotator(seed + 100 + j), judging with its own noise
        assert votes[j].tolist() == Annotator(seed=107 + j).choose(good, bad, prompts).tolist()
    with pytest.raises(InputError, match="all must match"):
        panel_votes(good, bad[:39], prompts, annotators=2)


def test_a_model_compared_with_itself_wins_exactly_half():
    """A no-op "aligned" model (its samples equal the base's) scores 50.0% with a zero-width CI, however
    large the panel; one changed item moves it."""
    from mmalign.demo import compare_models
    from mmalign.scoring import load_scorer

    prompts = sample_prompts("image", 24, seed=8)
    base = render(prompts, seed=2)
    report = compare_models(base, ImageBatch(base.pixels.clone()), prompts, load_scorer("synth-hps", device="cpu"),
                            annotators=20, seed=0)
    assert report["win_rate"] == (0.5, 0.5, 0.5) and report["win_rate_votes"]["ties"] == 20 * 24
    assert report["oracle"]["faithfulness"]["delta"] == (0.0, 0.0, 0.0)
    changed = ImageBatch(base.pixels.clone())
    changed.pixels[0] = 1 - changed.pixels[0]
    assert compare_models(base, changed, prompts, load_scorer("synth-hps", device="cpu"), 20, 0)["win_rate"][0] != 0.5


def test_rankings_and_parquet(tmp_path):
    import pyarrow.parquet as pq

    prompts = ["a red circle", "a blue square"]
    groups = []
    for p in prompts:
        clean = render([p] * 3, seed=0)
        noisy = clean.pixels + torch.tensor([0.0, 0.1, 0.3]).view(3, 1, 1, 1) * torch.randn(3, 3, 32, 32)
        groups.append(ImageBatch(noisy.clamp(0, 1)))
    annotator = Annotator(seed=0, noise=0.0)
    assert [annotator.rank(g, p) for g, p in zip(groups, prompts)] == [[0, 1, 2], [0, 1, 2]]  # less noise ranks higher
    a, b = render(prompts, seed=0), render(prompts, seed=1)
    path = write_pickapic_parquet(tmp_path / "pairs.parquet", a, b, prompts, torch.tensor([0.0, 0.5]))
    table = pq.read_table(path).to_pydict()
    assert table["caption"] == prompts and table["label_0"] == [0.0, 0.5] and table["label_1"] == [1.0, 0.5]
    assert table["jpg_0"][0][:4] == b"\x89PNG"
    # the annotators are a preference source: the one Pick-a-Pic reader reads their file, winner first
    pairs = read_pickapic(path, ties="keep")
    assert [(p.prompt, p.label) for p in pairs] == [("a red circle", 1.0), ("a blue square", 0.5)]
    assert (pairs[0].chosen.column, pairs[0].rejected.column) == ("jpg_1", "jpg_0")  # lazy cells, winner first
    from mmalign.media import decode_image_bytes

    assert torch.equal(pairs.load(pairs[0].chosen).pixels, decode_image_bytes(table["jpg_1"][0]).pixels)


def test_audio_oracle_reads_register_tempo_timbre():
    media = render(["a fast high melody on a sawtooth synth", "a slow low melody on a sine synth"], seed=0)
    r = evaluate(media)
    assert all(all(s.values()) for s in r.skills)
    d = r.details
    assert d[0]["rate"] > d[1]["rate"] and d[0]["midi_median"] > d[1]["midi_median"]
    assert np.isfinite(d[0]["h2"]) and d[0]["h2"] > d[1]["h2"]
