"""`reczero data stats` and `reczero data preview`: what a data configuration turns into.

Besides counts, `data stats` reports what can make an evaluation look better or worse than it is:
what the duplicate rule found and dropped, how many interactions share their timestamp with another
of the same user, and per split the share of samples whose prompt shows no user history. Prompts
show strictly earlier interactions only, so on coarse timestamps (a day) or tied ones most samples
can end up with none; `data stats` then warns.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass

from reczero.data.datamodule import RatingDataModule
from reczero.data.render import prompt_input
from reczero.data.samples import SPLITS, SampleTable, split_counts
from reczero.data.schema import Interaction, InteractionData


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"mean {statistics.fmean(values):.1f}, median {pick(0.5):g}, p95 {pick(0.95):g}, max {values[-1]:g}"


def data_stats(
    dm: RatingDataModule, tokenizer=None, prompt_splits: tuple[str, ...] = ("train", "validation", "test")
) -> dict:
    """Counts, duplicates and ties, histogram, split sizes, history lengths, warnings and (with a tokenizer)
    prompt token lengths; a JSON-ready dict (`format_stats` prints it)."""
    t0 = time.perf_counter()
    dm.setup()
    build_seconds = time.perf_counter() - t0
    data, table = dm.data, dm.table
    rows = data.interactions
    tied = same_time_share(rows)
    out = {
        "dataset": data.name,
        "scale": data.scale.name,
        "interactions": len(rows),
        "users": len({r.user for r in rows}),
        "items": len({r.item for r in rows}),
        "items_with_metadata": len(data.items),
        "reviews": sum(1 for r in rows if r.review),
        "skipped_rows": data.skipped_rows,
        "duplicates": dataclasses.asdict(data.duplicates),
        "same_time_share": round(tied, 4),
        "rating_histogram": dict(sorted(Counter(r.rating for r in rows).items())),
        "samples": split_counts(table),
        "dropped_short_history": table.dropped_short,
        "no_user_history_share": {s: round(v, 4) for s, v in no_user_history_share(table).items()},
        "user_history_len": _summary([len(h) for h in table.user_history]),
        "item_history_len": _summary([len(h) for h in table.item_history]),
        "load_and_build_seconds": round(build_seconds, 2),
    }
    out["warnings"] = warnings(data, table, tied)
    if tokenizer is not None:
        dm.set_tokenizer(tokenizer)
        renderer = dm.renderer
        t0 = time.perf_counter()
        lengths: list[float] = []
        for split in prompt_splits:
            positions = dm.positions(split)
            for start in range(0, len(positions), 1024):
                inputs = [prompt_input(data, table, p) for p in positions[start : start + 1024]]
                lengths.extend(f.num_tokens for f in renderer.render_many(inputs))
        out["prompt_tokens"] = _summary(lengths)
        out["prompts_rendered"] = renderer.stats.rendered
        out["prompts_shortened"] = renderer.stats.shortened
        out["max_prompt_tokens"] = dm.prompt.max_prompt_tokens
        out["render_seconds"] = round(time.perf_counter() - t0, 2)
    return out


NO_HISTORY_WARN = 0.5  # warn when more than this share of a split's samples show no user history


def same_time_share(rows: list[Interaction]) -> float:
    """Share of interactions whose user has another interaction with the same timestamp (0 when empty)."""
    per_user_time = Counter((r.user, r.timestamp) for r in rows)
    tied = sum(n for n in per_user_time.values() if n > 1)
    return tied / len(rows) if rows else 0.0


def no_user_history_share(table: SampleTable) -> dict[str, float]:
    """Per non-empty split, the share of samples with no strictly earlier interaction of their user."""
    total, empty = Counter(table.split), Counter(s for s, n in zip(table.split, table.user_count) if n == 0)
    return {s: empty[s] / total[s] for s in SPLITS if total[s]}


def warnings(data: InteractionData, table: SampleTable, tied: float) -> list[str]:
    """What makes the samples suspect: prompts mostly without user history, kept duplicates.

    `tied` is `same_time_share(data.interactions)`, named in the message as the likely cause.
    """
    out = []
    for split, share in no_user_history_share(table).items():
        if share > NO_HISTORY_WARN:
            out.append(
                f"{share:.1%} of the {split} samples show no user history (none of the user's interactions "
                f"is strictly earlier): likely coarse timestamps or ties (same_time_share {tied:.2f}); check "
                "the file's time resolution and --data.source.timestamp_unit"
            )
    dup = data.duplicates
    if dup.rule == "keep" and dup.repeated:
        out.append(
            f"{dup.repeated} repeated (user, item) interactions kept (--data.source.duplicates=keep): a "
            "leave-last split can put a copy of a test rating in train"
        )
    return out


def format_stats(stats: dict) -> str:
    """`key  value` lines, then one `WARNING: ...` line per warning."""
    stats = dict(stats)
    notes = stats.pop("warnings", [])
    width = max(len(k) for k in stats)
    lines = []
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k:g}: {v}" if isinstance(k, float) else f"{k}: {v}" for k, v in value.items())
        lines.append(f"{key.ljust(width)}  {value}")
    lines.extend(f"WARNING: {note}" for note in notes)
    return "\n".join(lines)


def preview(dm: RatingDataModule, tokenizer, split: str = "train", count: int = 3, seed: int = 0) -> list[str]:
    """`count` rendered prompts of `split` (spread evenly over it), with their true ratings."""
    dm.set_tokenizer(tokenizer)
    dm.setup()
    positions = dm.positions(split)
    chosen = sorted(random.Random(seed).sample(positions, min(count, len(positions))))
    out = []
    for pos in chosen:
        fitted = dm.renderer.render(prompt_input(dm.data, dm.table, pos))
        rating = dm.data.interactions[dm.table.target[pos]].rating
        header = (
            f"=== sample {pos} ({split}, {dm.sample_key(pos)}): true rating {rating:g}, {fitted.num_tokens} tokens"
        )
        header += ", shortened" if fitted.shortened else ""
        out.append(f"{header} ===\n{fitted.text}")
    return out


# -- CLI: reczero data stats | preview --------------------------------------------------------------
@dataclass
class StatsOptions:
    """`reczero data stats`' options.

    Args:
        tokens: also render and tokenise every prompt (with `data.tokenizer`, the policy's) for token counts.
    """

    tokens: bool = False


@dataclass
class PreviewOptions:
    """`reczero data preview`'s options.

    Args:
        split: which split to show prompts of.
        count: how many prompts.
        seed: which prompts (a seeded draw).
    """

    split: str = "train"
    count: int = 3
    seed: int = 0


def stats_command(data: RatingDataModule, options: StatsOptions) -> dict:
    """What a data configuration produces: counts, duplicates, ties, splits, history and prompt lengths."""
    stats = data_stats(data, data.tokenizer if options.tokens else None)
    print(format_stats(stats))
    return stats


def preview_command(data: RatingDataModule, options: PreviewOptions) -> list[str]:
    """Rendered prompts of a split, as the policy sees them."""
    shown = preview(data, data.tokenizer, options.split, options.count, options.seed)
    print("\n\n".join(shown))
    return shown
