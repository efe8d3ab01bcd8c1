"""Generic readers: a CSV (header row; comma, tab, ';' or '|') or JSONL file mapped by `columns`, plus items."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from reczero.data.readers.common import (
    UTF8,
    _check_policy,
    _data,
    _nonblank,
    _read_interactions,
    _read_items,
    _scale,
    _stem,
    existing_file,
)
from reczero.data.readers.fields import (
    TIMESTAMP_UNITS,
    _csv_split,
    _genres,
    _id,
    _jid,
    _jrating,
    _json_object,
    _jstrings,
    _jtext,
    _rating,
    _timestamp,
    _year,
)
from reczero.data.schema import DataFormatError, Interaction, InteractionData, Item, RatingScale

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
    on_bad_row: str = "error", max_rows: int | None = None, timestamp_unit: str = "s",
) -> InteractionData:  # fmt: skip
    """A CSV (header row; comma, tab, ';' or '|') or JSONL file, mapped by `columns`.

    `kind` is 'csv' or 'jsonl' (None: by the suffix, see `table_kind`); the items file's kind is
    always taken from its own suffix.

    `columns` maps our fields (user, item, rating; optional timestamp, review) to the file's names;
    without it the file's own `user`, `item`, `rating` (and `timestamp`, `review` when the header or
    the first object has them) are used. The timestamp's `timestamp_unit`: 's' unix seconds or an ISO
    date (the default), 'ms' unix milliseconds (floor-divided to seconds), 'iso' ISO-8601 dates and
    datetimes only ('2016-07-02', '2016-07-02T10:38:24', '2016-07-02 10:38:24', with 'Z' or an
    offset; UTC if no zone). With no timestamp column the line number stands in, so file order acts as time. Without a declared
    `scale` the smallest known scale holding every rating is detected. The optional items file maps
    item, title, genres ('|'-separated or a list), brand, price, description, year the same way.
    """
    _check_policy(on_bad_row, max_rows)
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp_unit must be one of {', '.join(TIMESTAMP_UNITS)}, got {timestamp_unit!r}")
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
            stamp = _timestamp(get("timestamp"), timestamp_unit, src, line, field("timestamp"))
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
    rows, skipped, origin = _read_interactions(src, UTF8, table.records, parse, on_bad_row, max_rows)
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
    return _data(f"{fmt}:{_stem(src)}", rows, items, sc, skipped, origin)


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
