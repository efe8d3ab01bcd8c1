"""`reczero report`'s plots and its reader of TensorBoard scalars. matplotlib (the `plot` extra) and
tensorboard's event reader are imported when used, so the table needs neither."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reczero.metrics import PairedDifference

if TYPE_CHECKING:  # the table's row type, for the annotations only
    from reczero.evaluation.report import Row

CURVES = ("train/reward", "train/format_rate", "val/mae", "val/format_rate")


def read_scalars(run_dir: str | Path, tags=CURVES) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) from every TensorBoard event file under `run_dir` (later writes win a step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    merged: dict[str, dict[int, tuple[float, float]]] = {}
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag not in tags:
                continue
            points = merged.setdefault(tag, {})
            for event in acc.Scalars(tag):
                if event.step not in points or points[event.step][0] <= event.wall_time:
                    points[event.step] = (event.wall_time, event.value)
    out = {}
    for tag, points in merged.items():
        steps = sorted(points)
        out[tag] = (steps, [points[s][1] for s in steps])
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mae(rows: list[Row], pairs, best: dict[str, Row | None], path: str | Path) -> Path:
    """Per split: MAE bars (best at the top) and, beside them, each method's MAE difference to the best
    baseline (`best`, per split) with its paired 95% interval (the forest the conclusions rest on)."""
    plt = _pyplot()
    splits = list(dict.fromkeys(r.split for r in rows))
    diffs = {(id(a), id(b)): d for a, b, d in pairs}
    height = max(2.5, 0.4 * max(sum(r.split == s for r in rows) for s in splits) + 1.4)
    fig, axes = plt.subplots(len(splits), 2, figsize=(14, height * len(splits)), squeeze=False)
    for (ax, fax), split in zip(axes, splits):
        part = sorted([r for r in rows if r.split == split], key=lambda r: r.mae, reverse=True)
        ref = best.get(split)
        colours = ["#d62728" if r.kind == "llm" else "#1f77b4" for r in part]
        bars = ax.barh(range(len(part)), [r.mae for r in part], color=colours)
        ax.set_yticks(range(len(part)), [r.method for r in part], fontsize=8)
        top = max(r.mae for r in part)
        for bar, r in zip(bars, part):
            text = f"{r.mae:.3f}" + (f"  parse {r.parse_rate:.0%}" if r.kind == "llm" else "")
            ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=7)
        ax.set_xlim(0, top * 1.35)
        ax.set_xlabel("MAE (lower is better)")
        ax.set_title(f"MAE on {split}, n={part[0].n}  (red: LLM, blue: classical)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        for y, r in enumerate(part):
            d = None if ref is None or r is ref else diffs.get((id(r), id(ref)))
            if d is None and ref is not None and (id(ref), id(r)) in diffs:
                f = diffs[(id(ref), id(r))]
                d = PairedDifference(-f.diff, -f.high, -f.low, f.count)
            if d is not None:
                colour = "#d62728" if r.kind == "llm" else "#1f77b4"
                fax.errorbar(d.diff, y, xerr=[[d.diff - d.low], [d.high - d.diff]], fmt="o", color=colour, capsize=3)
        fax.axvline(0, color="black", linewidth=0.8)
        fax.set_yticks(range(len(part)), [""] * len(part))
        fax.set_ylim(-0.5, len(part) - 0.5)
        fax.set_xlabel(f"MAE - MAE({ref.method if ref else '-'}), paired 95% interval")
        fax.set_title("difference to the best baseline (left of 0: better)", fontsize=10)
        fax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_pairs(rows: list[Row], pairs, path: str | Path) -> Path:
    """One heatmap per split: cell (A, B) = MAE(A) - MAE(B), its interval in the cell, bold where it excludes 0."""
    plt = _pyplot()
    splits = [s for s in dict.fromkeys(r.split for r in rows) if any(a.split == s for a, _, _ in pairs)]
    size = max(len([r for r in rows if r.split == s]) for s in splits)
    fig, axes = plt.subplots(1, len(splits), figsize=(1.1 * size * len(splits) + 3, 0.8 * size + 2), squeeze=False)
    for ax, split in zip(axes[0], splits):
        part = sorted([r for r in rows if r.split == split and r.errors is not None], key=lambda r: r.mae)
        index = {id(r): i for i, r in enumerate(part)}
        grid = [[0.0] * len(part) for _ in part]
        cells: dict[tuple[int, int], PairedDifference] = {}
        for a, b, d in pairs:
            if a.split != split or id(a) not in index or id(b) not in index:
                continue
            i, j = index[id(a)], index[id(b)]
            cells[(i, j)] = d
            cells[(j, i)] = PairedDifference(-d.diff, -d.high, -d.low, d.count)
        for (i, j), d in cells.items():
            grid[i][j] = d.diff
        bound = max((abs(d.diff) for d in cells.values()), default=1.0) or 1.0
        ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound)
        for (i, j), d in cells.items():
            weight = "bold" if d.excludes_zero else "normal"
            label = f"{d.diff:+.3f}\n[{d.low:+.3f},\n{d.high:+.3f}]"
            ax.text(j, i, label, ha="center", va="center", fontsize=6, fontweight=weight)
        names = [r.method for r in part]
        ax.set_xticks(range(len(part)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(part)), names, fontsize=7)
        ax.set_title(f"MAE(row) - MAE(column) on {split}, paired 95% CI (bold: excludes 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _running_mean(values: list[float], k: int) -> list[float]:
    """Mean over a centred window of k points (shorter at the ends)."""
    half = k // 2
    return [
        sum(values[max(0, i - half) : i + half + 1]) / len(values[max(0, i - half) : i + half + 1])
        for i in range(len(values))
    ]


def plot_training(runs: dict[str, dict], path: str | Path) -> Path:
    """A 2x2 grid of the `CURVES` against the step, one line per run."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    colours = {name: f"C{i % 10}" for i, name in enumerate(runs)}  # one colour per run in every panel
    for ax, tag in zip(axes.flat, CURVES):
        drawn = False
        for name, curves in runs.items():
            if tag not in curves or not curves[tag][0]:
                continue
            steps, values = curves[tag]
            if tag.startswith("val/") or len(steps) < 15:
                ax.plot(steps, values, marker="o", markersize=4, color=colours[name], label=name)
            else:  # noisy per-step values: faint raw line, a centred running mean on top
                ax.plot(steps, values, color=colours[name], alpha=0.25, linewidth=1)
                k = max(3, len(values) // 15)
                ax.plot(
                    steps, _running_mean(values, k), color=colours[name], linewidth=2, label=f"{name} (mean of {k})"
                )
            drawn = True
        ax.set_title(tag + (" (lower is better)" if tag.endswith("mae") else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if tag.endswith("format_rate"):
            ax.set_ylim(-0.05, 1.05)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
