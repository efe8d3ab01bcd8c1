"""Rating metrics with hand-computed numbers; unparsable answers must count as failures."""

from __future__ import annotations

import math

import pytest

from reczero import metrics
from reczero.metrics import RatingMetrics, bucket_label, mae_by_group, rating_metrics
from reczero.scale import RatingScale

STARS = RatingScale(1.0, 5.0, 1.0)

# sample: prediction, target, fallback -> error used for MAE
# 0: 4 vs 4 parsed                 -> 0   exact, within 0.5 and 1
# 1: None, fallback 3.7 vs 2       -> 1.7 failure
# 2: 5.5 out of scale, fallback 4  -> 1   failure (not "within 1": unparsed never counts)
# 3: 3 vs 5 parsed                 -> 2
# 4: None, fallback 9 clipped to 5 -> 0   failure, never exact
PREDICTIONS = [4.0, None, 5.5, 3.0, None]
TARGETS = [4.0, 2.0, 5.0, 5.0, 5.0]
FALLBACKS = [3.0, 3.7, 4.0, 9.0, 9.0]


def test_rating_metrics_by_hand():
    m = rating_metrics(PREDICTIONS, TARGETS, FALLBACKS, STARS)
    assert (m.count, m.parsed) == (5, 2)
    assert m.parse_rate == pytest.approx(0.4)
    assert m.mae == pytest.approx((0 + 1.7 + 1 + 2 + 0) / 5)
    assert m.rmse == pytest.approx(math.sqrt((0 + 1.7**2 + 1 + 4 + 0) / 5))
    assert m.exact_rate == pytest.approx(0.2)
    assert m.within_0_5 == pytest.approx(0.2)
    assert m.within_1 == pytest.approx(0.2)
    assert m.mae_parsed_only == pytest.approx(1.0)  # (0 + 2) / 2
    assert m.mae_by_target == pytest.approx({2.0: 1.7, 4.0: 0.0, 5.0: 1.0})  # 5: (1 + 2 + 0) / 3
    assert list(m.mae_by_target) == [2.0, 4.0, 5.0]
    assert m.errors == pytest.approx([0.0, 1.7, 1.0, 2.0, 0.0])


def test_unparsed_is_never_perfect():
    # the authors' code would score these as perfect; here they cost their fallback's error
    m = rating_metrics([None, None], [5.0, 1.0], [3.0, 3.0], STARS)
    assert (m.parsed, m.parse_rate, m.exact_rate, m.within_1) == (0, 0.0, 0.0, 0.0)
    assert m.mae == 2.0 and m.rmse == 2.0
    assert math.isnan(m.mae_parsed_only)
    # even a fallback equal to the truth is not an exact answer
    m = rating_metrics([None], [3.0], [3.0], STARS)
    assert m.mae == 0.0 and m.exact_rate == 0.0 and m.within_0_5 == 0.0


def test_nan_inf_and_non_numbers_are_failures():
    m = rating_metrics([float("nan"), float("inf"), True, 0.0], [4.0] * 4, [1.0, 2.0, 3.0, 4.0], STARS)  # type: ignore[list-item]
    assert m.parsed == 0
    assert m.mae == pytest.approx((3 + 2 + 1 + 0) / 4)


def test_continuous_and_tolerances():
    m = rating_metrics([4.5, 3.5000001, 2.9], [4.0, 4.0, 4.0], [3.0] * 3, STARS)
    assert m.parsed == 3 and m.exact_rate == 0.0
    assert m.within_0_5 == pytest.approx(2 / 3)  # 0.5 and 0.4999999 count, 1.1 does not
    assert m.within_1 == pytest.approx(2 / 3)
    m = rating_metrics([4.0000000001], [4.0], [3.0], STARS)
    assert m.exact_rate == 1.0


def test_to_dict():
    m = rating_metrics(PREDICTIONS, TARGETS, FALLBACKS, STARS)
    d = m.to_dict("val/")
    assert d["val/mae"] == pytest.approx(0.94)
    assert d["val/count"] == 5.0 and d["val/parsed"] == 2.0
    assert d["val/mae_target_5"] == pytest.approx(1.0)
    assert d["val/mae_parsed_only"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in d.values())
    assert "val/errors" not in d
    assert set(m.to_dict()) == {k.removeprefix("val/") for k in d}


def test_rating_metrics_validates():
    with pytest.raises(ValueError, match="lengths differ"):
        rating_metrics([4.0], [4.0, 3.0], [3.0], STARS)
    with pytest.raises(ValueError, match="no predictions"):
        rating_metrics([], [], [], STARS)
    with pytest.raises(ValueError, match="fallback 0"):
        rating_metrics([None], [4.0], [float("nan")], STARS)
    with pytest.raises(ValueError, match="target 0"):
        rating_metrics([4.0], [float("nan")], [3.0], STARS)
    # a non-finite fallback is fine when it is not needed
    assert rating_metrics([4.0], [4.0], [float("nan")], STARS).mae == 0.0


def test_mae_by_group_and_buckets():
    assert mae_by_group([0.0, 1.0, 2.0, -3.0], ["a", "b", "a", "b"]) == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError):
        mae_by_group([1.0], [])
    edges = (5, 10, 20)
    labels = [bucket_label(n, edges) for n in (0, 5, 9, 10, 19, 20, 100)]
    assert labels == ["<5", "5-10", "5-10", "10-20", "10-20", ">=20", ">=20"]
    with pytest.raises(ValueError):
        bucket_label(1, (3, 2))
    m = rating_metrics([4.0, 3.0, None], [4.0, 5.0, 1.0], [3.0, 3.0, 3.0], STARS)
    history = [3, 12, 30]
    assert mae_by_group(m.errors, [bucket_label(h, (10, 20)) for h in history]) == {
        "<10": 0.0,
        "10-20": 2.0,
        ">=20": 2.0,
    }


def test_is_a_dataclass_record():
    m = rating_metrics([4.0], [4.0], [3.0], STARS)
    assert isinstance(m, RatingMetrics)
    assert m.mae == 0.0 and m.rmse == 0.0 and m.exact_rate == 1.0


def test_paired_bootstrap_of_a_constant_difference_is_exact():
    a, b = [1.0, 2.0, 0.0, 3.0], [0.5, 1.5, -0.5, 2.5]  # a - b = 0.5 everywhere: every resample gives 0.5
    res = metrics.paired_bootstrap(a, b, n_boot=500)
    assert res.diff == res.low == res.high == 0.5 and res.excludes_zero


def test_paired_bootstrap_matches_the_normal_interval_of_a_known_distribution():
    # d = +-1 with equal counts: mean 0, sd 1, so the 95% interval of the mean is about +-1.96 / sqrt(n)
    n = 4000
    a = [1.0 if i % 2 else 0.0 for i in range(n)]
    b = [0.0 if i % 2 else 1.0 for i in range(n)]
    res = metrics.paired_bootstrap(a, b, n_boot=2000, seed=1)
    half = 1.96 / math.sqrt(n)
    assert res.diff == 0.0 and not res.excludes_zero
    assert abs(res.high - half) < 0.15 * half and abs(res.low + half) < 0.15 * half


def test_paired_bootstrap_refuses_unpaired_input():
    with pytest.raises(ValueError, match="equal-length"):
        metrics.paired_bootstrap([1.0, 2.0], [1.0])
