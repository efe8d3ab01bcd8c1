"""Where interactions come from: a `SourceConfig` (a nested LightningCLI argument) and `load_source`.

`load_source` dispatches to a reader in `readers/` (or to the synthetic demo set), then puts every
source through the one duplicate rule (`apply_duplicate_rule`), and returns the common
`InteractionData`; `source_files` lists the files a source reads, so a cache can be keyed by their
size and mtime. `format="auto"` looks at the directory (or the file) to pick the format.

Why a duplicate rule: real dumps repeat (user, item) interactions. Amazon's 5-core files hold one copy
of a review per product variant (same user, item, rating and day). Under a leave-last split a copy of a
user's test rating would then sit in the training data, where a user-mean or k-NN baseline finds it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from reczero.data import readers
from reczero.data.readers.fields import TIMESTAMP_UNITS
from reczero.data.schema import DUPLICATE_RULES, DataFormatError, DuplicateCounts, InteractionData, RatingScale

log = logging.getLogger(__name__)

FORMATS = (
    "synthetic", "auto", "movielens-100k", "movielens-1m", "movielens-10m", "movielens-csv",
    "amazon-2018", "amazon-2023", "yelp", "csv", "jsonl",
)  # fmt: skip
_WITH_ITEMS_PATH = ("amazon-2018", "amazon-2023", "csv", "jsonl", "auto")
_WITH_COLUMNS = ("csv", "jsonl", "auto")


@dataclass
class SourceConfig:
    """Where interactions come from. Used as a nested LightningCLI argument (`--data.source.format=...`).

    Args:
        format: synthetic | auto | movielens-100k | movielens-1m | movielens-10m | movielens-csv |
            amazon-2018 | amazon-2023 | yelp | csv | jsonl. `auto` picks one from the path's contents.
        path: a directory (movielens, yelp) or the reviews file (amazon, csv, jsonl).
        items_path: the item metadata file where the format keeps it apart (amazon meta, generic items).
        columns: generic formats: our field (user, item, rating, timestamp, review) -> their column name.
        item_columns: generic items file: our field (item, title, genres, brand, price, description,
            year) -> their column name.
        scale: '1-5', '0.5-5', '1-10'; None: the format's default, or detected (generic formats).
        on_bad_row: 'error' stops at the first malformed row; 'skip' drops and counts bad rows.
        duplicates: what to do with repeated (user, item) interactions, in every format:
            'latest' keeps the latest by timestamp (a tie: the later line), 'first' the earliest (a
            tie: the earlier line), 'keep' keeps them all (a leave-last split may then put a copy of a
            test rating in train), 'error' stops at the first repeat, naming the file and both lines.
            What was found and dropped is counted in `InteractionData.duplicates`.
        timestamp_unit: csv / jsonl timestamps: 's' unix seconds or an ISO date, 'ms' unix
            milliseconds (floor-divided to seconds), 'iso' ISO-8601 dates/datetimes only (UTC if no zone).
        max_rows: stop after this many interactions (quick runs); None reads everything.
        synthetic_users: users in the synthetic demo set.
        synthetic_items: items in the synthetic demo set.
        synthetic_ratings_per_user: ratings per synthetic user.
        seed: seed of the synthetic demo set.
    """

    format: str = "synthetic"
    path: str | None = None
    items_path: str | None = None
    columns: dict[str, str] | None = None
    item_columns: dict[str, str] | None = None
    scale: str | None = None
    on_bad_row: str = "error"
    duplicates: str = "latest"
    timestamp_unit: str = "s"
    max_rows: int | None = None
    synthetic_users: int = 300
    synthetic_items: int = 150
    synthetic_ratings_per_user: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"source format {self.format!r} is unknown; known formats: {', '.join(FORMATS)}")
        if self.format != "synthetic" and not self.path:
            raise ValueError(f"source format {self.format!r} needs a path (a directory or the reviews file)")
        if self.on_bad_row not in readers.ON_BAD_ROW:
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        if self.duplicates not in DUPLICATE_RULES:
            raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_RULES)}, got {self.duplicates!r}")
        if self.timestamp_unit not in TIMESTAMP_UNITS:
            raise ValueError(
                f"timestamp_unit must be one of {', '.join(TIMESTAMP_UNITS)}, got {self.timestamp_unit!r}"
            )
        if self.timestamp_unit != "s" and self.format not in _WITH_COLUMNS:
            raise ValueError(f"timestamp_unit applies to the csv and jsonl formats; {self.format!r} has its own")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {self.max_rows}")
        if self.scale is not None:
            RatingScale.parse(self.scale)  # raises a clear ValueError on a bad scale
        if self.items_path is not None and self.format not in _WITH_ITEMS_PATH:
            raise ValueError(
                f"items_path applies to {', '.join(_WITH_ITEMS_PATH[:-1])}; {self.format!r} finds its own item file"
            )
        if (self.columns or self.item_columns) and self.format not in _WITH_COLUMNS:
            raise ValueError(f"columns / item_columns apply to the csv and jsonl formats, not {self.format!r}")
        for name in ("synthetic_users", "synthetic_items", "synthetic_ratings_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def detect_format(path: str | Path) -> str:
    """The format of a directory (by its files) or of a reviews file (by its first JSON object or suffix)."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "u.data").is_file():
            return "movielens-100k"
        if (p / "ratings.dat").is_file():
            return "movielens-1m" if (p / "users.dat").is_file() else "movielens-10m"
        if (p / "ratings.csv").is_file():
            return "movielens-csv"
        if any((p / n).is_file() for n in ("review.json", "yelp_academic_dataset_review.json", "review.json.gz")):
            return "yelp"
        raise ValueError(
            f"cannot tell the format of {p}: expected u.data (movielens-100k), ratings.dat (movielens-1m/10m), "
            "ratings.csv (movielens-csv) or review.json (yelp); set format explicitly"
        )
    if not p.is_file():
        raise FileNotFoundError(f"auto: {p} is neither a directory nor a file")
    if readers.table_kind(p) == "csv":
        return "csv"
    keys = _first_keys(p)
    if {"reviewerID", "asin", "overall"} <= keys:
        return "amazon-2018"
    if {"user_id", "parent_asin", "rating"} <= keys:
        return "amazon-2023"
    return "jsonl"


