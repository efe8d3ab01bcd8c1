"""Amazon Reviews 2018 and 2023: one reader, with a field map per schema.

Both dumps are a reviews JSONL(.gz) and, optionally, the category's metadata JSONL(.gz); they differ in
field names, in the time unit and in where an item's genres, brand and features are kept
(`AmazonSchema`, `AMAZON_2018`, `AMAZON_2023`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

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
from reczero.data.readers.fields import _jid, _jrating, _jseconds, _json_object, _jstrings, _jtext, _year
from reczero.data.schema import DataFormatError, Interaction, InteractionData, Item, RatingScale


@dataclass(frozen=True)
class AmazonSchema:
    """Where one Amazon dump keeps each field. A tuple of keys means: the first one present (or
    non-empty, for genres) wins."""

    name: str  # the format's name: "amazon-2018"
    user: str
    item: tuple[str, ...]  # the review's item id
    rating: str
    time: str
    time_divisor: int  # 1000 where the time is in milliseconds
    time_text: str | None  # an older date field ('09 13, 2009') used where `time` is absent
    headline: str  # the review's summary / title, joined before its text
    body: str
    meta_item: str  # the metadata's item id
    genres: tuple[str, ...]
    brand: str
    features: str | None  # bullet points appended to the description


AMAZON_2018 = AmazonSchema(
    name="amazon-2018", user="reviewerID", item=("asin",), rating="overall", time="unixReviewTime",
    time_divisor=1, time_text="reviewTime", headline="summary", body="reviewText", meta_item="asin",
    genres=("category",), brand="brand", features=None,
)  # fmt: skip
AMAZON_2023 = AmazonSchema(
    name="amazon-2023", user="user_id", item=("parent_asin", "asin"), rating="rating", time="timestamp",
    time_divisor=1000, time_text=None, headline="title", body="text", meta_item="parent_asin",
    genres=("categories", "main_category"), brand="store", features="features",
)  # fmt: skip


def _join_review(headline: str | None, body: str | None) -> str | None:
    """'Great album. Loved every track' from a summary/title and a text; either may be missing."""
    if headline and body:
        return f"{headline} {body}" if headline[-1] in ".!?…" else f"{headline}. {body}"
    return headline or body


def _price(value: str | None) -> str | None:
    """A real price, or None: 2023 writes a missing one as "None", 2018 holds page junk (CSS) for some
    items, and a real price is short."""
    return value if value and value != "None" and len(value) <= 40 else None


def _review_time(text: str, path: Path, line: int) -> int:
    try:
        stamp = datetime.strptime(text.strip(), "%m %d, %Y").replace(tzinfo=timezone.utc)
    except ValueError:
        raise DataFormatError(path, line, "reviewTime", "a date like '09 13, 2009'", text) from None
    return int(stamp.timestamp())


def _review_parser(schema: AmazonSchema, reviews: Path, scale: RatingScale):
    """(line, text) -> `Interaction` for one review line of `schema`."""

    def stamp(obj: dict, line: int) -> int:
        if schema.time_text and schema.time not in obj and isinstance(obj.get(schema.time_text), str):
            return _review_time(obj[schema.time_text], reviews, line)
        return _jseconds(obj, schema.time, reviews, line, divisor=schema.time_divisor)

    def parse(line: int, text: str) -> Interaction:
        obj = _json_object(text, reviews, line)
        item_key = next((key for key in schema.item if key in obj), schema.item[0])
        return Interaction(  # fields checked in this order: the first bad one is the one reported
            user=_jid(obj, schema.user, reviews, line),
            item=_jid(obj, item_key, reviews, line),
            rating=_jrating(obj, schema.rating, reviews, line, scale),
            timestamp=stamp(obj, line),
            review=_join_review(_jtext(obj, schema.headline, reviews, line), _jtext(obj, schema.body, reviews, line)),
        )

    return parse


def _item_parser(schema: AmazonSchema, meta: Path):
    """(line, text) -> `Item` for one metadata line of `schema`."""

    def parse_item(line: int, text: str) -> Item:
        obj = _json_object(text, meta, line)
        asin = _jid(obj, schema.meta_item, meta, line)
        title = _jtext(obj, "title", meta, line) or f"item {asin}"
        description = " ".join(_jstrings(obj, "description", meta, line))
        features = "; ".join(_jstrings(obj, schema.features, meta, line)) if schema.features else ""
        if features:
            description = f"{description} Features: {features}".strip()
        genres: tuple[str, ...] = ()
        for key in schema.genres:
            genres = genres or _jstrings(obj, key, meta, line)
        return Item(
            item_id=asin,
            title=title,
            genres=genres,
            brand=_jtext(obj, schema.brand, meta, line),
            price=_price(_jtext(obj, "price", meta, line)),
            description=description or None,
            year=_year(title),
        )

    return parse_item


def read_amazon(
    schema: AmazonSchema, path: str | Path, items_path: str | Path | None = None, *,
    scale: str | RatingScale | None = None, on_bad_row: str = "error", max_rows: int | None = None,
) -> InteractionData:  # fmt: skip
    """An Amazon reviews JSONL(.gz) of `schema` and, optionally, its metadata JSONL(.gz)."""
    _check_policy(on_bad_row, max_rows)
    reviews = existing_file(schema.name, path, "reviews JSONL file")
    sc = _scale(scale, "1-5")
    parse = _review_parser(schema, reviews, sc)
    rows, skipped, origin = _read_interactions(reviews, UTF8, _nonblank, parse, on_bad_row, max_rows)
    items: dict[str, Item] = {}
    if items_path is not None:
        meta = existing_file(schema.name, items_path, "metadata JSONL file")
        wanted = {r.item for r in rows}
        items, skipped_items = _read_items(meta, UTF8, _nonblank, _item_parser(schema, meta), wanted, on_bad_row)
        skipped += skipped_items
    return _data(f"{schema.name}:{_stem(reviews)}", rows, items, sc, skipped, origin)


def read_amazon_2018(
    path: str | Path, items_path: str | Path | None = None, *, scale: str | RatingScale | None = None,
    on_bad_row: str = "error", max_rows: int | None = None,
) -> InteractionData:  # fmt: skip
    """Amazon Reviews 2018: reviews JSONL(.gz) and, optionally, the category's metadata JSONL(.gz).

    The review text is 'summary. reviewText'. `unixReviewTime` is the time; when it is absent the
    older `reviewTime` ('09 13, 2009') is used.
    """
    return read_amazon(AMAZON_2018, path, items_path, scale=scale, on_bad_row=on_bad_row, max_rows=max_rows)


def read_amazon_2023(
    path: str | Path, items_path: str | Path | None = None, *, scale: str | RatingScale | None = None,
    on_bad_row: str = "error", max_rows: int | None = None,
) -> InteractionData:  # fmt: skip
    """Amazon Reviews 2023: reviews JSONL(.gz) keyed by `parent_asin`, times in milliseconds; optional metadata."""
    return read_amazon(AMAZON_2023, path, items_path, scale=scale, on_bad_row=on_bad_row, max_rows=max_rows)
