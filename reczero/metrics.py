"""Rating-prediction metrics that count unparsable answers honestly.

The authors' evaluation counted an answer it could not parse as a perfect prediction. Here an
unparsable (or out-of-scale) prediction is a failure: it lowers the parse rate, is never exact or
"within" a tolerance, and its error is measured against a stated fallback (the caller passes the
user's average rating, clipped here to the scale). MAE and RMSE over all samples, fallbacks
included, are the headline numbers; `mae_parsed_only` is secondary (it hides failures).
Pure standard library (+ `RatingScale`), used by evaluation loops, the CLI and the baselines.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from reczero.scale import EXACT_TOLERANCE, RatingScale


@dataclass
class RatingMetrics:
    """Metrics over `count` predictions.

    parsed: predictions that parsed to a finite number inside the scale; parse_rate = parsed / count.
    mae, rmse: over every sample, an unparsed one scored with its (clipped) fallback.
    exact_rate: parsed and ``|pred - true| < 1e-6``; within_0_5 / within_1: parsed and
        ``|pred - true| <= 0.5 / 1`` (unparsed answers never count, whatever the fallback).
    mae_parsed_only: MAE over the parsed predictions alone (NaN when none parsed); secondary.
    mae_by_target: MAE (fallbacks included) per true rating value, ascending.
    errors: the absolute error of every sample, in input order (for `mae_by_group`).
    """

    count: int
    parsed: int
    parse_rate: float
    mae: float
    rmse: float
    exact_rate: float
    within_0_5: float
    within_1: float
    mae_parsed_only: float
    mae_by_target: dict[float, float] = field(default_factory=dict)
    errors: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat float dict for loggers: ``{prefix}mae`` ..., and ``{prefix}mae_target_4`` per true rating."""
        names = ("count", "parsed", "parse_rate", "mae", "rmse", "exact_rate", "within_0_5", "within_1")
        out = {f"{prefix}{name}": float(getattr(self, name)) for name in names}
        out[f"{prefix}mae_parsed_only"] = self.mae_parsed_only
        for target, mae in self.mae_by_target.items():
            out[f"{prefix}mae_target_{target:g}"] = mae
        return out


def _valid(prediction: object, scale: RatingScale) -> float | None:
    """The prediction as a float when it is a real number inside the scale, else None."""
    if isinstance(prediction, bool) or not isinstance(prediction, (int, float)):
        return None
    return float(prediction) if scale.contains(float(prediction)) else None


def rating_metrics(
    predictions: Sequence[float | None],
    targets: Sequence[float],
    fallbacks: Sequence[float],
    scale: RatingScale,
) -> RatingMetrics:
    """Score predictions (None = unparsable) against true ratings.

    A prediction that is None, not finite or outside the scale is a failure and is replaced by its
    fallback clipped to the scale (the user's average rating is the intended fallback) for MAE/RMSE.
    Raises ValueError on mismatched lengths, no samples, or a non-finite fallback or target.
    """
    if not (len(predictions) == len(targets) == len(fallbacks)):
        raise ValueError(
            f"lengths differ: {len(predictions)} predictions, {len(targets)} targets, {len(fallbacks)} fallbacks"
        )
    if not predictions:
        raise ValueError("no predictions to score")
    errors: list[float] = []
    parsed_errors: list[float] = []
    exact = within_half = within_one = 0
    by_target: dict[float, list[float]] = defaultdict(list)
    for index, (prediction, target, fallback) in enumerate(zip(predictions, targets, fallbacks)):
        if not math.isfinite(target):
            raise ValueError(f"target {index} is not finite: {target!r}")
        value = _valid(prediction, scale)
        if value is not None:
            error = abs(value - target)
            parsed_errors.append(error)
            exact += error < EXACT_TOLERANCE
            within_half += error <= 0.5 + EXACT_TOLERANCE
            within_one += error <= 1.0 + EXACT_TOLERANCE
        else:
            if not math.isfinite(fallback):
                raise ValueError(f"fallback {index} is not finite: {fallback!r}")
            error = abs(scale.clip(fallback) - target)
        errors.append(error)
        by_target[float(target)].append(error)
    count = len(errors)
    return RatingMetrics(
        count=count,
        parsed=len(parsed_errors),
        parse_rate=len(parsed_errors) / count,
        mae=sum(errors) / count,
        rmse=math.sqrt(sum(e * e for e in errors) / count),
        exact_rate=exact / count,
        within_0_5=within_half / count,
        within_1=within_one / count,
        mae_parsed_only=sum(parsed_errors) / len(parsed_errors) if parsed_errors else math.nan,
        mae_by_target={t: sum(v) / len(v) for t, v in sorted(by_target.items())},
        errors=errors,
    )


def mae_by_group(errors: Sequence[float], groups: Sequence[Hashable]) -> dict[Hashable, float]:
    """Mean absolute error per group key (e.g. a history-length bucket from `bucket_label`), keys in first-seen order."""
    if len(errors) != len(groups):
        raise ValueError(f"{len(errors)} errors but {len(groups)} group keys")
    sums: dict[Hashable, list[float]] = {}
    for error, group in zip(errors, groups):
        sums.setdefault(group, []).append(abs(error))
    return {group: sum(v) / len(v) for group, v in sums.items()}


def bucket_label(value: float, edges: Sequence[float]) -> str:
    """Name the half-open bucket holding `value`: edges (0, 5, 10) give "<0", "0-5", "5-10", ">=10".

    Buckets are [edge_i, edge_{i+1}); edges must be ascending.
    """
    if not edges or any(a >= b for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be a non-empty ascending sequence, got {list(edges)}")
    if value < edges[0]:
        return f"<{edges[0]:g}"
    for low, high in zip(edges, edges[1:]):
        if low <= value < high:
            return f"{low:g}-{high:g}"
    return f">={edges[-1]:g}"


@dataclass(frozen=True)
class PairedDifference:
    """MAE(a) - MAE(b) on the same samples, with a paired bootstrap interval (negative: a is better)."""

    diff: float
    low: float
    high: float
    count: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    errors_a: Sequence[float], errors_b: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Mean of `errors_a - errors_b` (absolute errors of two methods on the same samples, same order) and
    its percentile bootstrap interval: samples are redrawn with replacement as pairs, `n_boot` times."""
    import numpy as np

    a, b = np.asarray(errors_a, dtype=np.float64), np.asarray(errors_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length, non-empty error lists, got {a.shape} and {b.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    d = a - b  # [n]
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # [chunk, n] index draws, a chunk at a time to bound memory
        idx = rng.integers(0, len(d), size=(min(256, n_boot - start), len(d)))
        means[start : start + len(idx)] = d[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(float(d.mean()), float(low), float(high), len(d), level)