def _first_keys(path: Path) -> set[str]:
    """Keys of the first JSON object in the file (empty when the first line is not one)."""
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8") as f:
        try:
            for text in f:
                if text.strip():
                    obj = json.loads(text)
                    return set(obj) if isinstance(obj, dict) else set()
        except (ValueError, OSError, EOFError):
            return set()
    return set()


def _resolved(cfg: SourceConfig) -> str:
    return detect_format(cfg.path) if cfg.format == "auto" else cfg.format  # type: ignore[arg-type]


def source_files(cfg: SourceConfig) -> list[Path]:
    """The files `load_source(cfg)` reads ([] for synthetic); a missing required file raises FileNotFoundError."""
    fmt = _resolved(cfg)
    if fmt == "synthetic":
        return []
    if fmt == "movielens-100k":
        return readers.movielens_100k_files(cfg.path)  # type: ignore[arg-type]
    if fmt in ("movielens-1m", "movielens-10m"):
        return readers.movielens_dat_files(cfg.path, fmt)  # type: ignore[arg-type]
    if fmt == "movielens-csv":
        return readers.movielens_csv_files(cfg.path)  # type: ignore[arg-type]
    if fmt == "yelp":
        return readers.yelp_files(cfg.path)  # type: ignore[arg-type]
    files = [readers.existing_file(fmt, cfg.path, "reviews file")]
    if cfg.items_path is not None:
        files.append(readers.existing_file(fmt, cfg.items_path, "items file"))
    return files


def load_source(cfg: SourceConfig) -> InteractionData:
    """Read the configured source into the common form, then apply the duplicate rule (`cfg.duplicates`)."""
    return apply_duplicate_rule(_read_source(cfg), cfg.duplicates)


