"""`reczero predict`: ratings for requests read as JSONL, one JSON line out per request (stdout, or `--output`).

A request is either inline (everything the prompt shows, no dataset needed):

    {"id": "r1", "scale": "1-5",
     "user_history": [{"title": "Heat (1995)", "rating": 4, "review": "tense", "genres": ["Crime"]}, ...],
     "item": {"title": "Ronin (1998)", "genres": ["Action"], "year": 1998, "description": "..."},
     "item_history": [{"rating": 5, "review": "great"}, ...], "user_avg": 3.8, "item_avg": 4.1}

with histories oldest first (only the last `data.samples.user_history` / `item_history` records are
shown, as in training), or by ids looked up in the `--config` dataset:

    {"id": "r2", "user": "196", "item": "242", "timestamp": 881250949}

which shows the user's and the item's interactions strictly before `timestamp` (default: after every
interaction), the item's by other users only, and the averages over all of them (as `data/samples.py`).

Every request is checked before the model loads. A bad line stops the run with an error naming the
line and the field (`--on_bad_row skip`: a warning per line on stderr, counted at the end).
Output per request: {"line", "id", "rating" (parsed, or null), "fallback" (the user's average
clipped to the scale, else the item's, else the midpoint), "fallback_used", "prediction" (rating,
else fallback), "format_ok", "completion"}.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reczero import prompts, reasoning
from reczero.data.batching import PromptCollator, fallback_rating, pad_id
from reczero.data.datamodule import RatingDataModule
from reczero.data.render import item_details
from reczero.data.schema import DataFormatError, InteractionData, Item, RatingScale
from reczero.evaluation.evaluate import PolicyOptions
from reczero.modules.base import PolicyModule
from reczero.rollout.decoding import decode_batch

log = logging.getLogger(__name__)

INLINE_KEYS = {
    "id",
    "scale",
    "user_history",
    "item",
    "item_history",
    "user_avg",
    "user_count",
    "item_avg",
    "item_count",
}
ID_KEYS = {"id", "user", "item", "timestamp"}
ITEM_KEYS = {"title", "genres", "year", "brand", "price", "description"}
USER_LINE_KEYS = {"title", "rating", "review", "genres", "details"}
ITEM_LINE_KEYS = {"rating", "review"}


@dataclass
class Request:
    """A checked request: what the prompt shows and what an unparsable answer falls back to."""

    line: int
    id: object
    inp: prompts.PromptInput
    fallback: float


class _Check:
    """Field checks that raise `DataFormatError(source, line, field, expected, got)`."""

    def __init__(self, source: str, line: int):
        self.source, self.line = source, line

    def fail(self, name: str | None, expected: str, got: object = None):
        raise DataFormatError(self.source, self.line, name, expected, got)

    def keys(self, obj: dict, allowed: set[str], where: str) -> None:
        unknown = sorted(set(obj) - allowed)
        if unknown:
            self.fail(f"{where}{unknown[0]}", f"one of the fields {sorted(allowed)}", unknown[0])

    def text(self, obj: dict, key: str, where: str = "", required: bool = False) -> str | None:
        value = obj.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value.strip()):
            self.fail(where + key, "a non-empty string" if required else "a string or null", value)
        return value

    def number(self, obj: dict, key: str, where: str = "", scale: RatingScale | None = None, required=False):
        value = obj.get(key)
        if value is None and not required:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (scale is not None and not scale.contains(float(value))):
            self.fail(where + key, f"a number{f' on the {scale.name} scale' if scale else ''}", value)
        return float(value)

    def count(self, obj: dict, key: str) -> int | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.fail(key, "a whole number >= 0", value)
        return value

    def strings(self, obj: dict, key: str, where: str = "") -> tuple[str, ...]:
        value = obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(where + key, "a list of strings", value)
        return tuple(value)

    def records(self, obj: dict, key: str) -> list[dict]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(key, "a list of objects", value)
        return value


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def parse_inline(obj: dict, check: _Check, user_keep: int, item_keep: int) -> tuple[prompts.PromptInput, float]:
    check.keys(obj, INLINE_KEYS, "")
    scale_text = obj.get("scale", "1-5")
    try:
        scale = RatingScale.parse(scale_text) if isinstance(scale_text, str) else None
    except ValueError:
        scale = None
    if scale is None:
        check.fail("scale", "a scale such as '1-5', '0.5-5' or '1-10'", scale_text)
    item = obj.get("item")
    if not isinstance(item, dict):
        check.fail("item", "an object with at least a title", item)
    check.keys(item, ITEM_KEYS, "item.")
    year = item.get("year")
    if year is not None and (not isinstance(year, int) or isinstance(year, bool)):
        check.fail("item.year", "a whole number", year)
    price = item.get("price")
    if price is not None and not isinstance(price, (str, int, float)):
        check.fail("item.price", "a string or a number", price)
    meta = Item(
        item_id="request",
        title=check.text(item, "title", "item.", required=True),
        genres=check.strings(item, "genres", "item."),
        brand=check.text(item, "brand", "item."),
        price=None if price is None else str(price),
        description=check.text(item, "description", "item."),
        year=year,
    )
    user_lines = []
    for n, rec in enumerate(check.records(obj, "user_history")):
        where = f"user_history[{n}]."
        check.keys(rec, USER_LINE_KEYS, where)
        details = check.text(rec, "details", where) or ", ".join(check.strings(rec, "genres", where)[:3]) or None
        user_lines.append(
            prompts.HistoryLine(
                check.text(rec, "title", where, required=True),
                check.number(rec, "rating", where, scale, required=True),
                check.text(rec, "review", where),
                details,
            )
        )
    item_lines = []
    for n, rec in enumerate(check.records(obj, "item_history")):
        where = f"item_history[{n}]."
        check.keys(rec, ITEM_LINE_KEYS, where)
        rating = check.number(rec, "rating", where, scale, required=True)
        item_lines.append(prompts.HistoryLine(meta.title, rating, check.text(rec, "review", where)))
    user_avg = check.number(obj, "user_avg", "", scale)
    item_avg = check.number(obj, "item_avg", "", scale)
    user_count, item_count = check.count(obj, "user_count"), check.count(obj, "item_count")
    if user_avg is None:
        user_avg = _mean([line.rating for line in user_lines])
    if item_avg is None:
        item_avg = _mean([line.rating for line in item_lines])
    inp = prompts.PromptInput(
        scale=scale,
        item_title=meta.title,
        user_history=user_lines[-user_keep:] if user_keep else [],
        item_history=item_lines[-item_keep:] if item_keep else [],
        item_details=item_details(meta),
        user_avg=user_avg,
        user_count=user_count if user_count is not None else (max(len(user_lines), 1) if user_avg is not None else 0),
        item_avg=item_avg,
        item_count=item_count if item_count is not None else (max(len(item_lines), 1) if item_avg is not None else 0),
    )
    return inp, fallback_rating(scale, user_avg, item_avg)


class DatasetIndex:
    """Chronological interaction indices per user and per item, for id-based requests."""

    def __init__(self, data: InteractionData):
        self.data = data
        rows = data.interactions
        self.by_user: dict[str, list[int]] = defaultdict(list)
        self.by_item: dict[str, list[int]] = defaultdict(list)
        for idx, row in enumerate(rows):
            self.by_user[row.user].append(idx)
            self.by_item[row.item].append(idx)
        for groups in (self.by_user, self.by_item):
            for idx_list in groups.values():
                idx_list.sort(key=lambda i: (rows[i].timestamp, i))
        self.times = {u: [rows[i].timestamp for i in idx] for u, idx in self.by_user.items()}
        self.item_times = {it: [rows[i].timestamp for i in idx] for it, idx in self.by_item.items()}

    def prompt_input(
        self, user: str, item: str, before: float, user_keep: int, item_keep: int
    ) -> tuple[prompts.PromptInput, float]:
        """What a sample at time `before` would show (strictly earlier interactions only)."""
        rows, data = self.data.interactions, self.data
        earlier = self.by_user[user][: bisect.bisect_left(self.times[user], before)]
        others = [
            j
            for j in self.by_item.get(item, [])[: bisect.bisect_left(self.item_times.get(item, []), before)]
            if rows[j].user != user
        ]
        user_lines = []
        for j in earlier[-user_keep:] if user_keep else []:
            it = data.item(rows[j].item)
            user_lines.append(
                prompts.HistoryLine(it.title, rows[j].rating, rows[j].review, ", ".join(it.genres[:3]) or None)
            )
        meta = data.item(item)
        item_lines = [prompts.HistoryLine(meta.title, rows[j].rating, rows[j].review) for j in others]
        user_avg = _mean([rows[j].rating for j in earlier])
        item_avg = _mean([rows[j].rating for j in others])
        inp = prompts.PromptInput(
            scale=data.scale,
            item_title=meta.title,
            user_history=user_lines,
            item_history=item_lines[-item_keep:] if item_keep else [],
            item_details=item_details(meta),
            user_avg=user_avg,
            user_count=len(earlier),
            item_avg=item_avg,
            item_count=len(others),
            key=f"{user}|{item}|{before if math.isfinite(before) else 'now'}",
        )
        return inp, fallback_rating(data.scale, user_avg, item_avg)


def parse_request(text: str, line: int, source: str, dm, index_of) -> Request:
    """Check one JSONL line; `index_of()` gives the `DatasetIndex` (built on first use)."""
    check = _Check(source, line)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        check.fail(None, f"one JSON object per line ({err.msg} at column {err.colno})", text.strip()[:60])
    if not isinstance(obj, dict):
        check.fail(None, "a JSON object", obj)
    keep_user, keep_item = dm.sample_config.user_history, dm.sample_config.item_history
    if "user" not in obj:
        if isinstance(obj.get("item"), (str, int)) and not isinstance(obj.get("item"), bool):
            check.fail("user", "a user id: a request by ids needs both user and item", None)
        if "item" not in obj:
            check.fail("item", "an inline request (user_history + item object) or an id request (user + item)")
        inp, fallback = parse_inline(obj, check, keep_user, keep_item)
        return Request(line, obj.get("id"), inp, fallback)
    check.keys(obj, ID_KEYS, "")
    ids = {}
    for key in ("user", "item"):
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            check.fail(key, "an id (string or whole number)", value)
        ids[key] = str(value)
    before = obj.get("timestamp")
    if before is not None and (isinstance(before, bool) or not isinstance(before, (int, float))):
        check.fail("timestamp", "unix seconds (a number)", before)
    index = index_of()
    if ids["user"] not in index.by_user:
        check.fail("user", f"a user id of {index.data.name}", ids["user"])
    if ids["item"] not in index.by_item and ids["item"] not in index.data.items:
        check.fail("item", f"an item id of {index.data.name}", ids["item"])
    inp, fallback = index.prompt_input(
        ids["user"], ids["item"], math.inf if before is None else before, keep_user, keep_item
    )
    return Request(line, obj.get("id"), inp, fallback)


def read_requests(lines, source: str, dm, on_bad_row: str = "error") -> tuple[list[Request], int]:
    """(checked requests, bad lines skipped). Blank lines are ignored; `on_bad_row="error"` raises the first error."""
    index: list[DatasetIndex] = []

    def index_of() -> DatasetIndex:
        if not index:
            dm.setup()
            index.append(DatasetIndex(dm.data))
        return index[0]

    requests, skipped = [], 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            requests.append(parse_request(text, number, source, dm, index_of))
        except DataFormatError as err:
            if on_bad_row == "error":
                raise
            skipped += 1
            print(f"skipped: {err}", file=sys.stderr)
    return requests, skipped


def predict_stream(model, tokenizer, dm, requests: list[Request], decode, spec, batch_size: int, out=None) -> int:
    """Decode every request in batches (input order), writing one JSON line each; returns the count written."""
    import torch

    dm.set_tokenizer(tokenizer)
    renderer = dm.renderer
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(decode.seed) if decode.mode == "self_consistency" else None
    out = out or sys.stdout
    written = 0
    for first in range(0, len(requests), batch_size):
        chunk = requests[first : first + batch_size]
        by_scale: dict[RatingScale, list[int]] = defaultdict(list)  # inline requests may mix scales
        for i, req in enumerate(chunk):
            by_scale[req.inp.scale].append(i)
        results = [None] * len(chunk)
        for scale, rows in by_scale.items():
            texts = [renderer.render(chunk[i].inp).text for i in rows]
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            features = [
                {
                    "input_ids": x,
                    "fallback": chunk[i].fallback,
                    "copy_sources": renderer.copy_sources(chunk[i].inp),
                    "facts": reasoning.prompt_facts(chunk[i].inp),
                }
                for i, x in zip(rows, ids)
            ]
            batch = PromptCollator(pad_id(tokenizer), scale)(features)
            decoded = decode_batch(model, tokenizer, batch, decode, spec, dm.prompt.response_prefix, generator)
            for i, d in zip(rows, decoded):
                results[i] = d
        for req, d in zip(chunk, results):
            row = {
                "line": req.line,
                "id": req.id,
                "rating": d.prediction,
                "fallback": req.fallback,
                "fallback_used": d.prediction is None,
                "prediction": req.fallback if d.prediction is None else d.prediction,
                **d.json_fields(),
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            written += 1
    return written


@dataclass
class PredictOptions(PolicyOptions):
    """`reczero predict`'s own options (besides the policy's).

    Args:
        requests: a JSONL file of requests, or - for stdin: one JSON object a line (blank lines are
            ignored). By ids, looked up in the --config dataset: {"user": ID, "item": ID} with optional
            "id" (any value, echoed in the output) and "timestamp" (unix seconds: the prompt shows only
            interactions strictly before it; default: all). Inline, no dataset needed: {"item": {"title":
            ...}} with optional "id", "scale" ("1-5" default, "0.5-5", "1-10"), item fields "genres" (a
            list), "year", "brand", "price", "description", "user_history" (oldest first, each {"title",
            "rating"} with optional "review", "genres" or "details"), "item_history" (each {"rating"}
            with optional "review"), "user_avg", "user_count", "item_avg", "item_count". Example:
            {"id": "r1", "user": "196", "item": "242"}. Output, one line per request: line, id, rating
            (null when unparsed), fallback, fallback_used, prediction, format_ok, completion.
            Reference: docs/data.md.
        on_bad_row: "error" stops at the first bad line; "skip" warns on stderr and counts it.
        output: write the JSON lines to this file instead of stdout.
    """

    requests: str | None = None
    on_bad_row: Literal["error", "skip"] = "error"
    output: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.requests:
            raise ValueError("requests is required: a JSONL file of requests, or - for stdin")


def predict_command(data: RatingDataModule, model: PolicyModule, options: PredictOptions) -> int:
    """Rate requests (JSONL) with a policy: one JSON line per request on stdout, or in `--output`. A request
    names a user and an item of the --config dataset ({"user": "196", "item": "242"}) or carries the history
    inline (--requests)."""
    source = "<stdin>" if options.requests == "-" else options.requests
    try:
        if options.requests == "-":
            requests, skipped = read_requests(sys.stdin, source, data, options.on_bad_row)
        else:
            with open(options.requests, encoding="utf-8") as fh:
                requests, skipped = read_requests(fh, source, data, options.on_bad_row)
    except DataFormatError as err:
        raise ValueError(f"{err} (use --on_bad_row skip to skip bad lines)") from None
    if not requests:
        print(f"no requests to rate ({skipped} bad lines skipped)", file=sys.stderr)
        return 0
    policy, tokenizer, _, decode = options.load(model)
    batch_size = options.batch_size or data.eval_batch_size
    if options.output:
        Path(options.output).parent.mkdir(parents=True, exist_ok=True)
        with open(options.output, "w", encoding="utf-8") as out:
            written = predict_stream(policy, tokenizer, data, requests, decode, model.reward_spec, batch_size, out)
    else:
        written = predict_stream(policy, tokenizer, data, requests, decode, model.reward_spec, batch_size)
    where = f"; wrote {options.output}" if options.output else ""
    print(f"rated {written} requests; skipped {skipped} bad lines{where}", file=sys.stderr)
    return written
