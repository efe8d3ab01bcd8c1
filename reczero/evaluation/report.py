"""`reczero report`: one markdown table, paired intervals and PNG plots from evaluation results and runs.

Inputs:
  - `--inputs`: JSON files written by `reczero evaluate --output` (`*.metrics.json`, kind "evaluate")
    and `reczero baselines --output` (kind "baselines");
  - `--runs`: training run folders; every TensorBoard event file under each is read.
Outputs in `--out`: `report.md`, `mae.png` (MAE per method and its difference to the best baseline
with a 95% interval), `pairs.png` (every pair's MAE difference) and `training.png` (train/reward,
train/format_rate, val/mae, val/format_rate against the step, one line per run).

Comparisons stay on the same samples: on a split an LLM was evaluated on, every method is scored on
the samples ALL the LLM evaluations share (baselines from the per-sample predictions in their JSON),
and each pair of methods gets the MAE difference with a paired bootstrap 95% interval
(`metrics.paired_bootstrap`: samples are redrawn as pairs, so the two methods' errors stay matched).
An expected-rating evaluation also reports the greedy ratings of the same pass as a row of its own.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from reczero.evaluation.plots import plot_mae, plot_pairs, plot_training, read_scalars
from reczero.metrics import PairedDifference, paired_bootstrap


@dataclass
class Row:
    """One method on one split. errors: its absolute error per comparison sample (None: no per-sample data)."""

    method: str
    kind: str  # "llm" | "baseline"
    split: str
    mae: float
    rmse: float
    parse_rate: float | None
    format_rate: float | None
    n: int
    note: str = ""
    copy_rate: float | None = None
    grounded_rate: float | None = None
    errors: list[float] | None = field(default=None, repr=False)


def load_inputs(paths: list[str | Path]) -> list[dict]:
    out = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("kind") not in ("evaluate", "baselines"):
            raise ValueError(f"{path}: not an evaluate or baselines JSON (no kind 'evaluate' / 'baselines')")
        data["_path"] = str(path)
        out.append(data)
    return out


def _scores(errors: list[float]) -> tuple[float, float]:
    return sum(errors) / len(errors), math.sqrt(sum(e * e for e in errors) / len(errors))


def _llm_rows(data: dict, keys: list[str] | None) -> list[Row]:
    """The evaluation's row (and, in expected mode, its greedy twin), on `keys` when it has per-sample scores."""
    m = data["metrics"]
    part = "" if data["evaluated"] == data["split_size"] else f"{data['evaluated']} of {data['split_size']} samples"
    note = "; ".join(x for x in (part, f"{m['fallbacks']} fallbacks" if m.get("fallbacks") else "") if x)
    flags = (m["parse_rate"], m["format_rate"])
    rates = dict(copy_rate=m.get("copy_rate"), grounded_rate=m.get("grounded_rate"))
    if keys is None or "scored" not in data:
        return [Row(data["name"], "llm", data["split"], m["mae"], m["rmse"], *flags, m["count"], note, **rates)]
    where = {k: i for i, k in enumerate(data["sample_keys"])}
    truth = [data["targets"][where[k]] for k in keys]
    rows = []
    variants = [(data["name"], data["scored"], flags)]
    if "scored_greedy" in data:
        greedy = data["metrics_greedy"]
        name = data["name"].replace(" [expected]", "") + " [greedy, same pass]"
        variants.append((name, data["scored_greedy"], (greedy["parse_rate"], m["format_rate"])))
    for name, scored, (parse, fmt) in variants:
        errors = [abs(scored[where[k]] - t) for k, t in zip(keys, truth)]
        rows.append(Row(name, "llm", data["split"], *_scores(errors), parse, fmt, len(keys), note, **rates))
        rows[-1].errors = errors
    return rows


def _baseline_rows(data: dict, split: str, keys: list[str] | None = None) -> list[Row]:
    """Rows of every baseline on `split`, on the samples `keys` (None: all of the split's)."""
    prefix = "valid" if split == "validation" else "test"
    samples = data["samples"][split]
    where = {k: i for i, k in enumerate(samples["keys"])}
    pick = [where[k] for k in (keys if keys is not None else samples["keys"])]
    note = f"same {len(pick)} samples as the LLM rows" if keys is not None and len(pick) < len(where) else ""
    rows = []
    for res in data["results"]:
        preds, truth = res[f"{prefix}_pred"], samples["truth"]
        errors = [abs(preds[i] - truth[i]) for i in pick]
        rows.append(Row(res["name"], "baseline", split, *_scores(errors), 1.0, None, len(pick), note))
        rows[-1].errors = errors
    return rows


def table_rows(inputs: list[dict], methods: list[str] | None = None) -> list[Row]:
    """Per split: the LLM rows, then every baseline, all on the samples every LLM evaluation of the split shares."""
    llm = [d for d in inputs if d["kind"] == "evaluate"]
    base = [d for d in inputs if d["kind"] == "baselines"]
    rows: list[Row] = []
    for split in list(dict.fromkeys(d["split"] for d in llm)) or ["test"]:
        mine = [d for d in llm if d["split"] == split]
        keys = None
        if mine and all("scored" in d for d in mine):
            shared = set.intersection(*(set(d["sample_keys"]) for d in mine))
            for data in base:
                shared &= set(data["samples"][split]["keys"])
            keys = [k for k in mine[0]["sample_keys"] if k in shared]
            if not keys:
                raise ValueError(f"the {split} evaluations share no sample: evaluate every method on the same samples")
        for d in mine:
            rows.extend(_llm_rows(d, keys))
        for data in base:
            rows.extend(_baseline_rows(data, split, keys))
    if methods:
        rows = [r for r in rows if r.method in methods]
    return rows


