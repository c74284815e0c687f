"""`reenrich export --hub DIR`: a folder ready to push as a Hugging Face dataset repository.

    DIR/README.md                                the dataset card (`worker.dataset.card`)
    DIR/data/train-00000-of-0000N.parquet        the rows of each split
    DIR/data/validation-00000-of-0000M.parquet

The rows are those the JSON Lines export of the same options writes, as
Parquet through pyarrow: zstd, typed columns (`messages` / `prompt` /
`completion` as lists of {role, content} structs, metadata columns typed,
nulls allowed), so `datasets.load_dataset(DIR)` reads them with the
features the card declares. Rows are buffered into row groups of at most
ROW_GROUP_ROWS rows or ROW_GROUP_BYTES of text (small enough to stream and
for the Hub's viewer to page through), and a shard is closed before the
next row group would take it past the shard size. Shards are written under
temporary names and renamed when the export completes; shards of an earlier
export into the same folder that this one does not write are removed, so
the folder holds exactly this export. With `export --workers N` each slice
writes its own shards, which are numbered in slice order when the export
completes (`worker.dataset.export_slices`): N shards or more, the same rows.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from worker.dataset import formats
from worker.errors import ReenrichError

HUB_FORMATS = ("chat", "prompt-completion")
DEFAULT_SHARD_MB = 500.0
ROW_GROUP_ROWS = 1000
ROW_GROUP_BYTES = 32 << 20
FOOTER_MARGIN = 64 << 10  # what closing a shard adds (footer, metadata), generously
COMPRESSION = "zstd"
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d{5}-of-\d{5}\.parquet$")
LICENSE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,63}$")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
# Every column a chat / prompt-completion row can have, and its Parquet type.
COLUMN_TYPES: dict[str, pa.DataType] = {
    "messages": MESSAGES, "prompt": MESSAGES, "completion": MESSAGES,
    "conversation_id": pa.string(), "persona_archetype": pa.string(),
    "emotional_arc_key": pa.string(), "training_topic_key": pa.string(),
    "quality_score": pa.float64(), "quality_tier": pa.string(), "turn_number": pa.int64(),
}


DICTIONARY_COLUMNS = frozenset({"persona_archetype", "emotional_arc_key", "training_topic_key",
                                "quality_tier"})
DTYPES = {pa.string(): "string", pa.float64(): "float64", pa.int64(): "int64"}


class HubError(ReenrichError):
    """The Hub folder cannot be written as asked; the message says what to change."""


def columns(fmt: str, strip_metadata: bool) -> list[str]:
    """The columns of a `fmt` row, in the order the JSON Lines export writes them."""
    head = ["messages"] if fmt == "chat" else ["prompt", "completion"]
    if strip_metadata:
        return head
    tail = ["turn_number"] if fmt == "prompt-completion" else []
    return [*head, *formats.METADATA_COLUMNS, *tail]


def schema(fmt: str, strip_metadata: bool) -> pa.Schema:
    names = columns(fmt, strip_metadata)
    unknown = [n for n in names if n not in COLUMN_TYPES]
    if unknown:
        raise HubError(f"no Parquet type for column(s) {', '.join(unknown)}: add them to "
                       "worker.dataset.hub.COLUMN_TYPES")
    return pa.schema([pa.field(n, COLUMN_TYPES[n], nullable=True) for n in names])


def _feature_body(data_type: pa.DataType) -> dict[str, Any]:
    """A feature as the card's `dataset_info.features` spells it (as `datasets` does)."""
    if pa.types.is_list(data_type):
        return {"list": [{"name": f.name, **_feature_body(f.type)}
                         for f in data_type.value_type]}
    return {"dtype": DTYPES[data_type]}


def features(table_schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, **_feature_body(f.type)} for f in table_schema]


def _row_bytes(row: dict[str, Any]) -> int:
    size = 64
    for value in row.values():
        if isinstance(value, list):
            size += sum(len(m.get("content") or "") + 16 for m in value)
        elif isinstance(value, str):
            size += len(value)
        else:
            size += 8
    return size


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


