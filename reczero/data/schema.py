"""The common form every interaction source is read into, and the errors readers raise.

Readers turn MovieLens, Amazon, Yelp or a generic CSV/JSONL into one `InteractionData`: a list of
`Interaction` rows, an `Item` table and the `RatingScale` the ratings live on (`reczero.scale`, re-exported here). Everything after the
readers (samples, prompts, rewards, baselines) only sees this form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reczero.scale import SCALES, RatingScale  # re-exported: data code names the scale through the schema


class DataFormatError(ValueError):
    """A row or file that does not match its declared format.

    The message always names the file, the 1-based line (when there is one), the field and what
    was expected, so a user can open the file at that line and fix it.
    """

    def __init__(self, path: str, line: int | None, field: str | None, expected: str, got: object = None):
        self.path, self.line, self.field, self.expected, self.got = str(path), line, field, expected, got
        where = self.path + (f", line {line}" if line is not None else "")
        what = f"field {field!r}: " if field else ""
        got_text = "" if got is None else f" (got {_short(got)})"
        super().__init__(f"{where}: {what}expected {expected}{got_text}")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class Interaction:
    """One rating event. `timestamp` is unix seconds; `review` is the user's own text, if any."""

    user: str
    item: str
    rating: float
    timestamp: int
    review: str | None = None


@dataclass(slots=True)
class Item:
    """Item metadata: the title plus whatever the source has."""

    item_id: str
    title: str
    genres: tuple[str, ...] = ()
    brand: str | None = None
    price: str | None = None
    description: str | None = None
    year: int | None = None


@dataclass
class InteractionData:
    """Everything a source provides, in the common form."""

    name: str
    interactions: list[Interaction]
    items: dict[str, Item]
    scale: RatingScale = field(default_factory=lambda: SCALES["1-5"])
    skipped_rows: int = 0

    def item(self, item_id: str) -> Item:
        """The item's metadata, or a title-only stand-in when the item table lacks it."""
        found = self.items.get(item_id)
        return found if found is not None else Item(item_id=item_id, title=f"item {item_id}")
