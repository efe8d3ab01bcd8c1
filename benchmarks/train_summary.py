"""Summarise a finished training run from its TensorBoard events: what the README reports.

    python benchmarks/train_summary.py checkpoints/grpo-synthetic [--name grpo-synthetic] [--wall-seconds S]

Prints a table (validation before / after, training reward and format rate over the first and last
steps, step time) and writes benchmarks/results/train_<name>.json. `--wall-seconds` records the
run's measured wall time (e.g. from `/usr/bin/time` or `time make train-grpo`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

RESULTS = Path(__file__).parent / "results"
VAL = ("val/reward", "val/format_rate", "val/parse_rate", "val/mae", "val/rmse", "val/copy_rate", "val/grounded_rate")


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run.glob("**/events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def window_mean(series: list[tuple[int, float]], first: bool, n: int) -> float:
    values = [v for _, v in (series[:n] if first else series[-n:])]
    return statistics.fmean(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default=None)
    ap.add_argument("--wall-seconds", type=float, default=None)
    ap.add_argument("--window", type=int, default=5, help="steps averaged at the start and the end")
    args = ap.parse_args()
    s = scalars(args.run)
    name = args.name or args.run.name
    val = {tag: {"first": s[tag][0], "last": s[tag][-1]} for tag in VAL if tag in s}
    train = {
        tag: {
            "first_steps_mean": window_mean(s[tag], True, args.window),
            "last_steps_mean": window_mean(s[tag], False, args.window),
        }
        for tag in (
            "train/reward",
            "train/format_rate",
            "train/parse_rate",
            "train/sampled_mae",
            "train/completion_len_mean",
            "train/copy_rate",
            "train/grounded_rate",
        )
        if tag in s
    }
    steps = len(s.get("train/step_seconds", []))
    step_times = [v for _, v in s.get("train/step_seconds", [])]
    result = {
        "run": str(args.run),
        "steps": steps,
        "validation": val,
        "train": train,
        "median_step_seconds": statistics.median(step_times) if step_times else None,
        "median_generation_seconds": statistics.median(v for _, v in s["train/generation_seconds"]) if steps else None,
        "median_optimization_seconds": statistics.median(v for _, v in s["train/optimization_seconds"])
        if steps
        else None,
        "wall_seconds": args.wall_seconds,
    }
    print(f"| {name} | at step | reward | format rate | parse rate | MAE | RMSE | copy rate | grounded |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for when in ("first", "last"):
        row = [val.get(t, {}).get(when, (None, float("nan"))) for t in VAL]
        step = row[0][0] if row[0][0] is not None else "-"
        print(f"| validation | {step} | " + " | ".join(f"{v[1]:.3f}" for v in row) + " |")
    for tag, vals in train.items():
        print(
            f"- {tag}: first {args.window} steps {vals['first_steps_mean']:.3f}, last {args.window} steps {vals['last_steps_mean']:.3f}"
        )
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731  (SFT runs log no step time)
    print(
        f"- steps {steps}, median step {fmt(result['median_step_seconds'], '.1f')} s, wall {fmt(args.wall_seconds, '.0f')} s"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"train_{name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
