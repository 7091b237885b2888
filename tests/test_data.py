"""Preference data: Pick-a-Pic reader and ties, JSONL manifests, rankings, prompt files, the latent cache, builders."""

from __future__ import annotations

import io
import json

import pytest
import torch

from mmalign.data.build import best_worst, build_preferences, unifiedreward_sift, win_rates
from mmalign.data.cache import encode_dataset
from mmalign.data.prompts import prompt_sets, read_prompts
from mmalign.data.pairs import (
    PairDataset,
    Ranking,
    RankingDataset,
    fit_resolution,
    read_manifest,
    read_pickapic,
    read_preferences,
)
from mmalign.errors import InputError
from mmalign.media import ImageBatch
from mmalign.scoring.base import Scorer
from test_trainer_adapter import TinyAdapter, write_pairs


def _png(color: tuple[int, int, int], size=(12, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _pickapic(path, labels):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(labels)
    table = pa.table({"jpg_0": [_png((10 * i, 0, 0)) for i in range(n)], "jpg_1": [_png((0, 10 * i, 0)) for i in range(n)],
                      "label_0": labels, "label_1": [1 - x for x in labels], "caption": [f"c{i}" for i in range(n)]})
    pq.write_table(table, path)
    return path


def test_pickapic_ties_dropped_winner_first(tmp_path):
    path = _pickapic(tmp_path / "train.parquet", [1.0, 0.0, 0.5, 1.0, 0.5])
    ds = read_pickapic(path)
    assert len(ds) == 3 and ds.dropped_ties == 2
    assert [p.prompt for p in ds] == ["c0", "c1", "c3"]
    assert all(p.label == 1.0 for p in ds)
    c1 = ds[1]  # label_0 = 0: jpg_1 won, so it comes first
    assert ds.load(c1.chosen).pixels[0, 1, 0, 0] > 0 and ds.load(c1.chosen).pixels[0, 0, 0, 0] == 0


def test_pickapic_ties_kept_as_half_never_a_win(tmp_path):
    ds = read_preferences(_pickapic(tmp_path / "t.parquet", [1.0, 0.5]), ties="keep")
    assert [p.label for p in ds] == [1.0, 0.5]
    with pytest.raises(InputError, match="ties"):
        read_pickapic(tmp_path / "t.parquet", ties="win")


def test_pickapic_errors(tmp_path):
    with pytest.raises(InputError, match="row 0.*label 0.7"):
        read_pickapic(_pickapic(tmp_path / "bad.parquet", [0.7]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"jpg_0": [b"x"], "caption": ["c"]}), tmp_path / "cols.parquet")
    with pytest.raises(InputError, match="missing columns.*jpg_1"):
        read_pickapic(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"jpg_0": [b"x"], "jpg_1": [b"y"], "label_0": [1.0], "caption": ["c"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match="cannot decode"):
        read_pickapic(tmp_path / "c.parquet", resolution=8).load(read_pickapic(tmp_path / "c.parquet")[0].chosen)


def test_manifest_pairs_rankings_and_errors(tmp_path):
    path = write_pairs(tmp_path, n=4, tie_every=2)
    assert len(read_manifest(path)) == 2 and read_manifest(path).dropped_ties == 2
    ds = read_manifest(path, ties="keep", resolution=8)
    assert isinstance(ds, PairDataset) and [p.label for p in ds] == [0.5, 1.0, 0.5, 1.0]
    media = ds.load(ds[0].chosen)
    assert isinstance(media, ImageBatch) and media.pixels.shape == (1, 3, 8, 8)
    rk = tmp_path / "rankings.jsonl"
    rk.write_text(json.dumps({"prompt": "p", "items": ["media/000.png", "media/001.png", "media/002.png"],
                              "scores": [0.0, 1.0, 0.5]}) + "\n")
    rds = read_preferences(rk)
    assert isinstance(rds, RankingDataset) and rds.k == 3 and rds.modality == "image"
    pairs = rds.to_pairs("best-worst")
    assert pairs[0].chosen == "media/001.png" and pairs[0].rejected == "media/000.png"
    assert len(rds.to_pairs("all")) == 3
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(path.read_text() + rk.read_text())
    with pytest.raises(InputError, match="mixes pairs with rankings"):
        read_manifest(mixed)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a.png"}\n{nope\n')
    with pytest.raises(InputError, match="line 1"):
        read_manifest(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "p", "chosen": "nope.png", "rejected": "nope2.png"}\n')
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(missing).load("nope.png")


def test_fit_resolution_resizes_and_centre_crops():
    img = ImageBatch(torch.zeros(1, 3, 20, 40))
    img.pixels[..., 10:30] = 1.0  # a bright centre band
    out = fit_resolution(img, 10)
    assert out.pixels.shape == (1, 3, 10, 10) and out.pixels.mean() > 0.9


def test_cache_encodes_once_and_reuses(tmp_path):
    ds = read_manifest(write_pairs(tmp_path / "d", n=4), ties="keep")
    adapter = TinyAdapter()
    data = encode_dataset(ds, adapter, "gen-a", tmp_path / "cache", progress=False)
    assert adapter.encode_calls == 8 and data.latents.shape == (8, 4, 8, 8) and len(data) == 4
    assert data.items.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert data.cond["prompt_embeds"].shape == (4, 8, 16)  # 3 unique prompts + the empty prompt
    assert data.prompts.tolist() == [0, 1, 2, 0]
    assert data.scores[:, 0].tolist() == [1.0] * 4
    again = encode_dataset(ds, adapter, "gen-a", tmp_path / "cache", progress=False)
    every = torch.arange(8)
    assert adapter.encode_calls == 8 and torch.equal(again.latents[every], data.latents[every])
    encode_dataset(ds, adapter, "gen-b", tmp_path / "cache", progress=False)  # another generator, another key
    assert adapter.encode_calls == 16 and len(list((tmp_path / "cache").glob("*/meta.json"))) == 2


def test_syn_pic_win_rates_and_pair_modes():
    # two scorers, one prompt, k = 3: scorer A ranks 0 > 1 > 2, scorer B ranks 1 > 0 > 2
    scores = torch.tensor([[[3.0, 2.0, 1.0]], [[5.0, 9.0, 0.0]]])
    psi = win_rates(scores)
    assert torch.allclose(psi, torch.tensor([[0.75, 0.75, 0.0]]))  # C/(n(k-1)) = (2+1)/4, (1+2)/4, 0
    assert best_worst(psi) == [(0, 2, 1.0)]
    assert best_worst(torch.tensor([[0.5, 0.5]])) == [(0, 1, 0.5)]  # equal ψ: a tie, not a win
    psi4 = torch.tensor([[0.1, 0.9, 0.6, 0.3]])
    assert unifiedreward_sift(psi4, torch.tensor([[0.2, 0.7]])) == [(1, 0, 1.0)]  # chosen {1, 2}, rejected {0, 3}
    assert unifiedreward_sift(psi4, torch.tensor([[0.5, 0.5]])) == [None]  # ties do not default to image 1


class _Brightness(Scorer):
    """Mean pixel value of one channel: a deterministic scorer for builder tests."""

    def __init__(self, channel: int, name: str):
        super().__init__(name=name, device="cpu")
        self.channel = channel

    def _score_batch(self, media, prompts):
        return media.pixels[:, self.channel].mean((1, 2))


class _Palette:
    """A sampling-only generator of flat-colour images (seeded), for builder tests."""

    modality, name = "image", "palette"

    def sample(self, prompts, n=1, seed=0, batch_size=8, progress=True, **kw):
        g = torch.Generator().manual_seed(seed)
        colors = torch.rand(len(prompts) * n, 3, 1, 1, generator=g)
        return ImageBatch(colors.expand(-1, 3, 8, 8).clone(), prompts=[p for p in prompts for _ in range(n)])


@pytest.mark.parametrize("mode", ["best-worst", "unifiedreward"])
def test_build_preferences_writes_readable_manifests(tmp_path, mode):
    scorers = [_Brightness(0, "red"), _Brightness(1, "green")]
    res = build_preferences(_Palette(), scorers, ["a", "b", "c"], tmp_path / "out", k=4, seed=1, mode=mode, progress=False)
    rankings = read_manifest(res.rankings)
    assert isinstance(rankings, RankingDataset) and len(rankings) == 3 and rankings.k == 4
    for r in rankings:
        assert abs(sum(r.scores) / 4 - 0.5) < 1e-6  # win rates over all opponents average 1/2 without ties
    pairs = read_manifest(res.pairs, ties="keep")
    assert len(pairs) == res.n_pairs >= 1
    for p in pairs:
        rank = next(r for r in rankings if r.prompt == p.prompt)
        psi = dict(zip(rank.items, rank.scores))
        assert psi[p.chosen] > psi[p.rejected]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["scorers"] == ["red", "green"] and meta["k"] == 4
    raws = {json.loads(line)["prompt"]: json.loads(line) for line in res.rankings.read_text().splitlines()}
    for p in pairs:  # the margin: the raw score gap chosen − rejected, averaged over the scorers
        rec = raws[p.prompt]
        i, j = rec["items"].index(p.chosen), rec["items"].index(p.rejected)
        gap = sum(v[i] - v[j] for v in rec["raw"].values()) / 2
        assert p.margin == pytest.approx(gap, abs=1e-6)


def test_top_margin_keeps_the_pairs_with_the_largest_score_gap(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}.png", "rejected": f"r{i}.png", "label": 1.0, "margin": m}
            for i, m in enumerate([0.1, 0.5, 0.3, 0.2])]
    rows.append({"prompt": "p4", "chosen": "c4.png", "rejected": "r4.png", "label": 0.0, "margin": -0.4})  # b won by 0.4
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_manifest(path)
    assert pairs[4].chosen == "r4.png" and pairs[4].margin == pytest.approx(0.4)
    top = pairs.top_margin(0.4)
    assert [p.prompt for p in top] == ["p1", "p4"] and top.source == pairs.source  # file order kept
    assert len(pairs.top_margin(1.0)) == 5 and len(pairs.top_margin(0.01)) == 1
    ranked = RankingDataset([Ranking("p", ("a", "b", "c"), (0.9, 0.2, 0.5))]).to_pairs("all")
    assert [(p.chosen, p.rejected, p.margin) for p in ranked] == [("a", "c", pytest.approx(0.4)), ("a", "b", pytest.approx(0.7)),
                                                                  ("c", "b", pytest.approx(0.3))]
    rows[2].pop("margin")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="1 of 5 pairs have no 'margin'"):
        read_manifest(path).top_margin(0.5)


