"""Chronological samples: no leakage, exact histories and averages, splits, min_history and caps.

Property tests run over random small `InteractionData` (few users, items and timestamps, so ties
and repeat ratings of one item by one user are common) and compare `build_samples` with a
brute-force oracle written from the rules in `reczero/data/samples.py`. Hand-made cases pin the
exact histories. Profiles: ~60 examples per test by default, ``HYPOTHESIS_PROFILE=slow`` runs 1,000;
they are applied per test so other files keep their own settings.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reczero.data.samples import SPLITS, SampleConfig, SampleTable, assign_splits, build_samples, split_counts
from reczero.data.schema import SCALES, Interaction, InteractionData
from reczero.data.sources import SourceConfig, load_source

settings.register_profile(
    "reczero-samples-default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "reczero-samples-slow", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings.get_profile(
    "reczero-samples-slow" if os.environ.get("HYPOTHESIS_PROFILE") == "slow" else "reczero-samples-default"
)

# -- strategies -----------------------------------------------------------------------------------

_ROW = st.tuples(
    st.integers(0, 4),  # user
    st.integers(0, 5),  # item
    st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0]),
    st.integers(0, 6),  # few distinct timestamps: many ties
)


@st.composite
def interaction_data(draw) -> InteractionData:
    rows = draw(st.lists(_ROW, min_size=1, max_size=30))
    interactions = [
        Interaction(user=f"u{u}", item=f"i{i}", rating=r, timestamp=t, review=f"review of row {n}")
        for n, (u, i, r, t) in enumerate(rows)
    ]
    return InteractionData(name="random", interactions=interactions, items={}, scale=SCALES["1-5"])


@st.composite
def sample_configs(draw, caps: bool = False) -> SampleConfig:
    q1 = draw(st.sampled_from([0.1, 0.3, 0.5, 0.8]))
    q2 = draw(st.sampled_from([q for q in (0.4, 0.6, 0.9, 0.95) if q > q1]))
    max_samples = {}
    if caps:
        for split in SPLITS:
            if draw(st.booleans()):
                max_samples[split] = draw(st.integers(0, 6))
    return SampleConfig(
        user_history=draw(st.integers(0, 4)),
        item_history=draw(st.integers(0, 4)),
        min_history=draw(st.integers(0, 4)),
        split=draw(st.sampled_from(["leave_last", "time"])),
        time_quantiles=(q1, q2),
        max_users=draw(st.none() | st.integers(1, 5)) if caps else None,
        max_samples=max_samples,
        seed=draw(st.integers(0, 3)),
    )


# -- brute-force oracle ---------------------------------------------------------------------------


def oracle_splits(data: InteractionData, cfg: SampleConfig) -> list[str]:
    """Split of every interaction without user sampling: leave_last by (timestamp, item, index), or time cuts."""
    rows = data.interactions
    out = [""] * len(rows)
    if cfg.split == "leave_last":
        for user in {r.user for r in rows}:
            order = sorted(
                (i for i, r in enumerate(rows) if r.user == user), key=lambda i: (rows[i].timestamp, rows[i].item, i)
            )
            for back, idx in enumerate(reversed(order)):
                out[idx] = "test" if back == 0 else "validation" if back == 1 else "train"
    else:
        times = sorted(r.timestamp for r in rows)
        cut1 = times[min(len(times) - 1, int(cfg.time_quantiles[0] * len(times)))]
        cut2 = times[min(len(times) - 1, int(cfg.time_quantiles[1] * len(times)))]
        for idx, r in enumerate(rows):
            out[idx] = "train" if r.timestamp < cut1 else "validation" if r.timestamp < cut2 else "test"
    return out


def oracle_sample(data: InteractionData, idx: int, cfg: SampleConfig) -> dict:
    """What sample `idx` must hold: histories newest-K (oldest first, ties by index), averages over all earlier."""
    rows = data.interactions
    t, user, item = rows[idx].timestamp, rows[idx].user, rows[idx].item
    chrono = lambda js: sorted(js, key=lambda j: (rows[j].timestamp, j))  # noqa: E731
    earlier_user = chrono(j for j, r in enumerate(rows) if r.user == user and r.timestamp < t)
    earlier_item = chrono(j for j, r in enumerate(rows) if r.item == item and r.user != user and r.timestamp < t)
    mean = lambda js: sum(rows[j].rating for j in js) / len(js) if js else None  # noqa: E731
    return {
        "user_history": earlier_user[max(0, len(earlier_user) - cfg.user_history) :],
        "item_history": earlier_item[max(0, len(earlier_item) - cfg.item_history) :],
        "user_avg": mean(earlier_user),
        "user_count": len(earlier_user),
        "item_avg": mean(earlier_item),
        "item_count": len(earlier_item),
    }


def sample_row(table: SampleTable, pos: int) -> dict:
    return {name: column[pos] for name, column in table.columns().items()}


def rows_by_target(table: SampleTable) -> dict[int, dict]:
    return {t: sample_row(table, p) for p, t in enumerate(table.target)}


# -- properties -----------------------------------------------------------------------------------


@FUZZ
@given(data=interaction_data(), cfg=sample_configs())
def test_no_sample_sees_its_own_time_or_later(data: InteractionData, cfg: SampleConfig) -> None:
    rows = data.interactions
    table = build_samples(data, cfg)
    assert len(set(table.target)) == len(table.target)  # one sample per interaction: splits are disjoint
    for pos, idx in enumerate(table.target):
        target = rows[idx]
        user_hist, item_hist = table.user_history[pos], table.item_history[pos]
        assert idx not in user_hist and idx not in item_hist  # nor, therefore, its review
        assert all(rows[j].timestamp < target.timestamp for j in user_hist + item_hist)
        assert all(rows[j].user == target.user for j in user_hist)
        assert all(rows[j].item == target.item and rows[j].user != target.user for j in item_hist)
        assert len(user_hist) <= cfg.user_history and len(item_hist) <= cfg.item_history
        shown = {rows[j].review for j in user_hist + item_hist}
        assert target.review not in shown
        # oldest first
        for hist in (user_hist, item_hist):
            assert [rows[j].timestamp for j in hist] == sorted(rows[j].timestamp for j in hist)


@FUZZ
@given(data=interaction_data(), cfg=sample_configs())
def test_samples_match_brute_force(data: InteractionData, cfg: SampleConfig) -> None:
    rows = data.interactions
    table = build_samples(data, cfg)
    splits = oracle_splits(data, cfg)
    expected_targets, dropped = [], 0
    for idx in range(len(rows)):
        want = oracle_sample(data, idx, cfg)
        if len(want["user_history"]) + len(want["item_history"]) < cfg.min_history:
            dropped += 1
            continue
        expected_targets.append(idx)
    assert table.target == expected_targets  # in interaction order; min_history drops exactly the short ones
    assert table.dropped_short == dropped
    for pos, idx in enumerate(table.target):
        want = oracle_sample(data, idx, cfg)
        got = sample_row(table, pos)
        assert got["split"] == splits[idx]
        for key in ("user_history", "item_history", "user_count", "item_count"):
            assert got[key] == want[key], key
        for key in ("user_avg", "item_avg"):
            assert (got[key] is None) == (want[key] is None), key
            if want[key] is not None:
                assert got[key] == pytest.approx(want[key]), key
        assert len(got["user_history"]) + len(got["item_history"]) >= cfg.min_history


@FUZZ
@given(data=interaction_data(), cfg=sample_configs())
def test_split_rules(data: InteractionData, cfg: SampleConfig) -> None:
    rows = data.interactions
    splits = assign_splits(data, cfg)
    assert all(s in SPLITS for s in splits)  # no user sampling: every interaction is a target
    if cfg.split == "leave_last":
        by_user: dict[str, list[int]] = defaultdict(list)
        for idx, r in enumerate(rows):
            by_user[r.user].append(idx)
        for idxs in by_user.values():
            key = lambda i: (rows[i].timestamp, rows[i].item)  # noqa: E731
            test = [i for i in idxs if splits[i] == "test"]
            val = [i for i in idxs if splits[i] == "validation"]
            assert len(test) == 1 and len(val) == (1 if len(idxs) > 1 else 0)
            assert all(key(i) <= key(test[0]) for i in idxs)  # the user's last
            if val:
                assert all(key(i) <= key(val[0]) for i in idxs if i != test[0])  # second to last
    else:
        stamps = {s: [rows[i].timestamp for i, x in enumerate(splits) if x == s] for s in SPLITS}
        # chronological: train < validation < test (strict: a tie at a cut goes to the later split)
        for earlier, later in (("train", "validation"), ("validation", "test"), ("train", "test")):
            if stamps[earlier] and stamps[later]:
                assert max(stamps[earlier]) < min(stamps[later])
        assert stamps["test"]  # the last timestamp always lands in test
    table = build_samples(data, cfg)
    assert table.split == [splits[i] for i in table.target]


@FUZZ
@given(data=interaction_data(), cfg=sample_configs(caps=True))
def test_caps_are_seeded_subsets_within_limits(data: InteractionData, cfg: SampleConfig) -> None:
    rows = data.interactions
    table = build_samples(data, cfg)
    again = build_samples(data, cfg)
    assert table.columns() == again.columns() and table.dropped_short == again.dropped_short

    users = sorted({r.user for r in rows})
    chosen = {rows[i].user for i, s in enumerate(assign_splits(data, cfg)) if s is not None}
    assert len(chosen) == (len(users) if cfg.max_users is None else min(cfg.max_users, len(users)))
    assert {rows[i].user for i in table.target} <= chosen

    uncapped = build_samples(data, replace(cfg, max_users=None, max_samples={}))
    user_only = build_samples(data, replace(cfg, max_samples={}))
    # sampling users keeps exactly those users' samples, unchanged (histories still see every user)
    full = rows_by_target(uncapped)
    assert user_only.target == [t for t in uncapped.target if rows[t].user in chosen]
    assert all(full[t] == row for t, row in rows_by_target(user_only).items())
    # max_samples: at most the cap per split, a subset of the uncapped rows, original order kept
    before, after = split_counts(user_only), split_counts(table)
    for split in SPLITS:
        cap = cfg.max_samples.get(split)
        assert after[split] == (before[split] if cap is None else min(cap, before[split]))
    assert table.target == sorted(table.target)
    assert all(full[t] == row for t, row in rows_by_target(table).items())


def test_caps_change_with_the_seed() -> None:
    rows = [Interaction(f"u{u}", f"i{i}", 3.0, u * 100 + i) for u in range(20) for i in range(4)]
    data = InteractionData("grid", rows, {})
    pick = lambda seed: build_samples(data, SampleConfig(min_history=0, max_users=5, seed=seed)).target  # noqa: E731
    assert pick(0) == pick(0)
    assert len({tuple(pick(s)) for s in range(5)}) > 1
    cap = lambda seed: build_samples(data, SampleConfig(min_history=0, max_samples={"train": 7}, seed=seed))  # noqa: E731
    assert split_counts(cap(1))["train"] == 7 and cap(1).target == cap(1).target  # same seed, same pick
    assert len({tuple(cap(s).target) for s in range(5)}) > 1


# -- hand-made cases ------------------------------------------------------------------------------


def hand_data() -> InteractionData:
    """Ten rows with ties (t=30, 60, 70) and a repeat rating of item A by u2 (rows 1 and 5)."""
    spec = [
        ("u1", "A", 4, 10),  # 0
        ("u2", "A", 2, 20),  # 1
        ("u1", "B", 5, 30),  # 2
        ("u2", "B", 3, 30),  # 3  same second as row 2
        ("u1", "C", 1, 40),  # 4
        ("u2", "A", 5, 50),  # 5  u2 rates A again
        ("u3", "A", 3, 60),  # 6
        ("u1", "A", 2, 60),  # 7  same second as row 6
        ("u4", "Z", 4, 70),  # 8
        ("u4", "Y", 2, 70),  # 9  same second as row 8: item id breaks the tie ("Y" < "Z")
    ]
    rows = [Interaction(u, i, float(r), t, review=f"r{n}") for n, (u, i, r, t) in enumerate(spec)]
    return InteractionData("hand", rows, {})


def test_hand_made_histories_and_averages() -> None:
    table = build_samples(hand_data(), SampleConfig(min_history=0))
    got = rows_by_target(table)
    assert table.target == list(range(10)) and table.dropped_short == 0
    expect = {  # target: (split, user_history, item_history, user_avg, user_count, item_avg, item_count)
        0: ("train", [], [], None, 0, None, 0),
        1: ("train", [], [0], None, 0, 4.0, 1),
        2: ("train", [0], [], 4.0, 1, None, 0),  # row 3 rated B in the same second: not shown
        3: ("validation", [1], [], 2.0, 1, None, 0),
        4: ("validation", [0, 2], [], 4.5, 2, None, 0),
        5: ("test", [1, 3], [0], 2.5, 2, 4.0, 1),  # u2's own earlier rating of A (row 1) is not item history
        6: ("test", [], [0, 1, 5], None, 0, 11 / 3, 3),  # row 7 (same second) is not shown
        7: ("test", [0, 2, 4], [1, 5], 10 / 3, 3, 3.5, 2),  # row 6 (same second) and u1's own row 0 are not
        8: ("test", [], [], None, 0, None, 0),
        9: ("validation", [], [], None, 0, None, 0),
    }
    for target, (split, uh, ih, uavg, ucount, iavg, icount) in expect.items():
        row = got[target]
        assert (row["split"], row["user_history"], row["item_history"]) == (split, uh, ih), target
        assert (row["user_count"], row["item_count"]) == (ucount, icount), target
        assert row["user_avg"] == (None if uavg is None else pytest.approx(uavg)), target
        assert row["item_avg"] == (None if iavg is None else pytest.approx(iavg)), target


def test_hand_made_history_limits_keep_the_most_recent_oldest_first() -> None:
    table = build_samples(hand_data(), SampleConfig(user_history=2, item_history=2, min_history=0))
    got = rows_by_target(table)
    assert got[7]["user_history"] == [2, 4] and got[7]["user_count"] == 3  # the average still covers all 3
    assert got[6]["item_history"] == [1, 5] and got[6]["item_count"] == 3
    assert got[6]["item_avg"] == pytest.approx(11 / 3)
    none = rows_by_target(build_samples(hand_data(), SampleConfig(user_history=0, item_history=0, min_history=0)))
    assert all(r["user_history"] == [] and r["item_history"] == [] for r in none.values())
    assert none[7]["user_avg"] == pytest.approx(10 / 3)


def test_hand_made_min_history_drops() -> None:
    table = build_samples(hand_data(), SampleConfig(min_history=2))
    assert table.target == [4, 5, 6, 7]
    assert table.dropped_short == 6
    assert split_counts(table) == {"train": 0, "validation": 1, "test": 3}


def test_hand_made_time_split() -> None:
    # times sorted: 10 20 30 30 40 50 60 60 70 70; cut1 = times[5] = 50, cut2 = times[8] = 70
    cfg = SampleConfig(min_history=0, split="time", time_quantiles=(0.5, 0.8))
    table = build_samples(hand_data(), cfg)
    assert dict(zip(table.target, table.split)) == {
        **dict.fromkeys([0, 1, 2, 3, 4], "train"),
        **dict.fromkeys([5, 6, 7], "validation"),
        **dict.fromkeys([8, 9], "test"),
    }


def test_max_users_sampling_is_seeded() -> None:
    data = hand_data()
    cfg = SampleConfig(min_history=0, max_users=2, seed=3)
    splits = assign_splits(data, cfg)
    users = {data.interactions[i].user for i, s in enumerate(splits) if s is not None}
    assert len(users) == 2 and assign_splits(data, cfg) == splits
    table = build_samples(data, cfg)
    assert {data.interactions[t].user for t in table.target} == users


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_history": -1}, "user_history"),
        ({"item_history": -2}, "item_history"),
        ({"split": "random"}, "samples.split"),
        ({"time_quantiles": (0.0, 0.5)}, "time_quantiles"),
        ({"time_quantiles": (0.5, 1.0)}, "time_quantiles"),
        ({"time_quantiles": (0.6, 0.6)}, "time_quantiles"),
        ({"time_quantiles": (0.9, 0.8)}, "time_quantiles"),
        ({"max_samples": {"training": 5}}, "training"),
    ],
)
def test_sample_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SampleConfig(**kwargs)


def test_a_splits_capped_subset_does_not_depend_on_another_splits_cap():
    """Methods evaluated with the same test cap see the same test samples, whatever their validation cap."""
    data = load_source(SourceConfig(format="synthetic"))
    base = dict(split="time", max_samples={"test": 40})
    alone = build_samples(data, SampleConfig(**base))
    both = build_samples(data, SampleConfig(**{**base, "max_samples": {"validation": 7, "test": 40}}))
    pick = lambda table: [t for t, s in zip(table.target, table.split) if s == "test"]  # noqa: E731
    assert pick(alone) == pick(both) and len(pick(alone)) == 40
