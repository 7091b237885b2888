"""Preference data: Pick-a-Pic reader and ties (P6), JSONL manifests, rankings, the latent cache, builders."""

from __future__ import annotations

import io
import json

import pytest
import torch

from mmalign.data.build import best_worst, build_preferences, unifiedreward_sift, win_rates
from mmalign.data.cache import encode_dataset
from mmalign.data.pairs import (
    PairDataset,
    RankingDataset,
    decode_image_bytes,
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


def test_p6_pickapic_ties_dropped_winner_first(tmp_path):
    path = _pickapic(tmp_path / "train.parquet", [1.0, 0.0, 0.5, 1.0, 0.5])
    ds = read_pickapic(path)
    assert len(ds) == 3 and ds.dropped_ties == 2
    assert [p.prompt for p in ds] == ["c0", "c1", "c3"]
    assert all(p.label == 1.0 for p in ds)
    c1 = ds[1]  # label_0 = 0: jpg_1 won, so it comes first
    assert decode_image_bytes(c1.chosen).pixels[0, 1, 0, 0] > 0 and decode_image_bytes(c1.chosen).pixels[0, 0, 0, 0] == 0


def test_p6_ties_kept_as_half_never_a_win(tmp_path):
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
    with pytest.raises(InputError, match="mixes pairs and rankings"):
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
    assert adapter.encode_calls == 8 and torch.equal(again.latents, data.latents)
    encode_dataset(ds, adapter, "gen-b", tmp_path / "cache", progress=False)  # another generator, another key
    assert adapter.encode_calls == 16 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


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
