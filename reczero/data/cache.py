"""On-disk cache of read interactions and built samples, as memory-mapped `datasets.Dataset`s.

The key hashes the source and sample configuration (the duplicate rule and the timestamp unit too)
together with every source file's path, size and mtime, so editing a data file or a setting rebuilds,
and nothing else does. Writes go to a temporary folder that is renamed into place, so an interrupted
build never leaves a cache that looks valid.

What `load_or_build` returns reads the cache lazily: `InteractionData.interactions` is an `ArrowRows`
and every `SampleTable` column an `ArrowColumn` over the memory-mapped Arrow files, turned into Python
values one record batch at a time and only the recently read batches kept, so an Amazon-scale file
never has to fit in Python lists (the item table, one entry per item, is read whole).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from reczero.data.samples import SampleConfig, SampleTable, build_samples
from reczero.data.schema import DuplicateCounts, Interaction, InteractionData, Item, RatingScale
from reczero.data.sources import SourceConfig, load_source, source_files

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # 2: the duplicate rule runs on every source; 3: each split's cap draws on its own seed
INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp", "review")


CHUNKS_IN_MEMORY = 256  # record batches (datasets writes 1,000 rows each) kept in Python form per column


class _Chunked(Sequence):
    """A memory-mapped Arrow column or table read by record batch: the batch holding a row is turned into
    Python values when first read, and the `CHUNKS_IN_MEMORY` most recently read batches are kept, so
    memory stays bounded and data that fits is read at list speed. Equal to any sequence with equal
    items, as the lists it stands for are."""

    def __init__(self, chunks: list):
        self.chunks = chunks
        self.starts = [0]
        for chunk in chunks:
            self.starts.append(self.starts[-1] + len(chunk))
        self._chunk = functools.lru_cache(maxsize=CHUNKS_IN_MEMORY)(self._read)

    def _read(self, k: int) -> list:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        k = bisect.bisect_right(self.starts, i) - 1
        return self._chunk(k)[i - self.starts[k]]

    def __iter__(self) -> Iterator:
        for k in range(len(self.chunks)):
            yield from self._read(k)  # one pass: no need to keep what it read

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None


class ArrowColumn(_Chunked):
    """One column of a memory-mapped table: `column[i]` is the Python value of row i."""

    def __init__(self, column):  # a pyarrow ChunkedArray
        super().__init__(column.chunks)

    def _read(self, k: int) -> list:
        return self.chunks[k].to_pylist()


class ArrowRows(_Chunked):
    """The interactions of a memory-mapped table, each an `Interaction` when it is read."""

    def __init__(self, table):  # a pyarrow Table with INTERACTION_COLUMNS
        super().__init__(table.select(list(INTERACTION_COLUMNS)).to_batches())

    def _read(self, k: int) -> list[Interaction]:
        batch = self.chunks[k]
        return [Interaction(*row) for row in zip(*(batch.column(n).to_pylist() for n in INTERACTION_COLUMNS))]


def default_cache_dir() -> Path:
    return Path(os.environ.get("RECZERO_CACHE", Path.home() / ".cache" / "reczero")) / "samples"


def cache_key(source: SourceConfig, samples: SampleConfig) -> str:
    files = []
    for path in source_files(source):
        stat = Path(path).stat()
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "source": dataclasses.asdict(source),
            "samples": dataclasses.asdict(samples),
            "files": files,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_build(
    source: SourceConfig, samples: SampleConfig, cache_dir: str | Path | None = None, use_cache: bool = True
) -> tuple[InteractionData, SampleTable, bool]:
    """(data, samples, cache_hit). Builds and stores on a miss; `use_cache=False` always rebuilds."""
    if not use_cache:
        data = load_source(source)
        return data, build_samples(data, samples), False
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / cache_key(source, samples)
    if (folder / "meta.json").exists():
        try:
            data, table = _load(folder)
            return data, table, True
        except Exception as err:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable sample cache %s (%s); rebuilding", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
    data = load_source(source)
    _store(folder, data, build_samples(data, samples))
    data, table = _load(folder)  # read back memory-mapped, as a hit would be
    return data, table, False


def _store(folder: Path, data: InteractionData, table: SampleTable) -> None:
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # a progress bar per table written is noise in training logs

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        rows = data.interactions
        Dataset.from_dict(
            {
                "user": [r.user for r in rows],
                "item": [r.item for r in rows],
                "rating": [r.rating for r in rows],
                "timestamp": [r.timestamp for r in rows],
                "review": [r.review for r in rows],
            }
        ).save_to_disk(str(tmp / "interactions"), **_shards(len(rows)))
        items = list(data.items.values())
        Dataset.from_dict(
            {
                "item_id": [i.item_id for i in items],
                "title": [i.title for i in items],
                "genres": [list(i.genres) for i in items],
                "brand": [i.brand for i in items],
                "price": [None if i.price is None else str(i.price) for i in items],
                "description": [i.description for i in items],
                "year": [i.year for i in items],
            }
        ).save_to_disk(str(tmp / "items"), **_shards(len(items)))
        Dataset.from_dict(table.columns()).save_to_disk(str(tmp / "samples"), **_shards(len(table)))
        meta = {
            "name": data.name,
            "scale": [data.scale.low, data.scale.high, data.scale.step],
            "skipped_rows": data.skipped_rows,
            "duplicates": dataclasses.asdict(data.duplicates),
            "dropped_short": table.dropped_short,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        # several processes may build the same cache at once (commands started together): the first
        # complete one stays, since another process may be reading it; only a damaged one is replaced
        if (folder / "meta.json").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process stored it in between
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _shards(rows: int) -> dict:
    """`datasets` writes no shard for an empty table and then cannot load it back: keep one file then."""
    return {"num_shards": 1} if rows == 0 else {}


def _load(folder: Path) -> tuple[InteractionData, SampleTable]:
    """The cached data and samples, memory-mapped (`ArrowRows`, `ArrowColumn`); the items read whole."""
    from datasets import load_from_disk

    meta = json.loads((folder / "meta.json").read_text())
    inter = load_from_disk(str(folder / "interactions")).data.table
    it = load_from_disk(str(folder / "items")).to_dict()
    items = {
        iid: Item(iid, title, tuple(genres), brand, price, desc, year)
        for iid, title, genres, brand, price, desc, year in zip(
            it["item_id"], it["title"], it["genres"], it["brand"], it["price"], it["description"], it["year"]
        )
    }
    samples = load_from_disk(str(folder / "samples")).data.table
    columns = {name: ArrowColumn(samples.column(name)) for name in SampleTable().columns()}
    if len({len(c) for c in columns.values()}) > 1:
        raise ValueError("sample columns of different lengths")
    table = SampleTable(**columns, dropped_short=meta["dropped_short"])
    data = InteractionData(
        meta["name"],
        ArrowRows(inter),
        items,
        RatingScale(*meta["scale"]),
        meta["skipped_rows"],
        DuplicateCounts(**meta["duplicates"]),
    )
    return data, table
