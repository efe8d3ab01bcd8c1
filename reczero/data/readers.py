"""Readers for public rating dumps: each turns one format into the common `InteractionData`.

One function per format: MovieLens 100K / 1M / 10M / latest (25M, 32M, small), Amazon Reviews 2018
and 2023, the Yelp Open Dataset, and generic CSV / JSONL with a column mapping. `sources.load_source`
picks one from a `SourceConfig`; the `*_files` functions say which files a format reads.

Every reader
- streams its files line by line (gzip when the name ends in `.gz`) and keeps only what goes into
  the common form: ids become interned `str`, and item metadata is kept only for rated items;
- is strict by default: a malformed row raises `DataFormatError` naming the file, the 1-based line,
  the field, what was expected and what was found. With `on_bad_row="skip"` bad rows are dropped,
  counted exactly in `InteractionData.skipped_rows`, and one `logging` warning per file says how many;
- checks every rating against the scale: the declared one, else the format's own (MovieLens 100K/1M,
  Amazon, Yelp 1-5; MovieLens 10M/latest 0.5-5); the generic readers detect it when none is declared;
- rejects an empty file, a file with no valid row, an undecodable file (naming the encodings tried)
  and a missing file (naming the expected paths and the format).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from reczero.data.schema import DataFormatError, Interaction, InteractionData, Item, RatingScale

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = TypeVar("Row")

ON_BAD_ROW = ("error", "skip")
UTF8 = ("utf-8",)
UTF8_THEN_LATIN1 = ("utf-8", "latin-1")  # per file: latin-1 only when the whole file is not utf-8
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
_YEAR_AT_END = re.compile(r"(\d{4})\s*$")
_MAX_UNIX_SECONDS = 10**11  # year 5138: a larger value is almost surely milliseconds


class _Missing:
    def __repr__(self) -> str:
        return "nothing (the field is missing or empty)"


MISSING = _Missing()


# ---------------------------------------------------------------- files, lines, strict/skip bookkeeping


class _Undecodable(Exception):
    def __init__(self, line: int, error: UnicodeDecodeError):
        super().__init__(line, error)
        self.line, self.error = line, error


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its newline) per line; gzip by the `.gz` suffix."""
    gz = path.name.endswith(".gz")
    lineno = 0
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        try:
            for raw in f:
                lineno += 1
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as err:
                    raise _Undecodable(lineno, err) from None
                if lineno == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield lineno, text.rstrip("\r\n")
        except (OSError, EOFError, zlib.error) as err:
            if not gz:
                raise
            raise DataFormatError(
                path, lineno + 1, None, "a complete gzip stream", f"{type(err).__name__}: {err}"
            ) from None


def _read(path: Path, encodings: tuple[str, ...], parse: Callable[[Iterator[tuple[int, str]]], T]) -> T:
    """Run `parse` over the file's lines in the first encoding that decodes the whole file."""
    for i, encoding in enumerate(encodings):
        try:
            return parse(_lines(path, encoding))
        except _Undecodable as err:
            if i + 1 < len(encodings):
                continue
            bad = err.error.object[err.error.start : err.error.start + 4]
            raise DataFormatError(
                path, err.line, None, f"text encoded as {' or '.join(encodings)}", f"undecodable bytes {bad!r}"
            ) from None
    raise AssertionError("unreachable")


class _Tally:
    """Strict-or-skip bookkeeping for one file: raises in strict mode, counts in skip mode."""

    def __init__(self, path: Path, on_bad_row: str):
        self.path, self.strict = path, on_bad_row == "error"
        self.kept = self.skipped = 0
        self.first: DataFormatError | None = None

    def bad(self, err: DataFormatError) -> None:
        if self.strict:
            raise err
        self.skipped += 1
        self.first = self.first or err

    def rows(self, records: Iterable[tuple[int, Any]], parse: Callable[[int, Any], Row]) -> Iterator[Row]:
        """Parse each (line, record); bad ones go through `bad`, good ones are counted and yielded."""
        for lineno, record in records:
            try:
                row = parse(lineno, record)
            except DataFormatError as err:
                self.bad(err)
                continue
            self.kept += 1
            yield row

    def finish(self) -> int:
        """Fail on a file with no valid row; warn once about skipped rows. Returns the skipped count."""
        if self.kept == 0:
            if self.skipped:
                raise DataFormatError(
                    self.path,
                    None,
                    None,
                    "at least one valid row",
                    f"{self.skipped} bad rows; the first: {self.first}",
                )
            raise DataFormatError(self.path, None, None, "at least one data row", "an empty file (or a header only)")
        if self.skipped:
            log.warning(
                "%s: skipped %d bad row(s), kept %d (on_bad_row='skip'); first: %s",
                self.path,
                self.skipped,
                self.kept,
                self.first,
            )
        return self.skipped


