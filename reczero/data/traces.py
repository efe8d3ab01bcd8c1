"""The reasoning-trace file format: RecOne's SFT targets as JSONL, its validation, and matching to samples.

A trace file holds one JSON object per line (blank lines are ignored):

    {"key": "u12|i7|881250949", "completion": "<analyze user>...</analyze user>...<rate>4</rate>", "rating": 4}
    {"user": "u12", "item": "i7", "timestamp": 881250949, "completion": "...", "rating": 4}

- the sample is named either by `key`, the DataModule's sample key "user|item|timestamp", or by
  `user` + `item` (+ optional `timestamp`; without it the user must have rated the item once in the
  train split);
- `completion` is the full four-tag answer (a `data.prompt.response_prefix` such as "<analyze user>" included);
- `rating` is the number written in its `<rate>` block: it must equal `parse_rating(completion)`, so a
  file edited by hand cannot teach one rating in the text and claim another;
- other fields (`target`, `source`, ...) are kept in `Trace.extra` and otherwise ignored.

`load_traces` validates every line (JSON, fields, `rewards.check_format`, the rating) and either raises
on the first bad line, naming the file, the line and the reason, or skips and counts bad lines.
`match_traces` resolves traces to train-split sample positions of a `RatingDataModule`.
`reczero coldstart` (`recone.coldstart`) writes such files; the DataModule reads them (`data.traces`).

Pure: standard library plus `reczero.rewards` (the DataModule is duck-typed: `positions`, `sample_key`,
`data`, `table`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from reczero import rewards
from reczero.scale import EXACT_TOLERANCE, RatingScale

ON_BAD = ("error", "skip")


class TraceError(ValueError):
    """A trace file line (or a trace) that cannot be used; the message names where and why."""


@dataclass(frozen=True)
class Trace:
    """One validated trace. `key` is set when the line gave it; else `user`/`item` (and maybe `timestamp`)."""

    completion: str
    rating: float
    key: str | None = None
    user: str | None = None
    item: str | None = None
    timestamp: str | None = None
    line: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """The key, or "user|item|?" when the line gave no timestamp (for messages)."""
        return self.key or f"{self.user}|{self.item}|{self.timestamp if self.timestamp is not None else '?'}"


def _text_id(value, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise TraceError(f"`{name}` must be a non-empty string or integer, got {value!r}")
    return str(value)


def parse_trace(obj, scale: RatingScale, template: str = "four_step", line: int = 0) -> Trace:
    """One decoded JSON line -> a `Trace`; raises `TraceError(reason)` when it is unusable."""
    if not isinstance(obj, dict):
        raise TraceError(f"expected a JSON object, got {type(obj).__name__}")
    extra = {k: v for k, v in obj.items() if k not in ("key", "user", "item", "timestamp", "completion", "rating")}
    key = user = item = timestamp = None
    if "key" in obj:
        key = _text_id(obj["key"], "key")
        if key.count("|") < 2:
            raise TraceError(f"`key` must be 'user|item|timestamp', got {key!r}")
    elif "user" in obj and "item" in obj:
        user, item = _text_id(obj["user"], "user"), _text_id(obj["item"], "item")
        if obj.get("timestamp") is not None:
            timestamp = _text_id(obj["timestamp"], "timestamp")
    else:
        raise TraceError("no sample: give `key` ('user|item|timestamp') or `user` and `item`")
    completion = obj.get("completion")
    if not isinstance(completion, str) or not completion.strip():
        raise TraceError("`completion` must be a non-empty string")
    rating = obj.get("rating")
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating):
        raise TraceError(f"`rating` must be a finite number, got {rating!r}")
    check = rewards.check_format(completion, scale, template)
    if not check.ok:
        raise TraceError(f"completion fails the format check ({check.reason})")
    if abs(check.rating - float(rating)) > EXACT_TOLERANCE:
        raise TraceError(f"`rating` {rating!r} differs from the completion's rating block ({check.rating:g})")
    return Trace(completion, float(rating), key, user, item, timestamp, line, extra)


def load_traces(
    path: str | Path, scale: RatingScale, on_bad_row: str = "error", template: str = "four_step"
) -> tuple[list[Trace], int]:
    """Read and validate a trace JSONL file: (traces in file order, number of bad lines skipped).

    `on_bad_row="error"` raises `TraceError("<path>:<line>: <reason>")` at the first bad line;
    `"skip"` drops bad lines (logged by the caller through the count). A sample named twice is bad
    on its second line (it would count double in the loss).
    """
    if on_bad_row not in ON_BAD:
        raise ValueError(f"on_bad_row must be one of {ON_BAD}, got {on_bad_row!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}: build one with `reczero coldstart` (make coldstart)")
    traces: list[Trace] = []
    seen: dict[str, int] = {}
    skipped = 0
    with path.open(encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise TraceError(f"invalid JSON ({err.msg} at column {err.colno})") from None
                trace = parse_trace(obj, scale, template, number)
                if trace.name in seen:
                    raise TraceError(f"sample {trace.name!r} already has a trace (line {seen[trace.name]})")
                seen[trace.name] = number
                traces.append(trace)
            except TraceError as err:
                if on_bad_row == "error":
                    raise TraceError(f"{path}:{number}: {err}") from None
                skipped += 1
    return traces, skipped


def match_traces(traces: list[Trace], datamodule, on_missing: str = "error") -> tuple[dict[int, str], int]:
    """Resolve traces to TRAIN-split sample positions: ({position: completion}, number not matched).

    A trace matches by its key, or by user + item (+ timestamp). Unmatched: no such train sample
    (wrong data config, or a validation/test sample: training on those would leak the evaluation),
    a user + item pair rated several times without a timestamp, or a second trace for one sample.
    `on_missing="error"` raises naming (up to five of) them; `"skip"` counts them.
    """
    if on_missing not in ON_BAD:
        raise ValueError(f"on_missing must be one of {ON_BAD}, got {on_missing!r}")
    by_key: dict[str, int] = {}
    by_pair: dict[tuple[str, str], list[int]] = {}
    for pos in datamodule.positions("train"):
        row = datamodule.data.interactions[datamodule.table.target[pos]]
        by_key[datamodule.sample_key(pos)] = pos
        by_pair.setdefault((str(row.user), str(row.item)), []).append(pos)
    completions: dict[int, str] = {}
    problems: list[str] = []
    for trace in traces:
        if trace.key is not None or trace.timestamp is not None:
            key = trace.key or f"{trace.user}|{trace.item}|{trace.timestamp}"
            pos = by_key.get(key)
            why = "not a train sample"
        else:
            found = by_pair.get((trace.user, trace.item), [])
            pos = found[0] if len(found) == 1 else None
            why = "not a train sample" if not found else f"{len(found)} train samples, give a timestamp"
        if pos is not None and pos in completions:
            pos, why = None, "a second trace for this sample"
        if pos is None:
            problems.append(f"{trace.name} (line {trace.line}: {why})")
            continue
        completions[pos] = trace.completion
    if problems and on_missing == "error":
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise TraceError(
            f"{len(problems)} of {len(traces)} traces match no train sample: {'; '.join(problems[:5])}{more}. "
            "Use the data config the traces were built with, or on_bad_trace=skip"
        )
    return completions, len(problems)
