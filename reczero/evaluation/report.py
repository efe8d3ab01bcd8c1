"""`reczero report`: one markdown table and PNG plots from evaluation results and training runs.

Inputs:
  - `--inputs`: JSON files written by `reczero evaluate --output` (`*.metrics.json`, kind "evaluate")
    and `reczero baselines --output` (kind "baselines");
  - `--runs`: training run folders; every TensorBoard event file under each is read.
Outputs in `--out`: `report.md` (every method x MAE / RMSE / parse rate / format rate / n),
`mae.png` (MAE per method, one panel per split) and `training.png` (train/reward, train/format_rate,
val/mae, val/format_rate against the step, one line per run).

Comparisons stay on the same samples: a baseline is listed on each split an LLM was evaluated on,
and when an evaluation covered only part of a split (`--limit`), the baselines are scored again on
exactly those samples (rows marked "same N"), from the per-sample predictions in their JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

CURVES = ("train/reward", "train/format_rate", "val/mae", "val/format_rate")


@dataclass
class Row:
    method: str
    kind: str  # "llm" | "baseline"
    split: str
    mae: float
    rmse: float
    parse_rate: float | None
    format_rate: float | None
    n: int
    note: str = ""


def load_inputs(paths: list[str | Path]) -> list[dict]:
    out = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("kind") not in ("evaluate", "baselines"):
            raise ValueError(f"{path}: not an evaluate or baselines JSON (no kind 'evaluate' / 'baselines')")
        data["_path"] = str(path)
        out.append(data)
    return out


def _llm_row(data: dict) -> Row:
    m = data["metrics"]
    part = "" if data["evaluated"] == data["split_size"] else f"first {data['evaluated']} of {data['split_size']}"
    fallbacks = f"{m['fallbacks']} fallbacks" if m.get("fallbacks") else ""
    note = "; ".join(x for x in (part, fallbacks) if x)
    return Row(
        data["name"], "llm", data["split"], m["mae"], m["rmse"], m["parse_rate"], m["format_rate"], m["count"], note
    )


def _baseline_rows(data: dict, split: str, keys: list[str] | None = None) -> list[Row]:
    """Rows of every baseline on `split`; with `keys`, scored on those samples only."""
    prefix = "valid" if split == "validation" else "test"
    samples = data["samples"][split]
    pick = None
    if keys is not None:
        where = {k: i for i, k in enumerate(samples["keys"])}
        pick = [where[k] for k in keys]
    rows = []
    for res in data["results"]:
        if pick is None:
            mae, rmse, n, note = res[f"{prefix}_mae"], res[f"{prefix}_rmse"], res[f"n_{prefix}"], ""
        else:
            preds, truth = res[f"{prefix}_pred"], samples["truth"]
            errors = [preds[i] - truth[i] for i in pick]
            mae = sum(abs(e) for e in errors) / len(errors)
            rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
            n, note = len(pick), f"same {len(pick)} samples as the LLM rows"
        rows.append(Row(res["name"], "baseline", split, mae, rmse, 1.0, None, n, note))
    return rows


def table_rows(inputs: list[dict]) -> list[Row]:
    """LLM rows, then per split the baselines (full split, and on each partial LLM sample set)."""
    llm = [d for d in inputs if d["kind"] == "evaluate"]
    base = [d for d in inputs if d["kind"] == "baselines"]
    rows = [_llm_row(d) for d in llm]
    splits = list(dict.fromkeys(d["split"] for d in llm)) or ["test"]
    for data in base:
        for split in splits:
            rows.extend(_baseline_rows(data, split))
            known = set(data["samples"][split]["keys"])
            seen: set[tuple[str, ...]] = set()
            for d in llm:
                keys = tuple(d.get("sample_keys") or ())
                if d["split"] != split or not keys or len(keys) == len(known) or keys in seen:
                    continue
                seen.add(keys)
                if set(keys) <= known:
                    rows.extend(_baseline_rows(data, split, list(keys)))
    return rows


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(rows: list[Row], inputs: list[dict], images: list[str], runs: dict[str, dict]) -> str:
    lines = ["# reczero report", ""]
    lines += [
        "| method | split | MAE | RMSE | parse rate | format rate | n | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.split} | {_fmt(r.mae)} | {_fmt(r.rmse)} | {_fmt(r.parse_rate, 3)} | "
            f"{_fmt(r.format_rate, 3)} | {r.n} | {r.note} |"
        )
    lines.append("")
    notes = []
    for d in inputs:
        if d["kind"] == "baselines":
            notes.append(f"Baselines ({Path(d['_path']).name}): {d['split']}")
    fallbacks = {d["fallback"] for d in inputs if d["kind"] == "evaluate"}
    notes += [f"LLM rows: {text}; MAE and RMSE include those fallbacks." for text in sorted(fallbacks)]
    notes.append("Parse rate: share of answers whose last rating block holds a number on the scale (1 for baselines).")
    lines += [f"- {n}" for n in notes]
    if runs:
        lines += ["", "## Training runs", "", "| run | steps | last train/reward | last val/mae | best val/mae |"]
        lines.append("|---|---:|---:|---:|---:|")
        for name, curves in runs.items():
            steps = max((s[-1] for s, _ in curves.values() if s), default=0)
            reward, val = curves.get("train/reward"), curves.get("val/mae")
            last_r = reward[1][-1] if reward and reward[1] else None
            last_v = val[1][-1] if val and val[1] else None
            best_v = min(val[1]) if val and val[1] else None
            lines.append(f"| {name} | {steps} | {_fmt(last_r, 3)} | {_fmt(last_v)} | {_fmt(best_v)} |")
    if images:
        lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in images]
    return "\n".join(lines) + "\n"


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


def plot_mae(rows: list[Row], path: str | Path) -> Path:
    """Horizontal bars of MAE, one panel per split, best at the top; LLM bars show their parse rate.

    When LLM rows cover only part of a split, the panel shows the baselines on those samples only.
    """
    plt = _pyplot()
    splits = list(dict.fromkeys(r.split for r in rows))
    height = max(
        2.5, 0.42 * max(sum(r.split == s and not r.note.startswith("same") for r in rows) for s in splits) + 1.3
    )
    fig, axes = plt.subplots(1, len(splits), figsize=(7.5 * len(splits), height), squeeze=False)
    for ax, split in zip(axes[0], splits):
        part = [r for r in rows if r.split == split]
        matched = [r for r in part if r.note.startswith("same")]
        if matched:  # LLM rows cover part of the split: compare only on the same samples
            part = [r for r in part if r.kind == "llm"] + matched
        part.sort(key=lambda r: r.mae, reverse=True)
        labels = [r.method + (f" ({r.note.split(' as')[0]})" if r.note.startswith("same") else "") for r in part]
        colours = ["#d62728" if r.kind == "llm" else "#1f77b4" for r in part]
        bars = ax.barh(range(len(part)), [r.mae for r in part], color=colours)
        ax.set_yticks(range(len(part)), labels, fontsize=9)
        top = max(r.mae for r in part)
        for bar, r in zip(bars, part):
            text = f"{r.mae:.3f}" + (f"  parse {r.parse_rate:.0%}, n={r.n}" if r.kind == "llm" else f"  n={r.n}")
            ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
        ax.set_xlim(0, top * 1.45)
        ax.set_xlabel("MAE (lower is better)")
        where = f"{split}, the LLM rows' samples" if matched else split
        ax.set_title(f"MAE on {where}  (red: LLM, blue: classical)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
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


def write_report(inputs: list[str | Path], runs: list[str | Path], out: str | Path) -> dict[str, Path]:
    """Write report.md (+ mae.png, training.png when there is something to plot) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_inputs(inputs)
    rows = table_rows(data)
    curves = {}
    for run in runs:
        if not Path(run).is_dir():
            raise FileNotFoundError(f"run folder {run} does not exist")
        name = Path(run).resolve().name
        curves[name if name not in curves else str(run)] = read_scalars(run)
    written: dict[str, Path] = {}
    if rows:
        written["mae"] = plot_mae(rows, out / "mae.png")
    if any(curves.values()):
        written["training"] = plot_training(curves, out / "training.png")
    md = markdown(rows, data, [str(p) for p in written.values()], curves)
    written["report"] = out / "report.md"
    written["report"].write_text(md)
    return written


def main(args: list[str]) -> dict[str, Path]:
    import argparse

    parser = argparse.ArgumentParser(prog="reczero report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="*", default=[], help="evaluate *.metrics.json and baselines JSON files")
    parser.add_argument("--runs", nargs="*", default=[], help="training run folders (TensorBoard events inside)")
    parser.add_argument("--out", required=True, help="output folder")
    cfg = parser.parse_args(args)
    if not cfg.inputs and not cfg.runs:
        parser.error("give --inputs and/or --runs")
    written = write_report(cfg.inputs, cfg.runs, cfg.out)
    print((Path(cfg.out) / "report.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return written
