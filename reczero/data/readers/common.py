"""What every reader shares: reading a file's lines, strict-or-skip bookkeeping, required files, the scale.

`_read` runs a parser over a file's lines in the first encoding that decodes it whole (gzip by the
`.gz` suffix); `_Tally` raises on a bad row in strict mode and counts it in skip mode; `_require` and
`existing_file` find a format's files or say which are missing; `_read_interactions` / `_read_items`
drive a per-row parser (`fields`) over a file and return the rows with the skipped count (and,
for interactions, the line each row came from).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from reczero.data.schema import DataFormatError, Interaction, InteractionData, Item, RatingScale, RowOrigin

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = TypeVar("Row")

ON_BAD_ROW = ("error", "skip")
UTF8 = ("utf-8",)
UTF8_THEN_LATIN1 = ("utf-8", "latin-1")  # per file: latin-1 only when the whole file is not utf-8


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


# ---------------------------------------------------------------- shared drivers


def _read_interactions(
    path: Path, encodings: tuple[str, ...], records: Callable[[Iterator[tuple[int, str]]], Iterable[tuple[int, Any]]],
    parse: Callable[[int, Any], Interaction], on_bad_row: str, max_rows: int | None,
) -> tuple[list[Interaction], int, RowOrigin]:  # fmt: skip
    """(rows, skipped count, the line each row came from)."""

    def run(lines: Iterator[tuple[int, str]]) -> tuple[list[Interaction], int, RowOrigin]:
        tally, rows, origin = _Tally(path, on_bad_row), [], RowOrigin(str(path))
        keep_line = origin.lines.append
        for line, row in tally.rows(records(lines), lambda n, record: (n, parse(n, record))):
            rows.append(row)
            keep_line(line)
            if max_rows is not None and len(rows) >= max_rows:
                break
        return rows, tally.finish(), origin

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
    name: str, rows: list[Interaction], items: dict[str, Item], scale: RatingScale, skipped: int, origin: RowOrigin
) -> InteractionData:
    return InteractionData(name=name, interactions=rows, items=items, scale=scale, skipped_rows=skipped, origin=origin)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
        name = name.removesuffix(suffix)
    return name