# ---------------------------------------------------------------------------------------------
# bad manifest rows name the file and line


@pytest.mark.parametrize("row, match", [
    ({"prompt": "p", "chosen": "a.png", "rejected": "b.png", "label": "yes"}, "line 2: 'label' must be a number"),
    ({"prompt": "p", "chosen": "a.png", "rejected": "b.png", "label": 0.7}, "line 2: label 0.7 is not one of"),
    ({"prompt": "p", "chosen": 3, "rejected": "b.png"}, "line 2: 'chosen' and 'rejected' must be media file paths"),
    ({"prompt": 5, "chosen": "a.png", "rejected": "b.png"}, "line 2: a record needs a 'prompt' string"),
    ({"prompt": "p", "items": ["a.png", "b.png"], "scores": [1, None]}, "line 2: each score must be a number"),
    ({"prompt": "p", "items": ["a.png", 2], "scores": [1, 0]}, "line 2: 'items' must be media file paths"),
    ({"prompt": "p", "items": ["a.png"], "scores": [1]}, "line 2: 'items' and 'scores' must be lists of the same length"),
    (["not", "a", "dict"], "line 2: a record needs"),
])
def test_bad_manifest_rows(tmp_path, row, match):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "chosen": "a.png", "rejected": "b.png"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError, match=match) as e:
        read_manifest(path)
    assert str(path) in str(e.value)


