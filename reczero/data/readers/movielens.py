"""MovieLens readers: 100K (`u.data`, `u.item`), 1M / 10M (`::`-separated `.dat`), latest / 25M / 32M (CSV)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from reczero.data.readers.common import (
    UTF8,
    UTF8_THEN_LATIN1,
    _check_policy,
    _data,
    _nonblank,
    _read,
    _read_interactions,
    _read_items,
    _require,
    _scale,
)
from reczero.data.readers.fields import _csv_split, _genres, _id, _rating, _seconds, _year
from reczero.data.schema import DataFormatError, Interaction, InteractionData, Item, RatingScale

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


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
    rows, skipped, origin = _read_interactions(data_path, UTF8_THEN_LATIN1, _nonblank, parse, on_bad_row, max_rows)
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
    return _data("movielens-100k", rows, items, sc, skipped + skipped_items, origin)


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
    rows, skipped, origin = _read_interactions(ratings_path, UTF8_THEN_LATIN1, _nonblank, parse, on_bad_row, max_rows)

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
    return _data(fmt, rows, items, sc, skipped + skipped_items, origin)


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

    rows, skipped, origin = _read_interactions(
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
    return _data("movielens-csv", rows, items, sc, skipped + skipped_items, origin)