def _nonblank(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    return ((n, text) for n, text in lines if text.strip())


def _require(
    fmt: str, root: str | Path, names: list[str | tuple[str, ...]], optional: tuple[str, ...] = ()
) -> list[Path]:
    """The files of a directory format; each entry of `names` may list alternatives (first found wins)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{fmt}: expected a directory holding {_names(names)}, but {root} is not a directory")
    found, missing = [], []
    for entry in names:
        options = (entry,) if isinstance(entry, str) else entry
        hit = next((root / n for n in options if (root / n).is_file()), None)
        if hit is None:
            missing.append(" or ".join(str(root / n) for n in options))
        else:
            found.append(hit)
    if missing:
        raise FileNotFoundError(f"{fmt}: expected {_names(names)} in {root}; missing: {'; '.join(missing)}")
    return found + [root / n for n in optional if (root / n).is_file()]


def _names(names: list[str | tuple[str, ...]]) -> str:
    return ", ".join(n if isinstance(n, str) else f"{n[0]} (or {', '.join(n[1:])})" for n in names)


def existing_file(fmt: str, path: str | Path | None, what: str) -> Path:
    if path is None:
        raise FileNotFoundError(f"{fmt}: no {what} given")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{fmt}: expected the {what} at {p}, which is not a file")
    return p


def _scale(scale: str | RatingScale | None, default: str | None) -> RatingScale | None:
    if isinstance(scale, RatingScale):
        return scale
    text = scale if scale is not None else default
    return None if text is None else RatingScale.parse(text)


def _check_policy(on_bad_row: str, max_rows: int | None) -> None:
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")


# ---------------------------------------------------------------- field parsers (text cells and JSON values)


def _id(text: str, path: Path, line: int, field: str) -> str:
    text = text.strip()
    if not text:
        raise DataFormatError(path, line, field, "an id", MISSING)
    return sys.intern(text)


def _checked(value: float, path: Path, line: int, field: str, scale: RatingScale | None) -> float:
    if not math.isfinite(value):
        raise DataFormatError(path, line, field, "a finite number", value)
    if scale is not None and not scale.contains(value):
        raise DataFormatError(path, line, field, f"a rating on the {scale.name} scale", value)
    return value


def _rating(text: str, path: Path, line: int, field: str, scale: RatingScale | None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(path, line, field, "a number", text if text.strip() else MISSING) from None
    return _checked(value, path, line, field, scale)


def _unix(value: float, path: Path, line: int, field: str, raw: object) -> int:
    if not math.isfinite(value) or value < 0:
        raise DataFormatError(path, line, field, "unix seconds (a non-negative integer)", raw)
    if value >= _MAX_UNIX_SECONDS:
        raise DataFormatError(path, line, field, "unix seconds (this looks like milliseconds)", raw)
    return int(value)


def _seconds(text: str, path: Path, line: int, field: str, iso: bool = False) -> int:
    """Unix seconds from text; with `iso`, also an ISO date ('2019-03-01', '2019-03-01 12:00:00', ...), UTC if naive."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return _unix(number, path, line, field, text)
    if iso and text:
        try:
            stamp = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            pass
        else:
            stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
            return _unix(stamp.timestamp(), path, line, field, text)
    expected = "unix seconds or an ISO date" if iso else "unix seconds (an integer)"
    raise DataFormatError(path, line, field, expected, text or MISSING)


def _json_object(text: str, path: Path, line: int) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as err:
        hint = " (a Python dict literal? convert it to JSON)" if text.lstrip().startswith("{'") else ""
        why = f"{err.msg} (column {err.colno})" if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise DataFormatError(path, line, None, "a JSON object" + hint, f"invalid JSON: {why}") from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, line, None, "a JSON object per line", f"a JSON {_kind(obj)}: {text[:60]}")
    return obj


