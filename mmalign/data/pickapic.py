"""Pick-a-Pic-style parquet shards, read lazily: small columns row group by row group, image cells on demand.

Pick-a-Pic v2 (Kirstain et al. 2023, hub dataset ``yuvalkirstain/pickapic_v2``: ~850k pairs with
``jpg_0, jpg_1, label_0, caption`` per row, hundreds of GB of JPEG bytes) does not fit in memory, so
:func:`scan_rows` reads only ``caption`` and ``label_0`` of each row group
(``pyarrow.parquet.ParquetFile.read_row_group(columns=...)``) and gives each image a
:class:`ParquetRef` — file, row group, row, column — instead of its bytes. :func:`read_cell` reads one
cell when the latent cache encodes it, keeping the last opened file and the last read column chunks,
so sequential access reads each row group once.

A source is a ``.parquet`` file, a folder of shards (searched recursively when it has none at its top,
as ``huggingface-cli download --local-dir`` lays them out under ``data/``), or a hub dataset id
``org/name`` resolved from the local Hugging Face cache only (never downloaded inside a run). Shards
named like the hub's ``<split>-00000-of-00042[-hash].parquet`` from several splits are narrowed to
``train``, so a folder holding the test split never leaks it into training.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from mmalign.errors import InputError

PICKAPIC_COLUMNS = ("jpg_0", "jpg_1", "label_0", "caption")
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
#: the columns a scan reads; the image columns are read per cell by :func:`read_cell`
SCAN_COLUMNS = ("caption", "label_0")
TRAIN_SPLIT = "train"
_SHARD = re.compile(r"^(?P<split>\w+?)-\d{5}-of-\d{5}(-[0-9a-f]+)?\.parquet$")
_HUB_PART = re.compile(r"^[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True, slots=True)
class ParquetRef:
    """One image cell of a parquet file: ``file`` (absolute path), ``row_group``, ``row`` within it, ``column``."""

    file: str
    row_group: int
    row: int
    column: str

    def __str__(self) -> str:
        return f"{self.file} row group {self.row_group} row {self.row} ({self.column})"


class ParquetRow(NamedTuple):
    """A scanned row: ``where`` it is (file and row), its caption, raw ``label_0`` and its two image cells."""

    where: str
    caption: str
    label: Any
    first: ParquetRef
    second: ParquetRef


def is_hub_id(given: str) -> bool:
    """``org/name`` with no file suffix that is not an existing path (the rule :mod:`mmalign.generators.lora` uses)."""
    parts = given.split("/")
    return (len(parts) == 2 and all(_HUB_PART.match(p) for p in parts) and Path(given).suffix == ""
            and not os.path.exists(given))


def _download_hint(repo_id: str) -> str:
    return (f"download them with `huggingface-cli download --repo-type dataset {repo_id} --include \"*.parquet\" "
            "--local-dir DIR` and pass DIR")


def _reason(e: BaseException) -> str:
    """``e`` on one line (pyarrow's messages span several)."""
    return " ".join(str(e).split())


def _split_of(file: Path) -> str | None:
    m = _SHARD.match(file.name)
    return m.group("split") if m else None


def _shards(folder: Path, given: str) -> list[Path]:
    """The ``*.parquet`` files of ``folder`` (recursively if none at its top); only ``train`` when several splits."""
    files = sorted(folder.glob("*.parquet")) or sorted(folder.rglob("*.parquet"))
    splits = {s for s in map(_split_of, files) if s is not None}
    if len(splits) > 1:
        if TRAIN_SPLIT not in splits:
            raise InputError(f"{given}: holds shards of the splits {sorted(splits)}; pass the file or folder of the "
                             "one to read")
        files = [f for f in files if _split_of(f) == TRAIN_SPLIT]
    return files


def _hub_shards(repo_id: str) -> list[Path]:
    """The parquet shards of hub dataset ``repo_id`` in the local Hugging Face cache; InputError saying how to get them."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", local_files_only=True,
                                                   allow_patterns=["*.parquet"])
    except (LocalEntryNotFoundError, HFValidationError) as e:
        raise InputError(f"{repo_id}: hub dataset not in the Hugging Face cache ({type(e).__name__}); "
                         f"{_download_hint(repo_id)}") from e
    files = _shards(Path(folder), repo_id)
    if not files:
        raise InputError(f"{repo_id}: the Hugging Face cache holds no parquet shard of it; {_download_hint(repo_id)}")
    return files


def parquet_files(path: str | Path) -> list[Path]:
    """The shards of a source: a ``.parquet`` file, a folder of them, or a cached hub dataset id ``org/name``."""
    given = str(path)
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = _shards(p, given)
        if not files:
            raise InputError(f"{given}: no parquet file found; give a .parquet file or a folder of them")
        return files
    if is_hub_id(given):
        return _hub_shards(given)
    raise InputError(f"{given}: no such parquet file or folder; give a .parquet file, a folder of them or a hub "
                     "dataset id org/name")


def _open(file: Path):
    """``pyarrow.parquet.ParquetFile`` of ``file`` with the Pick-a-Pic columns checked (names and byte types)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{file}: cannot read the parquet file ({_reason(e)}); it is truncated or not parquet") from e
    schema = pf.schema_arrow
    missing = [c for c in PICKAPIC_COLUMNS if c not in schema.names]
    if missing:
        raise InputError(f"{file}: missing columns {missing}; a Pick-a-Pic file has {list(PICKAPIC_COLUMNS)}")
    types = {c: schema.field(c).type for c in IMAGE_COLUMNS}
    if not all(pa.types.is_binary(t) or pa.types.is_large_binary(t) for t in types.values()):
        raise InputError(f"{file}: jpg_0/jpg_1 must hold image bytes, got types {[str(t) for t in types.values()]}")
    return pf


def scan_rows(files: Sequence[Path]) -> Iterator[ParquetRow]:
    """Every row of ``files`` in order, reading only :data:`SCAN_COLUMNS` one row group at a time.

    A consumer that stops early (``limit``) leaves the remaining row groups and files unread."""
    import pyarrow as pa

    for f in files:
        pf = _open(f)
        name = os.path.abspath(f)
        start = 0
        for rg in range(pf.metadata.num_row_groups):
            try:
                table = pf.read_row_group(rg, columns=list(SCAN_COLUMNS))
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"{f} row group {rg}: cannot read it ({_reason(e)}); the file is truncated or corrupt") from e
            captions, labels = table.column("caption").to_pylist(), table.column("label_0").to_pylist()
            for i, (caption, label) in enumerate(zip(captions, labels)):
                yield ParquetRow(f"{f} row {start + i}", str(caption or ""), label,
                                 ParquetRef(name, rg, i, IMAGE_COLUMNS[0]), ParquetRef(name, rg, i, IMAGE_COLUMNS[1]))
            start += table.num_rows


