"""The duplicate rule every source goes through (`SourceConfig.duplicates`), on real files in tmp_path.

One table of repeated (user, item) rows, written as CSV and as JSONL: exact copies, a re-rating on a
later day and same-day ties. Each rule's survivors and counts are checked by the review text that
marks each line; then the leave-last split (no copy of a test rating left in train), the Amazon
2018 / 2023 per-variant copies, the synthetic set (no repeats) and the cache key.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from reczero.data.cache import load_or_build
from reczero.data.samples import SampleConfig, build_samples
from reczero.data.schema import DataFormatError, DuplicateCounts
from reczero.data.sources import SourceConfig, load_source

DAY = 86_400
# (user, item, rating, timestamp, review); the review names the line the row sits on in the CSV
ROWS = [
    ("u1", "a", 4, 10 * DAY, "line 2"),
    ("u1", "b", 3, 10 * DAY, "line 3"),  # same day (and second) as line 2: a tie, not a repeat
    ("u1", "a", 4, 10 * DAY, "line 4"),  # exact copy of line 2 (a second product variant)
    ("u2", "a", 2, 10 * DAY, "line 5"),
    ("u1", "c", 5, 11 * DAY, "line 6"),
    ("u1", "a", 2, 12 * DAY, "line 7"),  # u1 re-rates a two days later
    ("u2", "b", 5, 11 * DAY, "line 8"),
    ("u2", "b", 5, 11 * DAY, "line 9"),  # exact copy of line 8, same second: the later line wins a tie
    ("u2", "c", 1, 12 * DAY, "line 10"),
]
COUNTS = {"pairs": 2, "repeated": 3, "exact": 2}  # (u1, a) x3 with one copy, (u2, b) x2 with one copy


def write_table(tmp_path: Path, kind: str) -> Path:
    if kind == "csv":
        path = tmp_path / "ratings.csv"
        path.write_text("user,item,rating,timestamp,review\n" + "".join(",".join(map(str, r)) + "\n" for r in ROWS))
    else:  # JSONL: one object a line, so the review names the CSV line, one more than the JSONL line
        path = tmp_path / "ratings.jsonl"
        keys = ("user", "item", "rating", "timestamp", "review")
        path.write_text("".join(json.dumps(dict(zip(keys, r))) + "\n" for r in ROWS))
    return path


def reviews(source: SourceConfig) -> tuple[list[str], DuplicateCounts]:
    data = load_source(source)
    return [r.review for r in data.interactions], data.duplicates


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize(
    "rule, dropped_lines",
    [
        ("latest", {"line 2", "line 4", "line 8"}),  # u1/a: line 7 is latest; u2/b: tie -> later line 9
        ("first", {"line 4", "line 7", "line 9"}),  # u1/a: tie at day 10 -> earlier line 2; u2/b: line 8
        ("keep", set()),
    ],
)
def test_each_rule_keeps_the_right_rows_and_counts_them(tmp_path, kind: str, rule: str, dropped_lines: set) -> None:
    kept, counts = reviews(SourceConfig(format=kind, path=str(write_table(tmp_path, kind)), duplicates=rule))
    assert kept == [r[4] for r in ROWS if r[4] not in dropped_lines]  # survivors stay in file order
    assert counts == DuplicateCounts(rule=rule, dropped=len(dropped_lines), **COUNTS)


def test_latest_is_the_default_and_keeps_the_re_rating(tmp_path) -> None:
    data = load_source(SourceConfig(format="csv", path=str(write_table(tmp_path, "csv"))))
    (u1a,) = [r for r in data.interactions if (r.user, r.item) == ("u1", "a")]
    assert (u1a.rating, u1a.timestamp, u1a.review) == (2.0, 12 * DAY, "line 7")
    assert data.duplicates.rule == "latest" and data.origin is None  # line numbers are released


@pytest.mark.parametrize("kind, first, again", [("csv", 2, 4), ("jsonl", 1, 3)])
def test_error_rule_names_the_file_the_pair_and_both_lines(tmp_path, kind: str, first: int, again: int) -> None:
    path = write_table(tmp_path, kind)
    with pytest.raises(DataFormatError) as err:
        load_source(SourceConfig(format=kind, path=str(path), duplicates="error"))
    assert err.value.path == str(path) and err.value.line == again
    message = str(err.value)
    assert f"{path}, line {again}:" in message and f"first on line {first}" in message
    assert "user 'u1' and item 'a'" in message and "--data.source.duplicates" in message


def test_error_rule_passes_a_file_without_repeats(tmp_path) -> None:
    path = tmp_path / "clean.csv"
    path.write_text("user,item,rating,timestamp\nu1,a,4,1\nu1,b,3,1\nu2,a,5,2\n")
    data = load_source(SourceConfig(format="csv", path=str(path), duplicates="error"))
    assert len(data.interactions) == 3 and data.duplicates == DuplicateCounts(rule="error")


def test_unknown_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="duplicates must be one of latest, first, keep, error"):
        SourceConfig(format="csv", path="x.csv", duplicates="newest")


# ---------------------------------------------------------------- leave-last: the test rating's copy


def amazon_like(tmp_path: Path) -> Path:
    """Four users; each rates 6 items on 6 days and the last one 3 times (3 variants, one review, one day)."""
    lines = []
    for u in range(4):
        for k in range(6):
            copies = 3 if k == 5 else 1
            for _ in range(copies):
                lines.append(f"U{u},I{(u + k) % 8},{1 + (u + k) % 5},{(100 + k) * DAY}")
    path = tmp_path / "reviews.csv"
    path.write_text("user,item,rating,timestamp\n" + "\n".join(lines) + "\n")
    return path


def leaked_test_pairs(source: SourceConfig) -> list[tuple[str, str]]:
    """Test (user, item) pairs that are also the target of a train or validation sample."""
    data = load_source(source)
    table = build_samples(data, SampleConfig(min_history=0))
    pair = lambda p: (data.interactions[table.target[p]].user, data.interactions[table.target[p]].item)  # noqa: E731
    test = {pair(p) for p, s in enumerate(table.split) if s == "test"}
    return sorted({pair(p) for p, s in enumerate(table.split) if s != "test"} & test)


def test_leave_last_no_longer_puts_a_copy_of_the_test_rating_in_train(tmp_path) -> None:
    path = str(amazon_like(tmp_path))
    assert len(leaked_test_pairs(SourceConfig(format="csv", path=path, duplicates="keep"))) == 4  # the bug
    assert leaked_test_pairs(SourceConfig(format="csv", path=path)) == []
    counts = load_source(SourceConfig(format="csv", path=path)).duplicates
    assert counts == DuplicateCounts(rule="latest", pairs=4, repeated=8, exact=8, dropped=8)


# ---------------------------------------------------------------- Amazon: one review per product variant


def test_amazon_2018_per_variant_copies(tmp_path) -> None:
    def review(user: str, asin: str, stars: float, when: int, fmt: str) -> str:
        obj = {"reviewerID": user, "asin": asin, "overall": stars, "unixReviewTime": when, "style": {"Format:": fmt}}
        return json.dumps({**obj, "summary": "Great", "reviewText": f"as {fmt}"})

    lines = [
        review("A1", "B1", 5.0, 1_500_000_000, "Audio CD"),
        review("A2", "B1", 3.0, 1_400_000_000, "Audio CD"),
        review("A1", "B1", 5.0, 1_500_000_000, "MP3 Music"),
        review("A1", "B1", 5.0, 1_500_000_000, "Vinyl"),
        review("A1", "B2", 4.0, 1_400_000_000, "Audio CD"),
    ]
    path = tmp_path / "Digital_Music_5.json"
    path.write_text("\n".join(lines) + "\n")
    data = load_source(SourceConfig(format="amazon-2018", path=str(path)))
    assert [(r.user, r.item, r.review) for r in data.interactions] == [
        ("A2", "B1", "Great. as Audio CD"),
        ("A1", "B1", "Great. as Vinyl"),  # the tie goes to the later line
        ("A1", "B2", "Great. as Audio CD"),
    ]
    assert data.duplicates == DuplicateCounts(rule="latest", pairs=1, repeated=2, exact=2, dropped=2)
    with pytest.raises(DataFormatError, match=r"line 3: .*'A1' and item 'B1' again, first on line 1"):
        load_source(SourceConfig(format="amazon-2018", path=str(path), duplicates="error"))


def test_amazon_2023_variants_share_a_parent_asin(tmp_path) -> None:
    def review(user: str, asin: str, stars: float, ms: int) -> str:
        obj = {"user_id": user, "asin": asin, "parent_asin": "P1", "rating": stars, "timestamp": ms}
        return json.dumps({**obj, "title": "", "text": asin})

    lines = [
        review("U1", "V1", 4.0, 1_588_687_728_100),
        review("U1", "V2", 4.0, 1_588_687_728_900),  # another variant, the same second: an exact copy
        review("U2", "V1", 2.0, 1_588_687_000_000),
        review("U1", "V3", 2.0, 1_588_700_000_000),  # U1 re-rates later: kept by 'latest'
    ]
    path = tmp_path / "CDs_and_Vinyl.jsonl"
    path.write_text("\n".join(lines) + "\n")
    latest = load_source(SourceConfig(format="amazon-2023", path=str(path)))
    assert [(r.user, r.rating, r.review) for r in latest.interactions] == [("U2", 2.0, "V1"), ("U1", 2.0, "V3")]
    assert latest.duplicates == DuplicateCounts(rule="latest", pairs=1, repeated=2, exact=1, dropped=2)
    first = load_source(SourceConfig(format="amazon-2023", path=str(path), duplicates="first"))
    assert [(r.user, r.rating, r.review) for r in first.interactions] == [("U1", 4.0, "V1"), ("U2", 2.0, "V1")]


# ---------------------------------------------------------------- the synthetic set, the cache


def test_the_synthetic_set_has_no_repeats() -> None:
    data = load_source(SourceConfig(duplicates="error"))  # would raise at the first repeat
    assert data.duplicates == DuplicateCounts(rule="error") and len(data.interactions) > 0


def test_a_changed_rule_never_hits_an_old_cache_entry(tmp_path) -> None:
    source = SourceConfig(format="csv", path=str(write_table(tmp_path, "csv")))
    samples, cache = SampleConfig(min_history=0), tmp_path / "cache"
    latest, _, hit = load_or_build(source, samples, cache)
    assert not hit and len(latest.interactions) == len(ROWS) - 3
    kept, _, hit = load_or_build(dataclasses.replace(source, duplicates="keep"), samples, cache)
    assert not hit and len(kept.interactions) == len(ROWS) and kept.duplicates.rule == "keep"
    again, _, hit = load_or_build(source, samples, cache)
    assert hit and again.interactions == latest.interactions
    assert again.duplicates == latest.duplicates == DuplicateCounts(rule="latest", dropped=3, **COUNTS)
