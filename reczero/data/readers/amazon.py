"""Amazon Reviews 2018 and 2023 readers: reviews JSONL(.gz) and, optionally, the category's metadata."""

from __future__ import annotations

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


def _join_review(headline: str | None, body: str | None) -> str | None:
    """'Great album. Loved every track' from a summary/title and a text; either may be missing."""
    if headline and body:
        return f"{headline} {body}" if headline[-1] in ".!?…" else f"{headline}. {body}"
    return headline or body


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

    rows, skipped, origin = _read_interactions(reviews, UTF8, _nonblank, parse, on_bad_row, max_rows)
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
    return _data(f"amazon-2018:{_stem(reviews)}", rows, items, sc, skipped, origin)


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

    rows, skipped, origin = _read_interactions(reviews, UTF8, _nonblank, parse, on_bad_row, max_rows)
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
    return _data(f"amazon-2023:{_stem(reviews)}", rows, items, sc, skipped, origin)
