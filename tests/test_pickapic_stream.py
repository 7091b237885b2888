"""Pick-a-Pic parquet read by row group with lazy image cells: refs, loading, memory, limits, sources, bad cells."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from mmalign.data.cache import encode_dataset
from mmalign.data.pairs import ParquetRef, read_pickapic, read_preferences
from mmalign.data.pickapic import _column_chunk
from mmalign.errors import InputError
from mmalign.media import decode_image_bytes

ROWS_PER_GROUP = 5


def _photo(i: int, side: int = 96) -> bytes:
    """A distinct JPEG per ``i``: a shifted crop of matplotlib's sample photo (Grace Hopper, 512×600)."""
    import matplotlib.cbook as cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        x, y = (7 * i) % (im.width - side), (11 * i) % (im.height - side)
        buf = io.BytesIO()
        im.crop((x, y, x + side, y + side)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write(path, labels, side: int = 96, cells: dict | None = None) -> dict[tuple[int, str], bytes]:
    """Pick-a-Pic parquet with ``ROWS_PER_GROUP`` rows per row group; returns the image bytes by (row, column).

    ``cells`` overrides single cells: ``{(row, column): value}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(labels)
    images = {(i, c): _photo(2 * i + j, side) for i in range(n) for j, c in enumerate(("jpg_0", "jpg_1"))}
    images.update(cells or {})
    table = pa.table({"jpg_0": pa.array([images[i, "jpg_0"] for i in range(n)], pa.binary()),
                      "jpg_1": pa.array([images[i, "jpg_1"] for i in range(n)], pa.binary()),
                      "label_0": labels, "label_1": [1 - x for x in labels], "caption": [f"c{i}" for i in range(n)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP)
    return images


def test_reading_gives_lazy_cells_that_load_the_right_image(tmp_path):
    labels = [1.0, 0.0, 0.5, 1.0] * 4  # 16 rows in 4 row groups, ties at rows 2, 6, 10, 14
    images = _write(tmp_path / "t.parquet", labels)
    ds = read_pickapic(tmp_path / "t.parquet")
    assert len(ds) == 12 and ds.dropped_ties == 4 and ds.modality == "image"
    refs = [r for p in ds for r in (p.chosen, p.rejected)]
    assert all(isinstance(r, ParquetRef) for r in refs)
    assert {r.row_group for r in refs} == {0, 1, 2, 3} and max(r.row for r in refs) == ROWS_PER_GROUP - 1
    for pair in random.Random(0).sample(list(ds), 5):
        row = int(pair.prompt[1:])
        winner, loser = ("jpg_0", "jpg_1") if labels[row] == 1.0 else ("jpg_1", "jpg_0")
        assert (pair.chosen.column, pair.chosen.row_group * ROWS_PER_GROUP + pair.chosen.row) == (winner, row)
        assert torch.equal(ds.load(pair.chosen).pixels, decode_image_bytes(images[row, winner]).pixels)
        assert torch.equal(ds.load(pair.rejected).pixels, decode_image_bytes(images[row, loser]).pixels)
    kept = read_pickapic(tmp_path / "t.parquet", ties="keep")
    assert len(kept) == 16 and [p.label for p in kept][:4] == [1.0, 1.0, 0.5, 1.0]


_MEASURE = """
import json, sys, tracemalloc
import pyarrow as pa
from mmalign.data.pairs import read_pickapic
read_pickapic(sys.argv[1], limit=1)  # imports (pyarrow.parquet) before measuring
tracemalloc.start()
ds = read_pickapic(sys.argv[1])
print(json.dumps({"pairs": len(ds), "python_peak": tracemalloc.get_traced_memory()[1],
                  "arrow_peak": pa.default_memory_pool().max_memory()}))
"""


def test_reading_memory_does_not_grow_with_image_bytes(tmp_path):
    images = _write(tmp_path / "big.parquet", [1.0, 0.0] * 20, side=256)
    total = sum(map(len, images.values()))
    assert total > 2_000_000
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "big.parquet")], capture_output=True,
                         text=True, check=True, timeout=120)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["pairs"] == 40
    assert measured["python_peak"] < total / 20 and measured["arrow_peak"] < total / 20, (measured, total)


def test_sequential_loads_read_each_row_group_once(tmp_path):
    _write(tmp_path / "t.parquet", [1.0, 0.0] * 5)  # 2 row groups
    ds = read_pickapic(tmp_path / "t.parquet")
    _column_chunk.cache_clear()
    for pair in ds:
        ds.load(pair.chosen), ds.load(pair.rejected)
    assert _column_chunk.cache_info().misses == 4  # 2 row groups × 2 image columns


def test_ref_key_is_cheap_stable_and_the_latent_cache_works(tmp_path):
    from test_trainer_adapter import TinyAdapter

    path = tmp_path / "t.parquet"
    _write(path, [1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 1.0])
    ds = read_pickapic(path, resolution=8)
    st = os.stat(path)
    assert ds.ref_key(ds[0].chosen) == f"parquet:{path}:{st.st_size}:{st.st_mtime_ns}:0:0:jpg_0"
    assert len({ds.ref_key(r) for p in ds for r in (p.chosen, p.rejected)}) == 2 * len(ds)
    before = ds.fingerprint()
    assert read_pickapic(path, resolution=8).fingerprint() == before
    adapter = TinyAdapter()
    first = encode_dataset(ds, adapter, "tiny", tmp_path / "cache", batch_size=3, progress=False)
    again = encode_dataset(read_pickapic(path, resolution=8), adapter, "tiny", tmp_path / "cache", progress=False)
    assert first.latents.shape == (2 * len(ds), 4, 4, 4) and again.path == first.path
    assert torch.equal(first.latents.materialize(), again.latents.materialize()) and torch.equal(first.items, again.items)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the same bytes, touched: a new identity
    assert read_pickapic(path, resolution=8).fingerprint() != before


def test_limit_stops_before_later_row_groups(tmp_path):
    path = tmp_path / "t.parquet"
    _write(path, [1.0] * 7 + [0.7] + [1.0] * 4)  # an invalid label in row group 1
    ds = read_pickapic(path, limit=4)
    assert [p.prompt for p in ds] == ["c0", "c1", "c2", "c3"]
    with pytest.raises(InputError, match=r"t.parquet row 7: label 0.7"):
        read_pickapic(path)


def test_corrupt_or_empty_cell_is_an_input_error_naming_its_place(tmp_path):
    path = tmp_path / "t.parquet"
    _write(path, [1.0] * 8, cells={(6, "jpg_1"): b"\xff\xd8 not a jpeg", (7, "jpg_0"): None})
    ds = read_pickapic(path)  # reading never touches the image cells
    assert torch.equal(ds.load(ds[5].chosen).pixels, ds.load(ds[5].chosen).pixels)
    with pytest.raises(InputError, match=r"t.parquet row group 1 row 1 \(jpg_1\): cannot decode image"):
        ds.load(ds[6].rejected)
    with pytest.raises(InputError, match=r"t.parquet row group 1 row 2 \(jpg_0\): the cell holds NoneType"):
        ds.load(ds[7].chosen)


def test_corrupt_row_group_is_an_input_error_and_spares_the_others(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    _write(path, [1.0] * 10)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)  # jpg_0 of rows 5-9
    raw = bytearray(path.read_bytes())
    raw[chunk.data_page_offset : chunk.data_page_offset + 16] = b"\xff" * 16  # its page header
    path.write_bytes(bytes(raw))
    ds = read_pickapic(path)
    with pytest.raises(InputError, match=r"t.parquet row group 1 row 0 \(jpg_0\): cannot read the cell's row group "
                                         r"\([^\n]*\); the file is truncated or corrupt$"):
        ds.load(ds[5].chosen)
    assert ds.load(ds[4].chosen).pixels.shape == ds.load(ds[5].rejected).pixels.shape == (1, 3, 96, 96)


def test_image_columns_must_be_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"jpg_0": ["a.jpg"], "jpg_1": ["b.jpg"], "label_0": [1.0], "caption": ["c"]}),
                   tmp_path / "s.parquet")
    with pytest.raises(InputError, match=r"s.parquet: jpg_0/jpg_1 must hold image bytes, got types \['string'"):
        read_pickapic(tmp_path / "s.parquet")


def test_folder_of_hub_shards_reads_the_train_split(tmp_path):
    _write(tmp_path / "dl" / "data" / "train-00000-of-00002-0a1b.parquet", [1.0] * 3)
    _write(tmp_path / "dl" / "data" / "train-00001-of-00002-0a1b.parquet", [0.0] * 2)
    _write(tmp_path / "dl" / "data" / "test-00000-of-00001-0a1b.parquet", [1.0] * 4)
    ds = read_preferences(tmp_path / "dl")  # auto: no manifest, shards under data/
    assert len(ds) == 5 and {os.path.basename(p.chosen.file)[:5] for p in ds} == {"train"}
    assert len(read_pickapic(tmp_path / "dl" / "data" / "test-00000-of-00001-0a1b.parquet")) == 4
    (tmp_path / "dl" / "data" / "train-00000-of-00002-0a1b.parquet").unlink()
    (tmp_path / "dl" / "data" / "train-00001-of-00002-0a1b.parquet").unlink()
    _write(tmp_path / "dl" / "data" / "validation-00000-of-00001.parquet", [1.0])
    with pytest.raises(InputError, match=r"splits \['test', 'validation'\]; pass the file or folder"):
        read_pickapic(tmp_path / "dl")


def test_hub_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"org/pics: hub dataset not in the Hugging Face cache .*huggingface-cli download "
                                         r"--repo-type dataset org/pics --include \"\*.parquet\" --local-dir DIR"):
        read_preferences("org/pics")
    repo = tmp_path / "hub" / "datasets--org--pics"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _write(repo / "snapshots" / commit / "data" / "train-00000-of-00001.parquet", [0.0, 1.0, 0.5])
    ds = read_preferences("org/pics", ties="keep")
    assert [p.label for p in ds] == [1.0, 1.0, 0.5] and ds.source == "org/pics" and ds.load(ds[0].chosen).pixels.shape[0] == 1
