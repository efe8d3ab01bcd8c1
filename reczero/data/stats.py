"""`reczero data stats` and `reczero data preview`: what a data configuration turns into."""

from __future__ import annotations

import statistics
import time
from collections import Counter

from reczero.data.datamodule import RatingDataModule
from reczero.data.render import prompt_input
from reczero.data.samples import split_counts


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"mean {statistics.fmean(values):.1f}, median {pick(0.5):g}, p95 {pick(0.95):g}, max {values[-1]:g}"


def data_stats(
    dm: RatingDataModule, tokenizer=None, prompt_splits: tuple[str, ...] = ("train", "validation", "test")
) -> dict:
    """Counts, histogram, split sizes, history lengths and (with a tokenizer) prompt token lengths."""
    t0 = time.perf_counter()
    dm.setup()
    build_seconds = time.perf_counter() - t0
    data, table = dm.data, dm.table
    rows = data.interactions
    out = {
        "dataset": data.name,
        "scale": data.scale.name,
        "interactions": len(rows),
        "users": len({r.user for r in rows}),
        "items": len({r.item for r in rows}),
        "items_with_metadata": len(data.items),
        "reviews": sum(1 for r in rows if r.review),
        "skipped_rows": data.skipped_rows,
        "rating_histogram": dict(sorted(Counter(r.rating for r in rows).items())),
        "samples": split_counts(table),
        "dropped_short_history": table.dropped_short,
        "user_history_len": _summary([len(h) for h in table.user_history]),
        "item_history_len": _summary([len(h) for h in table.item_history]),
        "load_and_build_seconds": round(build_seconds, 2),
    }
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
        out["max_prompt_tokens"] = dm.max_prompt_tokens
        out["render_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def format_stats(stats: dict) -> str:
    width = max(len(k) for k in stats)
    lines = []
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k:g}: {v}" if isinstance(k, float) else f"{k}: {v}" for k, v in value.items())
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)


def preview(dm: RatingDataModule, tokenizer, split: str = "train", count: int = 3, seed: int = 0) -> list[str]:
    """`count` rendered prompts of `split` (spread evenly over it), with their true ratings."""
    import random

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
