"""Declared timestamp units in the generic csv / jsonl readers (`SourceConfig.timestamp_unit`).

's' (the default) reads unix seconds or an ISO date, 'ms' unix milliseconds (floor-divided to
seconds), 'iso' ISO-8601 dates and datetimes only. Files are written to tmp_path and read through
`load_source`; a value of the wrong kind must name the file, the line, the field and the expected form.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from reczero.data.readers import read_generic
from reczero.data.schema import DataFormatError
from reczero.data.sources import SourceConfig, load_source

COLUMNS = {"user": "who", "item": "what", "rating": "stars", "timestamp": "when"}


def utc(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=timezone.utc).timestamp())


def csv_file(tmp_path: Path, stamps: list[str]) -> Path:
    """One rating per stamp, user u<k> on item i<k>, under the header who,what,stars,when."""
    path = tmp_path / "ratings.csv"
    path.write_text("who,what,stars,when\n" + "".join(f"u{k},i{k},3,{s}\n" for k, s in enumerate(stamps)))
    return path


def jsonl_file(tmp_path: Path, stamps: list[object]) -> Path:
    path = tmp_path / "ratings.jsonl"
    path.write_text("".join(json.dumps({"who": f"u{k}", "what": f"i{k}", "stars": 3, "when": s}) + "\n" for k, s in enumerate(stamps)))  # fmt: skip
    return path


def times(path: Path, unit: str) -> list[int]:
    fmt = "jsonl" if path.suffix == ".jsonl" else "csv"
    data = load_source(SourceConfig(format=fmt, path=str(path), columns=COLUMNS, timestamp_unit=unit))
    return [r.timestamp for r in data.interactions]


def test_milliseconds_csv_and_jsonl(tmp_path) -> None:
    assert times(csv_file(tmp_path, ["1588687728923", "1588687728000", "1588687729999.0"]), "ms") == [
        1588687728,  # floor division: 923 ms are dropped
        1588687728,
        1588687729,
    ]
    assert times(jsonl_file(tmp_path, [1588687728923, "1467455904000", 1467455904999.5]), "ms") == [
        1588687728,
        1467455904,
        1467455904,
    ]


def test_iso_dates_and_datetimes_with_mixed_offsets(tmp_path) -> None:
    stamps = [
        "2016-07-02",  # a date: midnight UTC
        "2016-07-02T10:38:24",  # naive: UTC
        "2016-07-02 10:38:24",
        "2016-07-02T10:38:24Z",
        "2016-07-02T12:38:24+02:00",  # the same instant as 10:38:24Z
        "2016-07-02T05:38:24-05:00",  # again the same instant
        "2016-07-02T23:30:00-02:00",  # 2016-07-03 01:30 UTC: later than the next row, though its text sorts first
        "2016-07-03T00:30:00Z",
        "2016-07-02T10:38:24.750+00:00",  # fractions of a second are dropped
    ]
    expected = [utc(2016, 7, 2)] + [utc(2016, 7, 2, 10, 38, 24)] * 5
    expected += [utc(2016, 7, 3, 1, 30), utc(2016, 7, 3, 0, 30), utc(2016, 7, 2, 10, 38, 24)]
    assert times(csv_file(tmp_path, stamps), "iso") == expected
    assert times(jsonl_file(tmp_path, stamps), "iso") == expected


def test_the_default_unit_still_reads_seconds_and_iso(tmp_path) -> None:
    assert times(csv_file(tmp_path, ["1467455904", "2016-07-02T10:38:24Z"]), "s") == [1467455904, 1467455904]
    assert times(jsonl_file(tmp_path, [1467455904, "2016-07-02"]), "s") == [1467455904, utc(2016, 7, 2)]


def wrong(path: Path, unit: str) -> DataFormatError:
    with pytest.raises(DataFormatError) as err:
        times(path, unit)
    return err.value


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_milliseconds_under_the_default_unit_point_to_timestamp_unit_ms(tmp_path, kind: str) -> None:
    path = csv_file(tmp_path, ["1467455904", "1588687728923"]) if kind == "csv" else jsonl_file(tmp_path, [1467455904, 1588687728923])  # fmt: skip
    err = wrong(path, "s")
    assert (err.path, err.line, err.field) == (str(path), 3 if kind == "csv" else 2, "when")
    assert "looks like milliseconds" in str(err) and "--data.source.timestamp_unit=ms" in str(err)
    assert "1588687728923" in str(err)


@pytest.mark.parametrize(
    "unit, value, line, expected",
    [
        ("ms", "1467455904", 3, "unix milliseconds (this looks like seconds; declare --data.source.timestamp_unit=s)"),
        ("ms", "2016-07-02", 3, "unix milliseconds (a non-negative integer)"),
        ("ms", "-5", 3, "unix milliseconds (a non-negative integer)"),
        ("iso", "1467455904", 3, "an ISO-8601 date or datetime"),
        ("iso", "02/07/2016", 3, "an ISO-8601 date or datetime (2016-07-02, 2016-07-02T10:38:24"),
        ("iso", "", 3, "an ISO-8601 date or datetime"),
        ("s", "yesterday", 3, "unix seconds or an ISO-8601 date"),
    ],
)
def test_a_value_that_does_not_fit_the_unit_names_file_line_field_and_form(
    tmp_path, unit: str, value: str, line: int, expected: str
) -> None:
    path = csv_file(tmp_path, ["2016-07-02T10:38:24Z" if unit == "iso" else "1588687728923" if unit == "ms" else "1", value])  # fmt: skip
    err = wrong(path, unit)
    assert (err.path, err.line, err.field) == (str(path), line, "when")
    assert f"{path}, line {line}: field 'when': expected {expected}" in str(err)


def test_a_number_under_iso_says_which_unit_to_declare(tmp_path) -> None:
    err = wrong(jsonl_file(tmp_path, ["2016-07-02", 1467455904]), "iso")
    assert (
        err.line == 2
        and "or +02:00); for numbers declare --data.source.timestamp_unit=s or ms (got 1467455904)" in str(err)
    )
    err = wrong(jsonl_file(tmp_path, [True]), "ms")
    assert err.line == 1 and "unix milliseconds" in str(err)


def test_unit_is_checked_where_it_is_declared(tmp_path) -> None:
    with pytest.raises(ValueError, match="timestamp_unit must be one of s, ms, iso, got 'us'"):
        SourceConfig(format="csv", path="x.csv", timestamp_unit="us")
    with pytest.raises(ValueError, match="timestamp_unit applies to the csv and jsonl formats"):
        SourceConfig(format="movielens-100k", path="ml-100k", timestamp_unit="ms")
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "u.data").write_text("1\t2\t3\t881250949\n")
    (ml / "u.item").write_text("2|Film (1995)|01-Jan-1995||u|" + "|".join(["0"] * 19) + "\n")
    with pytest.raises(
        ValueError, match=r"timestamp_unit applies to the csv and jsonl formats; .* is 'movielens-100k'"
    ):
        load_source(SourceConfig(format="auto", path=str(ml), timestamp_unit="ms"))
    with pytest.raises(ValueError, match="timestamp_unit must be one of"):
        read_generic(csv_file(tmp_path, ["1"]), COLUMNS, timestamp_unit="seconds")
