"""The common form every interaction source is read into, and the errors readers raise.

Readers turn MovieLens, Amazon, Yelp or a generic CSV/JSONL into one `InteractionData`: a list of
`Interaction` rows, an `Item` table and the `RatingScale` the ratings live on. Everything after the
readers (samples, prompts, rewards, baselines) only sees this form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class RatingScale:
    """A closed rating interval with a step: 1-5 stars, 0.5-5 half stars, 1-10 (IMDb)."""

    low: float = 1.0
    high: float = 5.0
    step: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high <= self.low:
            raise ValueError(f"rating scale needs low < high, got {self.low}-{self.high}")
        if self.step <= 0:
            raise ValueError(f"rating scale step must be > 0, got {self.step}")

    @property
    def span(self) -> float:
        return self.high - self.low

    @property
    def name(self) -> str:
        return f"{_num(self.low)}-{_num(self.high)}"

    def contains(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high

    def clip(self, value: float) -> float:
        return min(max(value, self.low), self.high)

    def values(self) -> list[float]:
        """Every rating on the grid, low to high (e.g. 1, 2, 3, 4, 5)."""
        count = int(round(self.span / self.step)) + 1
        return [round(self.low + i * self.step, 6) for i in range(count)]

    @classmethod
    def parse(cls, text: str) -> RatingScale:
        """'1-5', '0.5-5' or '1-10' (the step is 0.5 when low is a half, else 1)."""
        if text in SCALES:
            return SCALES[text]
        try:
            low_text, high_text = text.split("-", 1)
            low, high = float(low_text), float(high_text)
        except ValueError:
            raise ValueError(f"rating scale must look like '1-5' or '0.5-5', got {text!r}") from None
        step = 0.5 if low % 1 else 1.0
        return cls(low, high, step)

    @classmethod
    def detect(cls, ratings: Iterable[float]) -> RatingScale:
        """Pick the smallest known scale that holds every rating seen."""
        lo, hi, half = math.inf, -math.inf, False
        for r in ratings:
            lo, hi = min(lo, r), max(hi, r)
            half = half or (r % 1 != 0)
        if lo == math.inf:
            raise ValueError("cannot detect a rating scale from no ratings")
        if half and lo >= 0.5 and hi <= 5:
            return SCALES["0.5-5"]
        if lo >= 1 and hi <= 5:
            return SCALES["1-5"]
        if lo >= 1 and hi <= 10:
            return SCALES["1-10"]
        if lo >= 0.5 and hi <= 5:
            return SCALES["0.5-5"]
        raise ValueError(f"ratings span {lo}..{hi}, which fits no known scale; declare one (e.g. scale: '0-100')")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


SCALES: dict[str, RatingScale] = {
    "1-5": RatingScale(1.0, 5.0, 1.0),
    "0.5-5": RatingScale(0.5, 5.0, 0.5),
    "1-10": RatingScale(1.0, 10.0, 1.0),
}


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