def _read_source(cfg: SourceConfig) -> InteractionData:
    fmt = _resolved(cfg)
    if cfg.timestamp_unit != "s" and fmt not in ("csv", "jsonl"):
        raise ValueError(f"timestamp_unit applies to the csv and jsonl formats; {cfg.path} is {fmt!r}")
    if fmt == "synthetic":
        from reczero.data.synthetic import generate_synthetic

        data = generate_synthetic(
            num_users=cfg.synthetic_users,
            num_items=cfg.synthetic_items,
            ratings_per_user=cfg.synthetic_ratings_per_user,
            seed=cfg.seed,
        )
        if cfg.max_rows is not None:
            data.interactions = data.interactions[: cfg.max_rows]
        return data
    common = {"scale": cfg.scale, "on_bad_row": cfg.on_bad_row, "max_rows": cfg.max_rows}
    if fmt == "movielens-100k":
        return readers.read_movielens_100k(cfg.path, **common)  # type: ignore[arg-type]
    if fmt in ("movielens-1m", "movielens-10m"):
        return readers.read_movielens_dat(cfg.path, ten_m=fmt == "movielens-10m", **common)  # type: ignore[arg-type]
    if fmt == "movielens-csv":
        return readers.read_movielens_csv(cfg.path, **common)  # type: ignore[arg-type]
    if fmt == "yelp":
        return readers.read_yelp(cfg.path, **common)  # type: ignore[arg-type]
    if fmt == "amazon-2018":
        return readers.read_amazon_2018(cfg.path, cfg.items_path, **common)  # type: ignore[arg-type]
    if fmt == "amazon-2023":
        return readers.read_amazon_2023(cfg.path, cfg.items_path, **common)  # type: ignore[arg-type]
    return readers.read_generic(
        cfg.path,  # type: ignore[arg-type]
        cfg.columns,
        items_path=cfg.items_path,
        item_columns=cfg.item_columns,
        kind=None if cfg.format == "auto" else fmt,
        timestamp_unit=cfg.timestamp_unit,
        **common,
    )


def apply_duplicate_rule(data: InteractionData, rule: str = "latest") -> InteractionData:
    """Resolve repeated (user, item) interactions by `rule` and count them in `data.duplicates`; in place.

    'latest' keeps the interaction with the largest (timestamp, position in the file), 'first' the
    smallest, 'keep' all; 'error' raises a `DataFormatError` at the first repeat in file order. Kept
    interactions stay in file order. `data.origin` (the line of each row) names lines in the error and
    is released afterwards. With `max_rows`, the rule sees only the rows read, so fewer may remain.
    """
    if rule not in DUPLICATE_RULES:
        raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_RULES)}, got {rule!r}")
    rows = data.interactions
    first_at: dict[tuple[str, str], int] = {}
    repeats: dict[int, list[int]] = {}  # index of a pair's first row -> indices of its later rows
    for j, row in enumerate(rows):
        i = first_at.setdefault((row.user, row.item), j)
        if i != j:
            if rule == "error":
                raise _repeat_error(data, i, j)
            repeats.setdefault(i, []).append(j)
    del first_at
    counts = DuplicateCounts(rule=rule, pairs=len(repeats))
    drop: set[int] = set()
    for i, later in repeats.items():
        group = [i, *later]
        counts.repeated += len(later)
        counts.exact += len(group) - len({(rows[k].rating, rows[k].timestamp) for k in group})
        if rule != "keep":
            pick = max if rule == "latest" else min
            kept = pick(group, key=lambda k: (rows[k].timestamp, k))
            drop.update(k for k in group if k != kept)
    if drop:
        data.interactions = [row for k, row in enumerate(rows) if k not in drop]
    counts.dropped = len(drop)
    data.duplicates, data.origin = counts, None
    if counts.pairs:
        log.log(
            logging.WARNING if rule == "keep" else logging.INFO,
            "%s: %d (user, item) pairs repeat (%d repeated interactions, %d exact copies); duplicates=%r %s",
            data.name,
            counts.pairs,
            counts.repeated,
            counts.exact,
            rule,
            "kept them all" if rule == "keep" else f"dropped {counts.dropped}",
        )
    return data


_ONE_PER_PAIR = (
    "one interaction per (user, item) (--data.source.duplicates=error; latest, first or keep resolve repeats)"
)


def _repeat_error(data: InteractionData, first: int, again: int) -> DataFormatError:
    row = data.interactions[again]
    pair = f"user {row.user!r} and item {row.item!r} again"
    if data.origin is None:  # generated data: positions stand in for lines
        return DataFormatError(
            data.name, None, None, _ONE_PER_PAIR, f"{pair}: interactions {first + 1} and {again + 1}"
        )
    line, earlier = data.origin.lines[again], data.origin.lines[first]
    return DataFormatError(data.origin.path, line, None, _ONE_PER_PAIR, f"{pair}, first on line {earlier}")
