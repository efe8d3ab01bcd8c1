"""Field parsers: one raw cell (text) or JSON value in, one checked value out, or a `DataFormatError`.

Each names the file, the line and the field, so a reader's error says where to look. The `_j*`
functions read a key of a parsed JSON object; the others parse text cells.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reczero.data.schema import DataFormatError, RatingScale

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
_YEAR_AT_END = re.compile(r"(\d{4})\s*$")
_MAX_UNIX_SECONDS = 10**11  # year 5138: a larger value is almost surely milliseconds


class _Missing:
    def __repr__(self) -> str:
        return "nothing (the field is missing or empty)"


MISSING = _Missing()


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


def _unix(value: float, path: Path, line: int, field: str, raw: object, ms_hint: str = "") -> int:
    if not math.isfinite(value) or value < 0:
        raise DataFormatError(path, line, field, "unix seconds (a non-negative integer)", raw)
    if value >= _MAX_UNIX_SECONDS:
        raise DataFormatError(path, line, field, f"unix seconds (this looks like milliseconds{ms_hint})", raw)
    return int(value)


def _iso(text: str) -> float | None:
    """Unix seconds of an ISO-8601 date or datetime ('Z' or an offset; naive is UTC), None if it is not one."""
    try:  # Python 3.10's fromisoformat knows neither 'Z' nor a 'T'-less date with a zone: spell 'Z' out
        stamp = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


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
        seconds = _iso(text)
        if seconds is not None:
            return _unix(seconds, path, line, field, text)
    expected = "unix seconds or an ISO date" if iso else "unix seconds (an integer)"
    raise DataFormatError(path, line, field, expected, text or MISSING)


TIMESTAMP_UNITS = ("s", "ms", "iso")
_MIN_UNIX_MS = 10**11  # 1973-03-03 in milliseconds: a smaller value is almost surely seconds
_ISO_FORM = "an ISO-8601 date or datetime (2016-07-02, 2016-07-02T10:38:24, optionally with Z or +02:00)"
_UNIT_HINT = "; declare --data.source.timestamp_unit={}"


def _timestamp(value: object, unit: str, path: Path, line: int, field: str) -> int:
    """Unix seconds from a generic file's timestamp (a text cell or a JSON value) in the declared unit.

    's': unix seconds, or an ISO date (the generic readers' default); 'ms': unix milliseconds, floor-divided
    by 1000 (sub-second order is lost, like every second-resolution source); 'iso': ISO-8601 text only.
    A value of the wrong kind names the file, line and field and says which unit it looks like.
    """
    text = value.strip() if isinstance(value, str) else None
    number: float | None = None
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            number = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = _jnumber({field: value}, field, path, line)
    shown = MISSING if value is None or text == "" else value
    if unit == "iso":
        seconds = _iso(text) if text else None
        if seconds is None:
            hint = "; for numbers declare --data.source.timestamp_unit=s or ms" if number is not None else ""
            raise DataFormatError(path, line, field, _ISO_FORM + hint, shown)
        return _unix(seconds, path, line, field, value)
    if unit == "ms":
        if number is None:
            raise DataFormatError(path, line, field, "unix milliseconds (a non-negative integer)", shown)
        if math.isfinite(number) and 0 <= number < _MIN_UNIX_MS:
            raise DataFormatError(
                path, line, field, "unix milliseconds (this looks like seconds" + _UNIT_HINT.format("s") + ")", value
            )
        if not math.isfinite(number) or number < 0:
            raise DataFormatError(path, line, field, "unix milliseconds (a non-negative integer)", value)
        return _unix(number // 1000, path, line, field, value)
    if number is not None:
        return _unix(number, path, line, field, value, ms_hint=_UNIT_HINT.format("ms"))
    seconds = _iso(text) if text else None
    if seconds is None:
        raise DataFormatError(path, line, field, "unix seconds or " + _ISO_FORM, shown)
    return _unix(seconds, path, line, field, value)


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


def _year(title: str, fallback: str = "") -> int | None:
    found = _YEAR_IN_TITLE.search(title) or _YEAR_AT_END.search(fallback)
    return int(found.group(1)) if found else None


def _genres(text: str, sep: str = "|") -> tuple[str, ...]:
    if text.strip() == "(no genres listed)":
        return ()
    return tuple(sys.intern(g.strip()) for g in text.split(sep) if g.strip())


def _csv_split(text: str, path: Path, line: int, delimiter: str = ",") -> list[str]:
    if '"' not in text:
        return text.split(delimiter)
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as err:
        raise DataFormatError(path, line, None, "a well-formed CSV line", f"{err}: {text[:80]}") from None
