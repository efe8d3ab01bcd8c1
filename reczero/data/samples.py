"""Chronological, leakage-free training samples built from interaction data.

A sample is one target interaction plus what was known strictly before it:
  - the user's `user_history` most recent earlier interactions (oldest first),
  - the target item's `item_history` most recent earlier ratings by other users (oldest first),
  - the user's and the item's average rating over ALL earlier ratings.
"Earlier" means a timestamp strictly below the target's: ties (same second) are never shown, and
the target's own review never is. Samples whose user + item history holds fewer than
`min_history` records are dropped.

Splits: `leave_last` (per user: last interaction -> test, second to last -> validation, the rest
-> train, ordered by (timestamp, item id)) or `time` (a global cut at two time quantiles). Samples
refer to interactions by index, so the table stays small (ints only) and caches as Arrow.
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from dataclasses import dataclass, field

from reczero.data.schema import InteractionData

SPLITS = ("train", "validation", "test")


@dataclass
class SampleConfig:
    """How samples are cut from interactions. Used as `--data.samples.<field>` on the CLI."""

    user_history: int = 10
    item_history: int = 10
    min_history: int = 5
    split: str = "leave_last"  # leave_last | time
    time_quantiles: tuple[float, float] = (0.8, 0.9)  # `time` split: train < q1 <= validation < q2 <= test
    max_users: int | None = None  # sample this many users (seeded) before anything else
    max_samples: dict[str, int] = field(default_factory=dict)  # e.g. {"train": 512, "validation": 64}
    seed: int = 0

    def __post_init__(self) -> None:
        if self.user_history < 0 or self.item_history < 0:
            raise ValueError("samples.user_history and samples.item_history must be >= 0")
        if self.split not in ("leave_last", "time"):
            raise ValueError(f"samples.split must be 'leave_last' or 'time', got {self.split!r}")
        q1, q2 = self.time_quantiles
        if not 0.0 < q1 < q2 < 1.0:
            raise ValueError(f"samples.time_quantiles must satisfy 0 < q1 < q2 < 1, got {self.time_quantiles}")
        unknown = set(self.max_samples) - set(SPLITS)
        if unknown:
            raise ValueError(f"samples.max_samples has unknown split(s) {sorted(unknown)}; use {SPLITS}")


@dataclass
class SampleTable:
    """Column-wise samples: index lists point into `InteractionData.interactions`."""

    target: list[int] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    user_history: list[list[int]] = field(default_factory=list)
    item_history: list[list[int]] = field(default_factory=list)
    user_avg: list[float | None] = field(default_factory=list)
    user_count: list[int] = field(default_factory=list)
    item_avg: list[float | None] = field(default_factory=list)
    item_count: list[int] = field(default_factory=list)
    dropped_short: int = 0

    def __len__(self) -> int:
        return len(self.target)

    def columns(self) -> dict[str, list]:
        return {
            "target": self.target,
            "split": self.split,
            "user_history": self.user_history,
            "item_history": self.item_history,
            "user_avg": self.user_avg,
            "user_count": self.user_count,
            "item_avg": self.item_avg,
            "item_count": self.item_count,
        }


def assign_splits(data: InteractionData, cfg: SampleConfig) -> list[str | None]:
    """The split of every interaction (None: not a target, e.g. its user was not sampled)."""
    rows = data.interactions
    splits: list[str | None] = [None] * len(rows)
    by_user: dict[str, list[int]] = defaultdict(list)
    for idx, row in enumerate(rows):
        by_user[row.user].append(idx)
    users = sorted(by_user)
    if cfg.max_users is not None and cfg.max_users < len(users):
        users = sorted(random.Random(cfg.seed).sample(users, cfg.max_users))
    if cfg.split == "leave_last":
        for user in users:
            order = sorted(by_user[user], key=lambda i: (rows[i].timestamp, rows[i].item, i))
            for pos, idx in enumerate(order):
                back = len(order) - pos
                splits[idx] = "test" if back == 1 else "validation" if back == 2 else "train"
    else:
        times = sorted(r.timestamp for r in rows)
        cut1 = times[min(len(times) - 1, int(cfg.time_quantiles[0] * len(times)))]
        cut2 = times[min(len(times) - 1, int(cfg.time_quantiles[1] * len(times)))]
        for user in users:
            for idx in by_user[user]:
                t = rows[idx].timestamp
                splits[idx] = "train" if t < cut1 else "validation" if t < cut2 else "test"
    return splits


def build_samples(data: InteractionData, cfg: SampleConfig) -> SampleTable:
    """Every sample of every split, in interaction order; caps in `cfg.max_samples` applied (seeded)."""
    rows = data.interactions
    splits = assign_splits(data, cfg)
    user_idx = _chronological_index(rows, key="user")
    item_idx = _chronological_index(rows, key="item")
    user_sums = {u: _prefix_sums([rows[i].rating for i in idx]) for u, idx in user_idx.items()}
    item_sums = {it: _prefix_sums([rows[i].rating for i in idx]) for it, idx in item_idx.items()}
    user_times = {u: [rows[i].timestamp for i in idx] for u, idx in user_idx.items()}
    pair_rows: dict[tuple[str, str], list[int]] = defaultdict(list)  # repeat ratings of one item by one user
    for i, r in enumerate(rows):
        pair_rows[(r.user, r.item)].append(i)
    item_times = {it: [rows[i].timestamp for i in idx] for it, idx in item_idx.items()}

    table = SampleTable()
    for idx, split in enumerate(splits):
        if split is None:
            continue
        row = rows[idx]
        u_idx, i_idx = user_idx[row.user], item_idx[row.item]
        n_user = bisect.bisect_left(user_times[row.user], row.timestamp)  # strictly earlier only
        n_item = bisect.bisect_left(item_times[row.item], row.timestamp)
        user_hist = u_idx[max(0, n_user - cfg.user_history) : n_user] if cfg.user_history else []
        # the item's earlier ratings by OTHER users (the user may have rated it before, e.g. Amazon)
        own = [j for j in pair_rows[(row.user, row.item)] if rows[j].timestamp < row.timestamp]
        item_hist: list[int] = []
        if cfg.item_history:
            for j in reversed(i_idx[:n_item]):
                if rows[j].user != row.user:
                    item_hist.append(j)
                    if len(item_hist) == cfg.item_history:
                        break
            item_hist.reverse()
        if len(user_hist) + len(item_hist) < cfg.min_history:
            table.dropped_short += 1
            continue
        item_n = n_item - len(own)
        item_sum = item_sums[row.item][n_item] - sum(rows[j].rating for j in own)
        table.target.append(idx)
        table.split.append(split)
        table.user_history.append(user_hist)
        table.item_history.append(item_hist)
        table.user_avg.append(user_sums[row.user][n_user] / n_user if n_user else None)
        table.user_count.append(n_user)
        table.item_avg.append(item_sum / item_n if item_n else None)
        table.item_count.append(item_n)
    return _cap(table, cfg)


def _chronological_index(rows: list, key: str) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for idx, row in enumerate(rows):
        groups[getattr(row, key)].append(idx)
    for idx_list in groups.values():
        idx_list.sort(key=lambda i: (rows[i].timestamp, i))
    return groups


def _prefix_sums(values: list[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


def _cap(table: SampleTable, cfg: SampleConfig) -> SampleTable:
    """Keep at most `cfg.max_samples[split]` samples per split: a seeded sample, in original order.

    Each split draws from its own generator, so one split's subset never depends on another's cap
    (every method evaluated with the same test cap and seed sees the same test samples)."""
    if not cfg.max_samples:
        return table
    keep: list[int] = []
    for split in SPLITS:
        rng = random.Random(f"{cfg.seed}:{split}")
        positions = [p for p, s in enumerate(table.split) if s == split]
        cap = cfg.max_samples.get(split)
        if cap is not None and cap < len(positions):
            positions = sorted(rng.sample(positions, cap))
        keep.extend(positions)
    keep.sort()
    capped = SampleTable(dropped_short=table.dropped_short)
    for name, column in table.columns().items():
        getattr(capped, name).extend(column[p] for p in keep)
    return capped


def split_counts(table: SampleTable) -> dict[str, int]:
    return {s: sum(1 for x in table.split if x == s) for s in SPLITS}