def _kind(value: object) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _jid(obj: dict, key: str, path: Path, line: int) -> str:
    value = obj.get(key)
    if isinstance(value, str) and value.strip():
        return sys.intern(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return sys.intern(str(value))
    raise DataFormatError(path, line, key, "an id (a string or an integer)", MISSING if value in (None, "") else value)


def _jnumber(obj: dict, key: str, path: Path, line: int, expected: str = "a number") -> float:
    value = obj.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range
            return math.inf
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            pass
    raise DataFormatError(path, line, key, expected, MISSING if value in (None, "") else value)


def _jrating(obj: dict, key: str, path: Path, line: int, scale: RatingScale | None) -> float:
    return _checked(_jnumber(obj, key, path, line), path, line, key, scale)


def _jseconds(obj: dict, key: str, path: Path, line: int, divisor: int = 1) -> int:
    what = "unix milliseconds (an integer)" if divisor > 1 else "unix seconds (an integer)"
    value = _jnumber(obj, key, path, line, what)
    if not math.isfinite(value) or value < 0:
        raise DataFormatError(path, line, key, what, obj.get(key))
    return _unix(value // divisor, path, line, key, obj.get(key))


def _jtext(obj: dict, key: str, path: Path, line: int) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return (value or "").strip() or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataFormatError(path, line, key, "a string", value)


def _jstrings(obj: dict, key: str, path: Path, line: int) -> tuple[str, ...]:
    """A list of strings (a lone string counts as a list of one); null or absent is empty."""
    value = obj.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(sys.intern(v.strip()) for v in value if v.strip())
    raise DataFormatError(path, line, key, "a list of strings", value)


def _join_review(headline: str | None, body: str | None) -> str | None:
    """'Great album. Loved every track' from a summary/title and a text; either may be missing."""
    if headline and body:
        return f"{headline} {body}" if headline[-1] in ".!?…" else f"{headline}. {body}"
    return headline or body


def _year(title: str, fallback: str = "") -> int | None:
    found = _YEAR_IN_TITLE.search(title) or _YEAR_AT_END.search(fallback)
    return int(found.group(1)) if found else None


def _genres(text: str, sep: str = "|") -> tuple[str, ...]:
    if text.strip() == "(no genres listed)":
        return ()
    return tuple(sys.intern(g.strip()) for g in text.split(sep) if g.strip())


# ---------------------------------------------------------------- shared drivers


def _read_interactions(
    path: Path, encodings: tuple[str, ...], records: Callable[[Iterator[tuple[int, str]]], Iterable[tuple[int, Any]]],
    parse: Callable[[int, Any], Interaction], on_bad_row: str, max_rows: int | None,
) -> tuple[list[Interaction], int]:  # fmt: skip
    def run(lines: Iterator[tuple[int, str]]) -> tuple[list[Interaction], int]:
        tally, rows = _Tally(path, on_bad_row), []
        for row in tally.rows(records(lines), parse):
            rows.append(row)
            if max_rows is not None and len(rows) >= max_rows:
                break
        return rows, tally.finish()

    return _read(path, encodings, run)


def _read_items(
    path: Path, encodings: tuple[str, ...], records: Callable[[Iterator[tuple[int, str]]], Iterable[tuple[int, Any]]],
    parse: Callable[[int, Any], Item], wanted: set[str], on_bad_row: str,
) -> tuple[dict[str, Item], int]:  # fmt: skip
    """Every row is checked; only rated items are kept (the first row wins for a repeated id)."""

    def run(lines: Iterator[tuple[int, str]]) -> tuple[dict[str, Item], int]:
        tally, items = _Tally(path, on_bad_row), {}
        for item in tally.rows(records(lines), parse):
            if item.item_id in wanted and item.item_id not in items:
                items[item.item_id] = item
        return items, tally.finish()

    return _read(path, encodings, run)


def _data(
    name: str, rows: list[Interaction], items: dict[str, Item], scale: RatingScale, skipped: int
) -> InteractionData:
    return InteractionData(name=name, interactions=rows, items=items, scale=scale, skipped_rows=skipped)


def _split_rows(path: Path, sep: str, columns: tuple[str, ...]) -> Callable[[int, str], list[str]]:
    """A line split on `sep` into exactly len(columns) fields, else a column-count error."""
    shown = "tab" if sep == "\t" else repr(sep)

    def split(line: int, text: str) -> list[str]:
        parts = text.split(sep)
        if len(parts) != len(columns):
            expected = f"{len(columns)} {shown}-separated columns ({', '.join(columns)})"
            raise DataFormatError(path, line, None, expected, f"{len(parts)} column(s): {text[:80]}")
        return parts

    return split


def _delimited_rating(path: Path, sep: str, columns: tuple[str, ...], scale: RatingScale | None) -> Callable:
    split = _split_rows(path, sep, columns)
    user_f, item_f, rating_f, time_f = columns

    def parse(line: int, text: str) -> Interaction:
        user, item, rating, stamp = split(line, text)
        return Interaction(
            user=_id(user, path, line, user_f),
            item=_id(item, path, line, item_f),
            rating=_rating(rating, path, line, rating_f, scale),
            timestamp=_seconds(stamp, path, line, time_f),
        )

    return parse


# ---------------------------------------------------------------- MovieLens


def movielens_100k_files(path: str | Path) -> list[Path]:
    return _require("movielens-100k", path, ["u.data", "u.item"], optional=("u.genre",))


def read_movielens_100k(
    path: str | Path, *, scale: str | RatingScale | None = None, on_bad_row: str = "error", max_rows: int | None = None
) -> InteractionData:
    """MovieLens-100K directory: `u.data` (tab: user, item, rating, unix time) and `u.item` (`|`, latin-1)."""
    _check_policy(on_bad_row, max_rows)
    files = movielens_100k_files(path)
    data_path, item_path = files[0], files[1]
    sc = _scale(scale, "1-5")
    parse = _delimited_rating(data_path, "\t", ("user", "item", "rating", "timestamp"), sc)
    rows, skipped = _read_interactions(data_path, UTF8_THEN_LATIN1, _nonblank, parse, on_bad_row, max_rows)
    genre_names = _ml100k_genres(files[2]) if len(files) > 2 else ML100K_GENRES
    columns = ("movie id", "title", "release date", "video release date", "IMDb URL", *genre_names)
    split = _split_rows(item_path, "|", columns)

    def parse_item(line: int, text: str) -> Item:
        parts = split(line, text)
        item_id = _id(parts[0], item_path, line, "movie id")
        genres = []
        for name, flag in zip(genre_names, parts[5:]):
            if flag.strip() not in ("0", "1"):
                raise DataFormatError(item_path, line, f"genre flag {name}", "0 or 1", flag)
            if flag.strip() == "1":
                genres.append(name)
        title = parts[1].strip() or f"item {item_id}"
        return Item(item_id=item_id, title=title, genres=tuple(genres), year=_year(title, parts[2]))

    wanted = {r.item for r in rows}
    items, skipped_items = _read_items(item_path, UTF8_THEN_LATIN1, _nonblank, parse_item, wanted, on_bad_row)
    return _data("movielens-100k", rows, items, sc, skipped + skipped_items)


def _ml100k_genres(path: Path) -> tuple[str, ...]:
    """`u.genre` lines 'name|index'; always strict (it defines the columns of u.item)."""

    def run(lines: Iterator[tuple[int, str]]) -> tuple[str, ...]:
        named: dict[int, str] = {}
        for line, text in _nonblank(lines):
            name, _, index = text.rpartition("|")
            if not name or not index.strip().isdecimal():
                raise DataFormatError(path, line, None, "'name|index' (e.g. 'Action|1')", text)
            named[int(index)] = sys.intern(name.strip())
        if sorted(named) != list(range(len(named))) or not named:
            raise DataFormatError(path, None, "index", "genre indices 0, 1, 2, ... without gaps", sorted(named))
        return tuple(named[i] for i in range(len(named)))

    return _read(path, UTF8_THEN_LATIN1, run)


def movielens_dat_files(path: str | Path, fmt: str = "movielens-1m") -> list[Path]:
    return _require(fmt, path, ["ratings.dat", "movies.dat"])


def read_movielens_dat(
    path: str | Path, *, scale: str | RatingScale | None = None, on_bad_row: str = "error",
    max_rows: int | None = None, ten_m: bool = False,
) -> InteractionData:  # fmt: skip
    """MovieLens-1M / 10M directory: `ratings.dat` and `movies.dat`, `::`-separated.

    1M is latin-1 on the 1-5 scale; 10M (`ten_m=True`) is utf-8 in practice with half stars (0.5-5).
    Each file is read as utf-8 when all of it decodes, else as latin-1.
    """
    _check_policy(on_bad_row, max_rows)
    fmt = "movielens-10m" if ten_m else "movielens-1m"
    ratings_path, movies_path = movielens_dat_files(path, fmt)
    sc = _scale(scale, "0.5-5" if ten_m else "1-5")
    parse = _delimited_rating(ratings_path, "::", ("UserID", "MovieID", "Rating", "Timestamp"), sc)
    rows, skipped = _read_interactions(ratings_path, UTF8_THEN_LATIN1, _nonblank, parse, on_bad_row, max_rows)

    def parse_movie(line: int, text: str) -> Item:
        item_id, _, rest = text.partition("::")
        title, sep, genres = rest.rpartition("::")
        if not sep:
            expected = "3 '::'-separated columns (MovieID, Title, Genres)"
            raise DataFormatError(movies_path, line, None, expected, f"{text.count('::') + 1} column(s): {text[:80]}")
        item_id = _id(item_id, movies_path, line, "MovieID")
        title = title.strip() or f"item {item_id}"
        return Item(item_id=item_id, title=title, genres=_genres(genres), year=_year(title))

    wanted = {r.item for r in rows}
    items, skipped_items = _read_items(movies_path, UTF8_THEN_LATIN1, _nonblank, parse_movie, wanted, on_bad_row)
    return _data(fmt, rows, items, sc, skipped + skipped_items)


def movielens_csv_files(path: str | Path) -> list[Path]:
    return _require("movielens-csv", path, ["ratings.csv", "movies.csv"])


def _csv_lines(
    path: Path, header: tuple[str, ...]
) -> Callable[[Iterator[tuple[int, str]]], Iterator[tuple[int, str]]]:
    """One CSV record per line (MovieLens never breaks a field across lines), after a checked header."""

    def records(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
        first = next(_nonblank(lines), None)
        if first is None:
            return
        line, text = first
        try:
            got = [c.strip() for c in _csv_split(text, path, line)]
        except DataFormatError:
            got = None  # a broken header line is reported as the header it should have been
        if got != list(header):
            raise DataFormatError(path, line, "header", f"the comma-separated header {','.join(header)}", text[:120])
        yield from _nonblank(lines)

    return records


def _csv_split(text: str, path: Path, line: int, delimiter: str = ",") -> list[str]:
    if '"' not in text:
        return text.split(delimiter)
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as err:
        raise DataFormatError(path, line, None, "a well-formed CSV line", f"{err}: {text[:80]}") from None


def _csv_fields(path: Path, columns: tuple[str, ...]) -> Callable[[int, str], list[str]]:
    def fields(line: int, text: str) -> list[str]:
        parts = _csv_split(text, path, line)
        if len(parts) != len(columns):
            expected = f"{len(columns)} comma-separated columns ({', '.join(columns)})"
            raise DataFormatError(path, line, None, expected, f"{len(parts)} column(s): {text[:80]}")
        return parts

    return fields


def read_movielens_csv(
    path: str | Path, *, scale: str | RatingScale | None = None, on_bad_row: str = "error", max_rows: int | None = None
) -> InteractionData:
    """MovieLens latest / 25M / 32M directory: `ratings.csv` (half stars, 0.5-5) and `movies.csv` (utf-8)."""
    _check_policy(on_bad_row, max_rows)
    ratings_path, movies_path = movielens_csv_files(path)
    sc = _scale(scale, "0.5-5")
    r_cols = ("userId", "movieId", "rating", "timestamp")
    r_fields = _csv_fields(ratings_path, r_cols)

    def parse(line: int, text: str) -> Interaction:
        user, item, rating, stamp = r_fields(line, text)
        return Interaction(
            user=_id(user, ratings_path, line, "userId"),
            item=_id(item, ratings_path, line, "movieId"),
            rating=_rating(rating, ratings_path, line, "rating", sc),
            timestamp=_seconds(stamp, ratings_path, line, "timestamp"),
        )

    rows, skipped = _read_interactions(
        ratings_path, UTF8, _csv_lines(ratings_path, r_cols), parse, on_bad_row, max_rows
    )
    m_cols = ("movieId", "title", "genres")
    m_fields = _csv_fields(movies_path, m_cols)

    def parse_movie(line: int, text: str) -> Item:
        item_id, title, genres = m_fields(line, text)
        item_id = _id(item_id, movies_path, line, "movieId")
        title = title.strip() or f"item {item_id}"
        return Item(item_id=item_id, title=title, genres=_genres(genres), year=_year(title))

    wanted = {r.item for r in rows}
    records = _csv_lines(movies_path, m_cols)
    items, skipped_items = _read_items(movies_path, UTF8, records, parse_movie, wanted, on_bad_row)
    return _data("movielens-csv", rows, items, sc, skipped + skipped_items)


# ---------------------------------------------------------------- Amazon Reviews 2018 / 2023, Yelp


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
        name = name.removesuffix(suffix)
    return name


def _price(value: str | None) -> str | None:
    """Amazon 2018 `price` holds page junk (CSS) for some items; a real price is short."""
    return value if value and len(value) <= 40 else None


def read_amazon_2018(
    path: str | Path, items_path: str | Path | None = None, *, scale: str | RatingScale | None = None,
    on_bad_row: str = "error", max_rows: int | None = None,
) -> InteractionData:  # fmt: skip
    """Amazon Reviews 2018: reviews JSONL(.gz) and, optionally, the category's metadata JSONL(.gz).

    The review text is 'summary. reviewText'. `unixReviewTime` is the time; when it is absent the
    older `reviewTime` ('09 13, 2009') is used.
    """
    _check_policy(on_bad_row, max_rows)
    reviews = existing_file("amazon-2018", path, "reviews JSONL file")
    sc = _scale(scale, "1-5")

    def parse(line: int, text: str) -> Interaction:
        obj = _json_object(text, reviews, line)
        if "unixReviewTime" not in obj and isinstance(obj.get("reviewTime"), str):
            stamp = _review_time(obj["reviewTime"], reviews, line)
        else:
            stamp = _jseconds(obj, "unixReviewTime", reviews, line)
        return Interaction(
            user=_jid(obj, "reviewerID", reviews, line),
            item=_jid(obj, "asin", reviews, line),
            rating=_jrating(obj, "overall", reviews, line, sc),
            timestamp=stamp,
            review=_join_review(_jtext(obj, "summary", reviews, line), _jtext(obj, "reviewText", reviews, line)),
        )

    rows, skipped = _read_interactions(reviews, UTF8, _nonblank, parse, on_bad_row, max_rows)
    items: dict[str, Item] = {}
    if items_path is not None:
        meta = existing_file("amazon-2018", items_path, "metadata JSONL file")

        def parse_item(line: int, text: str) -> Item:
            obj = _json_object(text, meta, line)
            asin = _jid(obj, "asin", meta, line)
            title = _jtext(obj, "title", meta, line) or f"item {asin}"
            description = " ".join(_jstrings(obj, "description", meta, line)) or None
            return Item(
                item_id=asin,
                title=title,
                genres=_jstrings(obj, "category", meta, line),
                brand=_jtext(obj, "brand", meta, line),
                price=_price(_jtext(obj, "price", meta, line)),
                description=description,
                year=_year(title),
            )

        wanted = {r.item for r in rows}
        items, skipped_items = _read_items(meta, UTF8, _nonblank, parse_item, wanted, on_bad_row)
        skipped += skipped_items
    return _data(f"amazon-2018:{_stem(reviews)}", rows, items, sc, skipped)


def _review_time(text: str, path: Path, line: int) -> int:
    try:
        stamp = datetime.strptime(text.strip(), "%m %d, %Y").replace(tzinfo=timezone.utc)
    except ValueError:
        raise DataFormatError(path, line, "reviewTime", "a date like '09 13, 2009'", text) from None
    return int(stamp.timestamp())


def read_amazon_2023(
    path: str | Path, items_path: str | Path | None = None, *, scale: str | RatingScale | None = None,
    on_bad_row: str = "error", max_rows: int | None = None,
) -> InteractionData:  # fmt: skip
    """Amazon Reviews 2023: reviews JSONL(.gz) keyed by `parent_asin`, times in milliseconds; optional metadata."""
    _check_policy(on_bad_row, max_rows)
    reviews = existing_file("amazon-2023", path, "reviews JSONL file")
    sc = _scale(scale, "1-5")

    def parse(line: int, text: str) -> Interaction:
        obj = _json_object(text, reviews, line)
        item_key = "parent_asin" if "parent_asin" in obj or "asin" not in obj else "asin"
        return Interaction(
            user=_jid(obj, "user_id", reviews, line),
            item=_jid(obj, item_key, reviews, line),
            rating=_jrating(obj, "rating", reviews, line, sc),
            timestamp=_jseconds(obj, "timestamp", reviews, line, divisor=1000),
            review=_join_review(_jtext(obj, "title", reviews, line), _jtext(obj, "text", reviews, line)),
        )

    rows, skipped = _read_interactions(reviews, UTF8, _nonblank, parse, on_bad_row, max_rows)
    items: dict[str, Item] = {}
    if items_path is not None:
        meta = existing_file("amazon-2023", items_path, "metadata JSONL file")

        def parse_item(line: int, text: str) -> Item:
            obj = _json_object(text, meta, line)
            asin = _jid(obj, "parent_asin", meta, line)
            title = _jtext(obj, "title", meta, line) or f"item {asin}"
            description = " ".join(_jstrings(obj, "description", meta, line))
            features = "; ".join(_jstrings(obj, "features", meta, line))
            if features:
                description = f"{description} Features: {features}".strip()
            genres = _jstrings(obj, "categories", meta, line) or _jstrings(obj, "main_category", meta, line)
            price = _jtext(obj, "price", meta, line)
            return Item(
                item_id=asin,
                title=title,
                genres=genres,
                brand=_jtext(obj, "store", meta, line),
                price=None if price in (None, "None") else price,
                description=description or None,
                year=_year(title),
            )

        wanted = {r.item for r in rows}
        items, skipped_items = _read_items(meta, UTF8, _nonblank, parse_item, wanted, on_bad_row)
        skipped += skipped_items
    return _data(f"amazon-2023:{_stem(reviews)}", rows, items, sc, skipped)


def yelp_files(path: str | Path) -> list[Path]:
    names = [
        ("review.json", "yelp_academic_dataset_review.json", "review.json.gz"),
        ("business.json", "yelp_academic_dataset_business.json", "business.json.gz"),
    ]
    return _require("yelp", path, names)  # type: ignore[arg-type]


def read_yelp(
    path: str | Path, *, scale: str | RatingScale | None = None, on_bad_row: str = "error", max_rows: int | None = None
) -> InteractionData:
    """Yelp Open Dataset directory: `review.json` and `business.json` (the `yelp_academic_dataset_*` names too).

    A business becomes an item: its name is the title, its categories the genres, its city the
    description and its price range ('$$') the price. The business's own star average is left out:
    it includes later ratings, which would leak the future into a prompt.
    """
    _check_policy(on_bad_row, max_rows)
    reviews, business = yelp_files(path)
    sc = _scale(scale, "1-5")

    def parse(line: int, text: str) -> Interaction:
        obj = _json_object(text, reviews, line)
        date = obj.get("date")
        if not isinstance(date, str):
            raise DataFormatError(
                reviews, line, "date", "a date 'YYYY-MM-DD HH:MM:SS'", MISSING if date is None else date
            )
        return Interaction(
            user=_jid(obj, "user_id", reviews, line),
            item=_jid(obj, "business_id", reviews, line),
            rating=_jrating(obj, "stars", reviews, line, sc),
            timestamp=_seconds(date, reviews, line, "date", iso=True),
            review=_jtext(obj, "text", reviews, line),
        )

    rows, skipped = _read_interactions(reviews, UTF8, _nonblank, parse, on_bad_row, max_rows)

    def parse_business(line: int, text: str) -> Item:
        obj = _json_object(text, business, line)
        item_id = _jid(obj, "business_id", business, line)
        categories = obj.get("categories")
        if isinstance(categories, str):
            genres = _genres(categories, ",")
        else:
            genres = _jstrings(obj, "categories", business, line)
        place = ", ".join(p for p in (_jtext(obj, "city", business, line), _jtext(obj, "state", business, line)) if p)
        attributes = obj.get("attributes")
        level = attributes.get("RestaurantsPriceRange2") if isinstance(attributes, dict) else None
        price = "$" * int(level) if isinstance(level, str) and level.strip() in ("1", "2", "3", "4") else None
        return Item(
            item_id=item_id,
            title=_jtext(obj, "name", business, line) or f"business {item_id}",
            genres=genres,
            price=price,
            description=f"Located in {place}." if place else None,
        )

    wanted = {r.item for r in rows}
    items, skipped_items = _read_items(business, UTF8, _nonblank, parse_business, wanted, on_bad_row)
    return _data("yelp", rows, items, sc, skipped + skipped_items)


# ---------------------------------------------------------------- generic CSV / JSONL with a column mapping

FIELDS = ("user", "item", "rating", "timestamp", "review")
ITEM_FIELDS = ("item", "title", "genres", "brand", "price", "description", "year")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def table_kind(path: str | Path) -> str:
    """'jsonl' for .jsonl/.json/.ndjson (optionally .gz), else 'csv'."""
    name = Path(path).name.removesuffix(".gz")
    return "jsonl" if name.endswith(_JSONL_SUFFIXES) else "csv"


def _mapping(given: dict[str, str] | None, allowed: tuple[str, ...], required: tuple[str, ...], what: str) -> dict:
    if given is None:
        return {}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; known: {', '.join(allowed)}")
    lacking = [f for f in required if f not in given]
    if lacking:
        raise ValueError(
            f"{what}: required field(s) {lacking} have no column; give e.g. {{'{lacking[0]}': 'their_name'}}"
        )
    return dict(given)


class _Table:
    """Records of a generic CSV (header, sniffed delimiter, quoted fields may span lines) or JSONL file.

    `records(lines)` yields (start line, {our field: raw value}); `mapping` is fixed once the
    header (CSV) or the first object (JSONL) is seen, from the declared mapping or the file's own names.
    """

    def __init__(
        self, path: Path, declared: dict[str, str], allowed: tuple[str, ...], required: tuple[str, ...], kind: str
    ):
        self.path, self.declared, self.allowed, self.required, self.kind = path, declared, allowed, required, kind
        self.mapping: dict[str, str] = {}

    def _default(self, present: Iterable[str]) -> dict[str, str]:
        if self.declared:
            return self.declared
        names = set(present)
        return {f: f for f in self.allowed if f in self.required or f in names}

    def records(self, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
        return self._jsonl(lines) if self.kind == "jsonl" else self._csv(lines)

    def _jsonl(self, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
        for line, text in _nonblank(lines):
            if not self.mapping:
                try:
                    first = json.loads(text)
                except (ValueError, RecursionError):
                    first = {}
                self.mapping = self._default(first if isinstance(first, dict) else {})
            yield line, text

    def _csv(self, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
        head = next(_nonblank(lines), None)
        if head is None:
            return
        line, text = head
        delimiter, header = self._header(line, text)
        self.mapping = self._default(header)
        at = {ours: header.index(theirs) for ours, theirs in self.mapping.items()}
        current = [line]

        def source() -> Iterator[str]:  # blank lines pass through: they may sit inside a quoted field
            for n, t in lines:
                current[0] = n
                yield t + "\n"

        reader = csv.reader(source(), delimiter=delimiter, strict=True)
        while True:
            start = current[0] + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                if "unexpected end of data" in str(err):  # a quote never closed: no safe place to resume
                    raise DataFormatError(self.path, start, None, "a closing quote", str(err)) from None
                yield start, DataFormatError(self.path, start, None, "a well-formed CSV record", str(err))
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip()):  # a blank line
                continue
            if len(fields) != len(header):
                shown = "tab" if delimiter == "\t" else repr(delimiter)
                expected = f"{len(header)} {shown}-separated columns, as in the header"
                got = f"{len(fields)} column(s): {delimiter.join(fields)[:80]}"
                yield start, DataFormatError(self.path, start, None, expected, got)
                continue
            yield start, {ours: fields[i] for ours, i in at.items()}

    def _header(self, line: int, text: str) -> tuple[str, list[str]]:
        wanted = set(self.declared.values()) or set(self.required)
        for delimiter in (",", "\t", ";", "|"):
            header = [c.strip() for c in _csv_split(text, self.path, line, delimiter)]
            if wanted <= set(header):
                return delimiter, header
        names = ", ".join(sorted(wanted))
        raise DataFormatError(
            self.path, line, "header", f"a header naming {names} (comma, tab, ';' or '|')", text[:120]
        )


def _getter(table: _Table, line: int, record: Any) -> Callable[[str], Any]:
    """get(our field) -> the raw value or None; JSONL text is parsed here, a CSV record error is raised."""
    if isinstance(record, DataFormatError):
        raise record
    if table.kind == "jsonl":
        obj = _json_object(record, table.path, line)
        return lambda f: obj.get(table.mapping[f]) if f in table.mapping else None
    return record.get


def _gid(table: _Table, value: Any, line: int, ours: str) -> str:
    field = table.mapping.get(ours, ours)
    if isinstance(value, str):
        return _id(value, table.path, line, field)
    return _jid({field: value}, field, table.path, line)


def read_generic(
    path: str | Path, columns: dict[str, str] | None = None, *, items_path: str | Path | None = None,
    item_columns: dict[str, str] | None = None, kind: str | None = None, scale: str | RatingScale | None = None,
    on_bad_row: str = "error", max_rows: int | None = None,
) -> InteractionData:  # fmt: skip
    """A CSV (header row; comma, tab, ';' or '|') or JSONL file, mapped by `columns`.

    `kind` is 'csv' or 'jsonl' (None: by the suffix, see `table_kind`); the items file's kind is
    always taken from its own suffix.

    `columns` maps our fields (user, item, rating; optional timestamp, review) to the file's names;
    without it the file's own `user`, `item`, `rating` (and `timestamp`, `review` when the header or
    the first object has them) are used. A timestamp is unix seconds or an ISO date (UTC if no zone);
    with no timestamp column the line number stands in, so file order acts as time. Without a declared
    `scale` the smallest known scale holding every rating is detected. The optional items file maps
    item, title, genres ('|'-separated or a list), brand, price, description, year the same way.
    """
    _check_policy(on_bad_row, max_rows)
    if kind not in (None, "csv", "jsonl"):
        raise ValueError(f"kind must be 'csv', 'jsonl' or None, got {kind!r}")
    fmt = kind or (table_kind(path) if path is not None else "csv")
    src = existing_file(fmt, path, "interactions file")
    table = _Table(src, _mapping(columns, FIELDS, FIELDS[:3], "columns"), FIELDS, FIELDS[:3], fmt)
    sc = _scale(scale, None)

    def parse(line: int, record: Any) -> Interaction:
        get = _getter(table, line, record)
        field = table.mapping.get
        rating = get("rating")
        if isinstance(rating, str):
            value = _rating(rating, src, line, field("rating"), sc)
        else:
            value = _jrating({field("rating"): rating}, field("rating"), src, line, sc)
        stamp = line
        if "timestamp" in table.mapping:
            raw = get("timestamp")
            if isinstance(raw, str) or raw is None:
                stamp = _seconds(raw or "", src, line, field("timestamp"), iso=True)
            else:
                stamp = _jseconds({field("timestamp"): raw}, field("timestamp"), src, line)
        review = get("review")
        if review is not None and not isinstance(review, str):
            review = _jtext({field("review"): review}, field("review"), src, line)
        return Interaction(
            user=_gid(table, get("user"), line, "user"),
            item=_gid(table, get("item"), line, "item"),
            rating=value,
            timestamp=stamp,
            review=(review or "").strip() or None,
        )

    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))  # long reviews in one cell
    rows, skipped = _read_interactions(src, UTF8, table.records, parse, on_bad_row, max_rows)
    if sc is None:
        try:
            sc = RatingScale.detect(r.rating for r in rows)
        except ValueError as err:
            raise DataFormatError(
                src, None, table.mapping.get("rating"), "ratings on a known scale", str(err)
            ) from None
    items: dict[str, Item] = {}
    if items_path is not None:
        items, skipped_items = _read_generic_items(
            existing_file(fmt, items_path, "items file"), item_columns, {r.item for r in rows}, on_bad_row
        )
        skipped += skipped_items
    return _data(f"{fmt}:{_stem(src)}", rows, items, sc, skipped)


def _read_generic_items(
    path: Path, item_columns: dict[str, str] | None, wanted: set[str], on_bad_row: str
) -> tuple[dict[str, Item], int]:
    declared = _mapping(item_columns, ITEM_FIELDS, ("item",), "item_columns")
    table = _Table(path, declared, ITEM_FIELDS, ("item",), table_kind(path))

    def text(get: Callable[[str], Any], line: int, ours: str) -> str | None:
        value = get(ours)
        if isinstance(value, str):
            return value.strip() or None
        return _jtext({table.mapping.get(ours, ours): value}, table.mapping.get(ours, ours), path, line)

    def parse(line: int, record: Any) -> Item:
        get = _getter(table, line, record)
        item_id = _gid(table, get("item"), line, "item")
        title = text(get, line, "title") or f"item {item_id}"
        genres = get("genres")
        if isinstance(genres, str):
            genre_tuple = _genres(genres)
        else:
            name = table.mapping.get("genres", "genres")
            genre_tuple = _jstrings({name: genres}, name, path, line)
        year_text = text(get, line, "year")
        year = _year(title)
        if year_text is not None:
            try:
                year = int(float(year_text))
            except (ValueError, OverflowError):
                raise DataFormatError(
                    path, line, table.mapping.get("year"), "a year (an integer)", year_text
                ) from None
        return Item(
            item_id=item_id,
            title=title,
            genres=genre_tuple,
            brand=text(get, line, "brand"),
            price=text(get, line, "price"),
            description=text(get, line, "description"),
            year=year,
        )

    return _read_items(path, UTF8, table.records, parse, wanted, on_bad_row)