def test_pickapic_label_must_be_a_number(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"jpg_0": [_png((1, 2, 3))], "jpg_1": [_png((3, 2, 1))], "label_0": [None], "caption": ["c"]}),
                   tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"n.parquet row 0: label_0 must be a number, got None"):
        read_pickapic(tmp_path / "n.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="junk.parquet: cannot read the parquet file"):
        read_pickapic(tmp_path / "junk.parquet")


# ---------------------------------------------------------------------------------------------
# prompt files and shipped prompt sets


def test_read_prompts_from_a_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("  a red circle \n\n\nb\nc\u00e9\nd\n", encoding="utf-8")
    assert read_prompts(path) == ["a red circle", "b", "c\u00e9", "d"]
    assert read_prompts(str(path), n=2) == ["a red circle", "b"]  # no seed: the first n
    assert read_prompts(path, n=10) == ["a red circle", "b", "c\u00e9", "d"]
    drawn = read_prompts(path, n=9, seed=3)  # a seed: n draws with replacement
    assert drawn == ["b", "b", "c\u00e9", "d", "a red circle", "a red circle", "d", "c\u00e9", "b"]
    assert read_prompts(path, n=9, seed=3) == drawn and read_prompts(path, n=9, seed=4) != drawn
    with pytest.raises(InputError, match="asked for 0 prompts"):
        read_prompts(path, n=0)


def test_read_prompts_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(InputError, match="empty.txt: no prompts in the file"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin.txt: not UTF-8"):
        read_prompts(tmp_path / "latin.txt")
    with pytest.raises(InputError, match="'missing.txt': no such file"):
        read_prompts("missing.txt")
    with pytest.raises(InputError, match="did you mean 'synth-image-train'"):
        read_prompts("synth-imag-train")


def test_shipped_prompt_sets_are_the_synth_grammar_splits():
    from mmalign.paths import asset_path
    from mmalign.synth.prompt_sets import prompt_set_texts
    from mmalign.synth.prompts import all_prompts, split_of

    synth = [n for n in prompt_sets() if n.startswith("synth-")]
    assert synth == sorted(name.removesuffix(".txt") for name in prompt_set_texts())
    assert {"synth-image-train", "synth-image-count-heldout", "synth-video-change-train"} <= set(synth)
    for name, text in prompt_set_texts().items():  # `python -m mmalign.synth.prompt_sets` would write nothing new
        assert asset_path("prompts", name).read_text(encoding="utf-8") == text, f"{name}: rerun the script"
    train, held = read_prompts("synth-audio-train"), read_prompts("synth-audio-heldout")
    assert len(train) + len(held) == len(all_prompts("audio")) == 18 and not set(train) & set(held)
    assert {split_of(p) for p in held} == {"heldout"}
    assert len(read_prompts("synth-image-train", n=256, seed=0)) == 256
    count = read_prompts("synth-image-count-train")  # a skill's set: the prompts of its kind
    assert count and all(p.startswith("two ") and split_of(p) == "train" for p in count)


def test_write_prompt_sets(tmp_path):
    from mmalign.synth.prompt_sets import write_prompt_sets

    paths = write_prompt_sets(tmp_path)
    assert sorted(p.name for p in paths) == [f"{n}.txt" for n in prompt_sets() if n.startswith("synth-")]
    assert read_prompts(tmp_path / "synth-video-heldout.txt") == read_prompts("synth-video-heldout")


# ---------------------------------------------------------------------------------------------
# the scorer trainer reads the same data through the same readers


def test_read_pair_set_from_pairs_rankings_and_pickapic(tmp_path):
    from mmalign.scoring.train import read_pair_set

    path = write_pairs(tmp_path, n=4, size=8, tie_every=2)
    ps = read_pair_set(path)
    assert len(ps) == 4 and ps.labels.tolist() == [0.5, 1.0, 0.5, 1.0] and ps.a.pixels.shape == (4, 3, 8, 8)
    ds = read_manifest(path, ties="keep")
    assert torch.equal(ps.a.pixels[1:2], ds.load(ds[1].chosen).pixels)  # a = chosen
    rk = tmp_path / "rankings.jsonl"
    rk.write_text(json.dumps({"prompt": "p", "items": ["media/000.png", "media/001.png", "media/002.png"],
                              "scores": [0.0, 1.0, 1.0]}) + "\n")
    rps = read_pair_set(rk)  # every pair of the ranking, higher score first; equal scores a tie
    assert len(rps) == 3 and sorted(rps.labels.tolist()) == [0.5, 1.0, 1.0]
    assert read_pair_set(tmp_path).labels.tolist() == ps.labels.tolist()  # a folder: its pairs.jsonl
    pick = read_pair_set(_pickapic(tmp_path / "t.parquet", [0.0, 0.5]))
    assert pick.prompts == ["c0", "c1"] and pick.labels.tolist() == [1.0, 0.5] and pick.a.pixels.shape == (2, 3, 10, 12)
    assert pick.a.pixels[0, 1].mean() == 0 and pick.a.pixels[0, 0].mean() == 0  # label_0 = 0: jpg_1 (black, i = 0) won


def test_read_pair_set_keeps_mixed_sizes_unless_resized(tmp_path):
    from mmalign.media import MediaList, save_media
    from mmalign.scoring.train import read_pair_set

    path = write_pairs(tmp_path, n=2, size=8)
    save_media(ImageBatch(torch.rand(1, 3, 12, 10)), tmp_path / "media", names=["002.png"])
    mixed = read_pair_set(path).a  # each scorer preprocesses each item on its own
    assert isinstance(mixed, MediaList) and tuple(mixed.items[1].pixels.shape) == (1, 3, 12, 10)
    assert read_pair_set(path, resolution=6).a.pixels.shape == (2, 3, 6, 6)


def test_top_margin_is_a_recipe_key_for_pairwise_methods(tmp_path):
    from mmalign.align.trainer import train
    from mmalign.errors import ConfigError
    from test_trainer_adapter import base_recipe

    with pytest.raises(ConfigError, match="data.top_margin selects pairs; rank_dpo trains on whole rankings"):
        train(base_recipe(tmp_path, method="rank_dpo", data={"top_margin": 0.5}), adapter=TinyAdapter())
    with pytest.raises(InputError, match="8 of 8 pairs have no 'margin'"):  # written without margins
        train(base_recipe(tmp_path, data={"top_margin": 0.5}), adapter=TinyAdapter())
