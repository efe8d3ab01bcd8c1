"""On-disk cache of read interactions and built samples, as Arrow tables through `datasets`.

The key hashes the source and sample configuration (the duplicate rule and the timestamp unit too)
together with every source file's path, size and mtime, so editing a data file or a setting rebuilds,
and nothing else does. Writes go to a temporary
folder that is renamed into place, so an interrupted build never leaves a cache that looks valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from reczero.data.samples import SampleConfig, SampleTable, build_samples
from reczero.data.schema import DuplicateCounts, Interaction, InteractionData, Item, RatingScale
from reczero.data.sources import SourceConfig, load_source, source_files

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # 2: the duplicate rule runs on every source; 3: each split's cap draws on its own seed


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
    data = load_source(source)
    table = build_samples(data, samples)
    _store(folder, data, table)
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
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _shards(rows: int) -> dict:
    """`datasets` writes no shard for an empty table and then cannot load it back: keep one file then."""
    return {"num_shards": 1} if rows == 0 else {}


def _load(folder: Path) -> tuple[InteractionData, SampleTable]:
    from datasets import load_from_disk

    meta = json.loads((folder / "meta.json").read_text())
    inter = load_from_disk(str(folder / "interactions")).to_dict()
    rows = [
        Interaction(u, i, r, t, rv)
        for u, i, r, t, rv in zip(inter["user"], inter["item"], inter["rating"], inter["timestamp"], inter["review"])
    ]
    it = load_from_disk(str(folder / "items")).to_dict()
    items = {
        iid: Item(iid, title, tuple(genres), brand, price, desc, year)
        for iid, title, genres, brand, price, desc, year in zip(
            it["item_id"], it["title"], it["genres"], it["brand"], it["price"], it["description"], it["year"]
        )
    }
    cols = load_from_disk(str(folder / "samples")).to_dict()
    table = SampleTable(dropped_short=meta["dropped_short"])
    for name in table.columns():
        getattr(table, name).extend(cols[name])
    data = InteractionData(
        meta["name"],
        rows,
        items,
        RatingScale(*meta["scale"]),
        meta["skipped_rows"],
        DuplicateCounts(**meta["duplicates"]),
    )
    return data, table