class ParquetSink:
    """One split's shards: rows in, row groups out, shards renamed into place on close."""

    def __init__(self, directory: Path, split: str, fmt: str, strip_metadata: bool,
                 shard_mb: float, part: str = "", owner: int | None = None) -> None:
        """`part`, `owner`: a slice of `export --workers` names its temporary shards
        `.<split>-<part><i>.parquet.tmp-<owner>` (owner: the exporting process)."""
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.path = self.data / f"{split}-*.parquet"  # what the card's data_files glob says
        self.schema = schema(fmt, strip_metadata)
        self.names = list(self.schema.names)
        self.shard_bytes = int(shard_mb * (1 << 20))
        self.group_bytes = max(1, min(ROW_GROUP_BYTES, self.shard_bytes // 4))
        self.rows = 0
        self.num_bytes = 0  # the rows' Arrow size: `dataset_info.splits[].num_bytes`
        self._buffer: list[dict[str, Any]] = []
        self._buffered = 0
        self._temps: list[Path] = []
        self._file: Any = None
        self._writer: pq.ParquetWriter | None = None
        self._groups = 0  # row groups in the open shard
        self._ratio = 1.0  # compressed / Arrow bytes so far, to predict the next group
        self.shards: list[Path] = []
        self._part = part
        self._owner = os.getpid() if owner is None else owner

    def write(self, row: dict[str, Any], document: dict[str, Any]) -> None:
        if list(row) != self.names:
            raise HubError(f"a {self.split} row has columns {list(row)}, the Parquet schema "
                           f"{self.names}: update worker.dataset.hub.columns")
        self._buffer.append(row)
        self._buffered += _row_bytes(row)
        self.rows += 1
        if len(self._buffer) >= ROW_GROUP_ROWS or self._buffered >= self.group_bytes:
            self._flush()

    def _open_shard(self) -> None:
        temp = self.data / (f".{self.split}-{self._part}{len(self._temps):05d}.parquet"
                            f".tmp-{self._owner}")
        self._temps.append(temp)
        self._file = pa.OSFile(str(temp), "wb")
        # Dictionary encoding only where values repeat: trying it on every message's
        # content doubled the write time for the same size.
        self._writer = pq.ParquetWriter(self._file, self.schema, compression=COMPRESSION,
                                        use_dictionary=self._dictionary_columns())
        self._groups = 0

    def _dictionary_columns(self) -> list[str]:
        paths = [f"{name}.list.element.role" for name in self.names
                 if COLUMN_TYPES[name] == MESSAGES]
        return paths + [name for name in self.names if name in DICTIONARY_COLUMNS]

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = None

    def _flush(self) -> None:
        if not self._buffer and self._temps:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        self._buffer, self._buffered = [], 0
        if self._writer is not None and self._groups:
            predicted = int(table.nbytes * self._ratio) + FOOTER_MARGIN
            if self._file.tell() + predicted > self.shard_bytes:
                self._close_shard()
        if self._writer is None:
            self._open_shard()
        assert self._writer is not None
        before = self._file.tell()
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self._groups += 1
        self.num_bytes += table.nbytes
        if table.nbytes:
            self._ratio = max(self._ratio * 0.5, (self._file.tell() - before) / table.nbytes)

    def close(self) -> None:
        self._flush()  # also writes the one (empty) shard of a split with no rows
        self._close_shard()
        total = len(self._temps)
        self.shards = [self.data / shard_name(self.split, i, total) for i in range(total)]
        for temp, final in zip(self._temps, self.shards, strict=True):
            os.replace(temp, final)

    def finish_part(self) -> list[Path]:
        """A slice's shards, closed under their temporary names (none when it has no row)."""
        if self._buffer:
            self._flush()
        self._close_shard()
        return list(self._temps)

    def absorb(self, temps: list[Path], rows: int, num_bytes: int) -> None:
        """Take over a slice's shards (`finish_part`), after those already taken."""
        self._temps += temps
        self.rows += rows
        self.num_bytes += num_bytes

    def abort(self) -> None:
        try:
            self._close_shard()
        finally:
            for temp in self._temps:
                temp.unlink(missing_ok=True)


def remove_stale_shards(directory: Path, keep: list[Path]) -> list[Path]:
    """Shards in DIR/data of an earlier export that this one did not write (removed)."""
    data = directory / "data"
    kept = {p.resolve() for p in keep}
    stale = [p for p in sorted(data.glob("*.parquet"))
             if SHARD_NAME.match(p.name) and p.resolve() not in kept]
    for path in stale:
        path.unlink()
    return stale


@dataclass(frozen=True)
class HubSplit:
    num_examples: int
    num_bytes: int
    shards: tuple[str, ...]
    download_size: int

    def as_dict(self) -> dict[str, Any]:
        return {"num_examples": self.num_examples, "num_bytes": self.num_bytes,
                "shards": list(self.shards), "download_size": self.download_size}


@dataclass(frozen=True)
class SplitInfo:
    """What the card's YAML says about the Parquet files (the report's `hub`)."""

    directory: str
    license: str
    features: list[dict[str, Any]]
    splits: dict[str, HubSplit]
    compression: str
    download_size: int
    dataset_size: int

    def as_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "license": self.license,
                "features": self.features,
                "splits": {name: s.as_dict() for name, s in self.splits.items()},
                "compression": self.compression, "download_size": self.download_size,
                "dataset_size": self.dataset_size}


def split_info(sinks: dict[str, ParquetSink], license_id: str) -> SplitInfo:
    first = next(iter(sinks.values()))
    splits = {name: HubSplit(num_examples=sink.rows, num_bytes=sink.num_bytes,
                             shards=tuple(p.name for p in sink.shards),
                             download_size=sum(p.stat().st_size for p in sink.shards))
              for name, sink in sinks.items()}
    return SplitInfo(directory=str(first.data.parent), license=license_id,
                     features=features(first.schema), splits=splits, compression=COMPRESSION,
                     download_size=sum(s.download_size for s in splits.values()),
                     dataset_size=sum(s.num_bytes for s in splits.values()))


def dataset_info_yaml(hub: SplitInfo) -> dict[str, Any]:
    return {"features": hub.features,
            "splits": [{"name": name, "num_bytes": s.num_bytes, "num_examples": s.num_examples}
                       for name, s in hub.splits.items()],
            "download_size": hub.download_size, "dataset_size": hub.dataset_size}
