"""The common form every interaction source is read into, and the errors readers raise.

Readers turn MovieLens, Amazon, Yelp or a generic CSV/JSONL into one `InteractionData`: a list of
`Interaction` rows, an `Item` table and the `RatingScale` the ratings live on (`reczero.scale`, re-exported here). Everything after the
readers (samples, prompts, rewards, baselines) only sees this form. `DuplicateCounts` records what the
duplicate rule (`sources.apply_duplicate_rule`) found and dropped; `RowOrigin` (each row's line) lets
its `error` rule name the lines of a repeat.
"""

from __future__ import annotations

from array import array
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


DUPLICATE_RULES = ("latest", "first", "keep", "error")


@dataclass
class DuplicateCounts:
    """What the duplicate rule (`sources.apply_duplicate_rule`) found in a source and did about it.

    Attributes:
        rule: the rule applied (one of `DUPLICATE_RULES`); None for data no rule has seen (a reader's output).
        pairs: (user, item) pairs with more than one interaction.
        repeated: interactions beyond the first of their pair (what `latest` and `first` drop).
        exact: of `repeated`, the copies: same rating and timestamp as an earlier interaction of the pair
            (Amazon's one review per product variant); the rest are re-ratings.
        dropped: interactions removed: `repeated` under `latest` / `first`, 0 under `keep`.
    """

    rule: str | None = None
    pairs: int = 0
    repeated: int = 0
    exact: int = 0
    dropped: int = 0


@dataclass
class RowOrigin:
    """Where a reader found each interaction: the file, and per interaction its 1-based line.

    Only error messages need it (the duplicate rule `error` names both lines of a repeated pair); the
    duplicate rule consumes it, and the cache does not keep it. `lines` is an unsigned 64-bit array,
    so it costs 8 bytes per interaction.
    """

    path: str
    lines: array = field(default_factory=lambda: array("Q"))


@dataclass
class InteractionData:
    """Everything a source provides, in the common form."""

    name: str
    interactions: list[Interaction]
    items: dict[str, Item]
    scale: RatingScale = field(default_factory=lambda: SCALES["1-5"])
    skipped_rows: int = 0
    duplicates: DuplicateCounts = field(default_factory=DuplicateCounts)
    origin: RowOrigin | None = field(default=None, repr=False, compare=False)

    def item(self, item_id: str) -> Item:
        """The item's metadata, or a title-only stand-in when the item table lacks it."""
        found = self.items.get(item_id)
        return found if found is not None else Item(item_id=item_id, title=f"item {item_id}")
