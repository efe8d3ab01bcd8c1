"""The rating scale: a closed interval with a step (1-5 stars, 0.5-5 half stars, 1-10), the known scales,
and the one way to round onto a scale's grid and to write a scale's numbers.

Pure (standard library only): prompts, rewards, rationales and metrics read the scale from here; the data
readers declare or detect it (`reczero.data.schema` re-exports both names for them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

EXACT_TOLERANCE = 1e-6  # two ratings this close are equal: exact-match rewards, metrics and trace checks


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
        return f"{format_number(self.low)}-{format_number(self.high)}"

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


def format_number(x: float) -> str:
    """A scale bound or step as people write it: '5', not '5.0'; '0.5' stays."""
    return str(int(x)) if float(x).is_integer() else str(x)


def round_to_scale(value: float, scale: RatingScale) -> float:
    """The nearest value on the scale's grid, halves rounded up (4.5 -> 5 on 1-5), clipped."""
    steps = math.floor((value - scale.low) / scale.step + 0.5 + 1e-9)
    return scale.clip(round(scale.low + steps * scale.step, 6))


def round_up_from(value: float, round_up_at: float, low: float, high: float, step: float = 1.0) -> float:
    """`value` on the grid low, low + step, ..., high, rounded up when its fraction of a step is at least
    `round_up_at` (0.5: ordinary rounding; the compact rule teacher's is chosen on validation)."""
    steps = (value - low) / step
    whole = math.floor(steps + 1e-9)
    rating = low + (whole + (steps - whole >= round_up_at - 1e-6)) * step
    return min(max(rating, low), high)


SCALES: dict[str, RatingScale] = {
    "1-5": RatingScale(1.0, 5.0, 1.0),
    "0.5-5": RatingScale(0.5, 5.0, 0.5),
    "1-10": RatingScale(1.0, 10.0, 1.0),
}
