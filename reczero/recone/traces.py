"""Reasoning traces for RecOne's SFT cold start: the JSONL format, its validation, and the hint-leak filter.

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
`leaks_hint` is Reason4Rec's filter for explanations written with the true rating as a hint.

Pure: standard library plus `reczero.rewards` (the DataModule is duck-typed: `positions`, `sample_key`,
`data`, `table`).
"""

from __future__ import annotations

import json
import math
import re
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


# -- hint leaks ----------------------------------------------------------------------------------
# Rating talk the explanation must not contain (case-insensitive, whole words; "/<high>" and
# "out of <high>" use the scale's top, e.g. "/5" and "out of 5" on 1-5).
RATING_WORDS = ("rating", "ratings", "rated", "rate it", "star", "stars", "score", "scores", "scored")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NUMBER_TOKEN = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+)?(?![\w])")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def leaks_hint(completion: str, rating: float, scale: RatingScale) -> str | None:
    """Why an explanation written with the true `rating` as a hint gives it away, or None when clean.

    Reason4Rec's rule: the rationale must not state the hinted rating nor talk about ratings. Checked
    on the reasoning, i.e. all text before the LAST `<rate>` tag (the three reasoning blocks and
    anything around them; the whole text if there is no `<rate>`), case-insensitively, first hit wins:

    1. ``number:<n>``: the rating as a standalone number: digits not inside a longer number or word
       ("4", "4.0", "4.00", "4-star", "a 4." match for 4; "14", "3.4", "4.5", "4th" do not);
    2. ``word:<w>``: the rating as a whole English word, "one" to "ten" ("four"; 3.5 as "three and a
       half"). "one" is not checked for a rating of 1: as a pronoun ("no one", "one of") it is far too
       common to mean the rating, and would drop most 1-star traces; digits and rating talk still apply;
    3. ``talk:<w>``: rating talk, whole words or phrases: `RATING_WORDS` ("rating", "ratings", "rated",
       "rate it", "star", "stars", "score", "scores", "scored"), "/<high>" and "out of <high>".

    Conservative on purpose: a dropped trace costs one teacher call; a leaked hint teaches the
    student to justify ratings it was never shown how to infer. Never raises on text.
    """
    text = completion[: completion.rfind("<rate>")] if "<rate>" in completion else completion
    lower = text.lower()
    for token in _NUMBER_TOKEN.findall(lower):
        if abs(float(token) - rating) < EXACT_TOLERANCE:
            return f"number:{token}"
    whole, half = int(math.floor(rating)), rating - math.floor(rating)
    if 0 <= whole < len(NUMBER_WORDS) and (whole != 1 or half):
        word = NUMBER_WORDS[whole]
        phrase = word if not half else (f"{word} and a half" if abs(half - 0.5) < 1e-9 else None)
        if phrase and re.search(rf"\b{phrase.replace(' ', '[ -]')}\b", lower):
            return f"word:{phrase}"
    high = _fmt(scale.high)
    for talk in (*RATING_WORDS, f"out of {high}"):
        if re.search(rf"\b{re.escape(talk)}\b", lower):
            return f"talk:{talk}"
    if re.search(rf"/\s*{re.escape(high)}(?![0-9])", lower):
        return f"talk:/{high}"
    return None
