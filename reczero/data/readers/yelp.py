"""Yelp Open Dataset reader: `review.json` and `business.json` (a business becomes an item)."""

from __future__ import annotations

from pathlib import Path

from reczero.data.readers.common import (
    UTF8,
    _check_policy,
    _data,
    _nonblank,
    _read_interactions,
    _read_items,
    _require,
    _scale,
)
from reczero.data.readers.fields import MISSING, _genres, _jid, _jrating, _json_object, _jstrings, _jtext, _seconds
from reczero.data.schema import DataFormatError, Interaction, InteractionData, Item, RatingScale


def yelp_files(path: str | Path) -> list[Path]:
    names = [
        ("review.json", "yelp_academic_dataset_review.json", "review.json.gz"),
        ("business.json", "yelp_academic_dataset_business.json", "business.json.gz"),
    ]
    return _require("yelp", path, names)  # type: ignore[arg-type]


def read_yelp(
    path: str | Path, *, scale: str | RatingScale | None = None, on_bad_row: str = "error", max_rows: int | None = None
) -> InteractionData:
    """Yelp Open Dataset directory: `review.json` and `business.json` (the `yelp_academic_dataset_*` names too).

    A business becomes an item: its name is the title, its categories the genres, its city the
    description and its price range ('$$') the price. The business's own star average is left out:
    it includes later ratings, which would leak the future into a prompt.
    """
    _check_policy(on_bad_row, max_rows)
    reviews, business = yelp_files(path)
    sc = _scale(scale, "1-5")

    def parse(line: int, text: str) -> Interaction:
        obj = _json_object(text, reviews, line)
        date = obj.get("date")
        if not isinstance(date, str):
            raise DataFormatError(
                reviews, line, "date", "a date 'YYYY-MM-DD HH:MM:SS'", MISSING if date is None else date
            )
        return Interaction(
            user=_jid(obj, "user_id", reviews, line),
            item=_jid(obj, "business_id", reviews, line),
            rating=_jrating(obj, "stars", reviews, line, sc),
            timestamp=_seconds(date, reviews, line, "date", iso=True),
            review=_jtext(obj, "text", reviews, line),
        )

    rows, skipped, origin = _read_interactions(reviews, UTF8, _nonblank, parse, on_bad_row, max_rows)

    def parse_business(line: int, text: str) -> Item:
        obj = _json_object(text, business, line)
        item_id = _jid(obj, "business_id", business, line)
        categories = obj.get("categories")
        if isinstance(categories, str):
            genres = _genres(categories, ",")
        else:
            genres = _jstrings(obj, "categories", business, line)
        place = ", ".join(p for p in (_jtext(obj, "city", business, line), _jtext(obj, "state", business, line)) if p)
        attributes = obj.get("attributes")
        level = attributes.get("RestaurantsPriceRange2") if isinstance(attributes, dict) else None
        price = "$" * int(level) if isinstance(level, str) and level.strip() in ("1", "2", "3", "4") else None
        return Item(
            item_id=item_id,
            title=_jtext(obj, "name", business, line) or f"business {item_id}",
            genres=genres,
            price=price,
            description=f"Located in {place}." if place else None,
        )

    wanted = {r.item for r in rows}
    items, skipped_items = _read_items(business, UTF8, _nonblank, parse_business, wanted, on_bad_row)
    return _data("yelp", rows, items, sc, skipped + skipped_items, origin)
