"""The on-disk latent cache: shards written once and memory-mapped, a killed build that resumes without
re-encoding finished shards (and ends with the same tensors), corrupt media skipped and counted."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from mmalign.data.cache import RowShards, encode_dataset
from mmalign.data.pairs import read_manifest
from mmalign.errors import InputError
from test_trainer_adapter import TinyAdapter, write_pairs


def test_row_shards_gather_like_one_tensor():
    full = torch.arange(7 * 2 * 3, dtype=torch.float32).view(7, 2, 3)
    rows = RowShards([full[:3], full[3:6], full[6:]])
    index = torch.tensor([[6, 0], [4, 4]])
    assert torch.equal(rows[index], full[index]) and rows.shape == full.shape and rows.ndim == 3
    assert torch.equal(rows.materialize(), full)


def test_shards_equal_an_in_memory_encoding(tmp_path):
    ds = read_manifest(write_pairs(tmp_path / "d", n=4), ties="keep")  # 8 media items, 3 prompts + ""
    whole = encode_dataset(ds, TinyAdapter(), "g", None, progress=False)
    sharded = encode_dataset(ds, TinyAdapter(), "g", tmp_path / "cache", progress=False, shard_size=3)
    folder = next((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        "index.safetensors", "media-00000.safetensors", "media-00001.safetensors", "media-00002.safetensors",
        "prompts-00000.safetensors", "prompts-00001.safetensors"]
    assert isinstance(sharded.latents, RowShards) and sharded.latents.shape == (8, 4, 8, 8)
    every = torch.arange(8)
    # shard i encodes under seed ENCODE_SEED + i; the tiny encoder is deterministic, so the values agree
    assert torch.equal(sharded.latents[every], whole.latents[every])
    assert torch.equal(sharded.cond["prompt_embeds"][torch.arange(4)], whole.cond["prompt_embeds"])
    assert torch.equal(sharded.items, whole.items) and sharded.empty_prompt == 3


def test_killed_build_resumes_without_reencoding_finished_shards(tmp_path):
    ds = read_manifest(write_pairs(tmp_path / "d", n=4), ties="keep")
    killed = TinyAdapter()
    encode = killed.encode_media

    def dies_in_shard_three(media):
        if killed.encode_calls >= 6:  # shards of 3 items: two shards done, the third dies
            raise KeyboardInterrupt
        return encode(media)

    killed.encode_media = dies_in_shard_three
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(ds, killed, "g", tmp_path / "cache", progress=False, shard_size=3, batch_size=3)
    folder = next((tmp_path / "cache").iterdir())
    assert not (folder / "meta.json").exists() and len(list(folder.glob("media-*.safetensors"))) == 2
    assert not list(folder.glob(".*"))  # no partial shard left behind

    resumed = TinyAdapter()
    data = encode_dataset(ds, resumed, "g", tmp_path / "cache", progress=False, shard_size=3, batch_size=3)
    assert resumed.encode_calls == 2  # only the last shard's two items
    fresh = encode_dataset(ds, TinyAdapter(), "g", None, progress=False)
    assert torch.equal(data.latents[torch.arange(8)], fresh.latents)


def test_corrupt_media_is_skipped_and_counted(tmp_path):
    manifest = write_pairs(tmp_path / "d", n=4)
    bad = tmp_path / "d" / "media" / "003.png"  # the rejected image of pair 1
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    data = encode_dataset(read_manifest(manifest), TinyAdapter(), "g", tmp_path / "cache", progress=False)
    assert len(data) == 3 and data.skipped == 1
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    assert meta["skipped_records"] == 1 and meta["skipped_items"] == 1 and "003.png" in meta["failures"][0]["item"]
    assert encode_dataset(read_manifest(manifest), TinyAdapter(), "g", tmp_path / "cache", progress=False).skipped == 1


def test_all_media_corrupt_is_one_clear_error(tmp_path):
    manifest = write_pairs(tmp_path / "d", n=2)
    for p in (tmp_path / "d" / "media").iterdir():
        p.write_bytes(b"")
    with pytest.raises(InputError, match="could be decoded"):
        encode_dataset(read_manifest(manifest), TinyAdapter(), "g", None, progress=False)


def test_fit_records_sdxl_micro_conditioning():
    from mmalign.data.pairs import Fit, fit_resolution
    from mmalign.media import ImageBatch

    img = ImageBatch(torch.rand(1, 3, 40, 48))
    centre = fit_resolution(img, 32)  # 40×48 → 32×38, centre crop at left 3
    assert centre.pixels.shape == (1, 3, 32, 32)
    assert centre.metadata == [{"original_size": (40, 48), "crop_top_left": (0, 3)}]
    spots = {fit_resolution(img, Fit(32, random_crop=True), key=f"item{i}").metadata[0]["crop_top_left"] for i in range(40)}
    assert spots <= {(0, left) for left in range(7)} and len(spots) > 3  # every offset in range, several used
    again = fit_resolution(img, Fit(32, random_crop=True, random_flip=True), key="item7")
    assert torch.equal(again.pixels, fit_resolution(img, Fit(32, random_crop=True, random_flip=True), key="item7").pixels)
    flips = [torch.equal(fit_resolution(img, Fit(32, random_flip=True), key=f"k{i}").pixels, centre.pixels) for i in range(20)]
    assert 0 < sum(flips) < 20  # about half flipped


def test_sdxl_trains_with_each_images_original_size_and_crop(tmp_path):
    """SDXL micro-conditioning from each image (Podell et al. 2023, §2.2), cached next to its latents."""
    from mmalign.align.config import load_recipe
    from mmalign.align.trainer import compute_loss, step_generator
    from mmalign.data.pairs import Fit
    from mmalign.generators import load_generator
    from mmalign.generators.tiny import save_tiny
    from mmalign.media import ImageBatch, save_media

    folder = tmp_path / "d"
    save_media(ImageBatch(torch.rand(2, 3, 40, 48)), folder / "media", names=["a", "b"])
    save_media(ImageBatch(torch.rand(1, 3, 64, 32)), folder / "media", names=["c"])
    (folder / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "media/a.png", "rejected": "media/c.png"}) + "\n")
    adapter = load_generator(save_tiny("sdxl", tmp_path / "tiny"), device="cpu").trainable()
    data = encode_dataset(read_manifest(folder / "pairs.jsonl", resolution=Fit(32)), adapter, "t", tmp_path / "c", progress=False)
    assert data.media_cond["add_time_ids"].materialize().tolist() == [[40, 48, 0, 3, 32, 32], [64, 32, 16, 0, 32, 32]]
    seen = {}
    predict = adapter.predict

    def spy(noisy, t, cond):
        seen.update(cond)
        return predict(noisy, t, cond)

    adapter.predict = spy
    recipe = load_recipe({"generator": "t", "data": {"path": "x"}})
    compute_loss(recipe, adapter, data, torch.tensor([0]), step_generator(0, 0, 0, 0), torch.device("cpu"),
                 contextlib.nullcontext, contextlib.nullcontext)
    assert seen["add_time_ids"].tolist() == [[40, 48, 0, 3, 32, 32], [64, 32, 16, 0, 32, 32]]  # winner, loser rows