def _stamp(file: str) -> tuple[int, int]:
    """(size, mtime in ns) of ``file``: part of a cell's identity, so a rewritten file is never served stale."""
    try:
        st = os.stat(file)
    except OSError as e:
        raise InputError(f"{file}: parquet file no longer readable ({_reason(e)}); read the data again") from e
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=1)
def _parquet_file(file: str, stamp: tuple[int, int]):
    return _open(Path(file))


@functools.lru_cache(maxsize=len(IMAGE_COLUMNS))
def _column_chunk(file: str, stamp: tuple[int, int], row_group: int, column: str):
    """One column of one row group (both image columns stay cached while a row group's pairs are encoded)."""
    return _parquet_file(file, stamp).read_row_group(row_group, columns=[column]).column(0)


def read_cell(ref: ParquetRef) -> bytes:
    """The bytes in cell ``ref``; InputError naming the file, row group and row when it holds none."""
    import pyarrow as pa

    try:
        column = _column_chunk(ref.file, _stamp(ref.file), ref.row_group, ref.column)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{ref}: cannot read the cell's row group ({_reason(e)}); the file is truncated or corrupt") from e
    if not 0 <= ref.row < len(column):
        raise InputError(f"{ref}: no such row; the file changed since it was read, read the data again")
    value = column[ref.row].as_py()
    if not isinstance(value, bytes):
        raise InputError(f"{ref}: the cell holds {type(value).__name__}, not image bytes; fix or drop the row")
    return value


def cell_key(ref: ParquetRef) -> str:
    """A cheap stable identity of a cell: file path, size and mtime, row group, row and column (no hashing)."""
    size, mtime = _stamp(ref.file)
    return f"parquet:{ref.file}:{size}:{mtime}:{ref.row_group}:{ref.row}:{ref.column}"


__all__ = ["ParquetRef", "ParquetRow", "PICKAPIC_COLUMNS", "parquet_files", "scan_rows", "read_cell", "cell_key",
           "is_hub_id"]