def reference(rows: list[Row]) -> Row | None:
    """The best baseline (lowest MAE) with per-sample errors: what every other row is compared with."""
    candidates = [r for r in rows if r.kind == "baseline" and r.errors is not None]
    return min(candidates, key=lambda r: r.mae) if candidates else None


def comparisons(rows: list[Row], n_boot: int = 2000, seed: int = 0) -> list[tuple[Row, Row, PairedDifference]]:
    """Every pair of rows of one split with per-sample errors on the same samples: MAE(a) - MAE(b) and its
    paired bootstrap 95% interval, a listed before b."""
    out = []
    for a, b in itertools.combinations([r for r in rows if r.errors is not None], 2):
        if a.split == b.split and len(a.errors) == len(b.errors):
            out.append((a, b, paired_bootstrap(a.errors, b.errors, n_boot=n_boot, seed=seed)))
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _interval(d: PairedDifference | None) -> str:
    if d is None:
        return "-"
    return f"{d.diff:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" + (" *" if d.excludes_zero else "")


def markdown(rows: list[Row], pairs, inputs: list[dict], images: list[str], runs: dict[str, dict]) -> str:
    best = {split: reference([r for r in rows if r.split == split]) for split in {r.split for r in rows}}
    against = {(id(a), id(b)): d for a, b, d in pairs}
    lines = ["# reczero report", ""]
    lines += [
        "| method | split | MAE | RMSE | parse rate | format rate | copy rate | grounded | n | MAE - best baseline [95% CI] | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ref = best.get(r.split)
        d = None if ref is None or ref is r else against.get((id(r), id(ref)))
        if d is None and ref is not None and ref is not r and (id(ref), id(r)) in against:
            flip = against[(id(ref), id(r))]
            d = PairedDifference(-flip.diff, -flip.high, -flip.low, flip.count, flip.level)
        lines.append(
            f"| {r.method} | {r.split} | {_fmt(r.mae)} | {_fmt(r.rmse)} | {_fmt(r.parse_rate, 3)} | "
            f"{_fmt(r.format_rate, 3)} | {_fmt(r.copy_rate, 3)} | {_fmt(r.grounded_rate, 3)} | {r.n} | "
            f"{'(best baseline)' if r is ref else _interval(d)} | {r.note} |"
        )
    lines.append("")
    notes = [f"Baselines ({Path(d['_path']).name}): {d['split']}" for d in inputs if d["kind"] == "baselines"]
    fallbacks = {d["fallback"] for d in inputs if d["kind"] == "evaluate"}
    notes += [f"LLM rows: {text}; MAE and RMSE include those fallbacks." for text in sorted(fallbacks)]
    notes.append("Parse rate: share of answers whose last rating block holds a number on the scale (1 for baselines).")
    notes.append(
        "Copy rate: answers whose reasoning copies the prompt's skeleton or one-shot example; grounded: answers that "
        "are no copy and name a fact of this prompt's user history and of the target item."
    )
    notes.append(
        "Intervals: paired bootstrap (2,000 resamples of the shared samples) of the MAE difference; * marks an "
        "interval that excludes 0. Negative: the first method is better."
    )
    lines += [f"- {n}" for n in notes]
    if pairs:
        lines += ["", "## Paired MAE differences", "", "| A | B | split | MAE(A) - MAE(B) [95% CI] | n |"]
        lines.append("|---|---|---|---|---:|")
        lines += [f"| {a.method} | {b.method} | {a.split} | {_interval(d)} | {d.count} |" for a, b, d in pairs]
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


def write_report(
    inputs: list[str | Path], runs: list[str | Path], out: str | Path, methods: list[str] | None = None
) -> dict[str, Path]:
    """Write report.md (+ mae.png, pairs.png, training.png when there is something to plot) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_inputs(inputs)
    rows = table_rows(data, methods)
    pairs = comparisons(rows)
    curves = {}
    for run in runs:
        if not Path(run).is_dir():
            raise FileNotFoundError(f"run folder {run} does not exist")
        name = Path(run).resolve().name
        curves[name if name not in curves else str(run)] = read_scalars(run)
    written: dict[str, Path] = {}
    if rows:
        best = {split: reference([r for r in rows if r.split == split]) for split in {r.split for r in rows}}
        written["mae"] = plot_mae(rows, pairs, best, out / "mae.png")
    if pairs:
        written["pairs"] = plot_pairs(rows, pairs, out / "pairs.png")
    if any(curves.values()):
        written["training"] = plot_training(curves, out / "training.png")
    md = markdown(rows, pairs, data, [str(p) for p in written.values()], curves)
    written["report"] = out / "report.md"
    written["report"].write_text(md)
    return written


@dataclass
class ReportOptions:
    """`reczero report`'s options.

    Args:
        inputs: evaluate *.metrics.json and baselines JSON files.
        runs: training run folders (TensorBoard events inside).
        out: the output folder.
        methods: keep only these methods (names as in the table).
    """

    inputs: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    out: str | None = None
    methods: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("out is required: the folder the report is written to")
        if not self.inputs and not self.runs:
            raise ValueError("give --inputs and/or --runs")


def report_command(options: ReportOptions) -> dict[str, Path]:
    """One markdown table and PNG plots from evaluation results and training runs (needs the plot extra)."""
    written = write_report(options.inputs, options.runs, options.out, options.methods)
    report = (Path(options.out) / "report.md").read_text()
    print(
        report.split("\n## ", 1)[0].rstrip() + "\n"
    )  # the table and its notes; the pairwise sections stay in the file
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return written
