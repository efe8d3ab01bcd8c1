"""The README's ML-100K tables from the pipeline's results (benchmarks/ml100k_pipeline.sh).

    python benchmarks/ml100k_tables.py [benchmarks/results/ml100k]

Prints two markdown tables: every method on the shared test samples with the MAE difference to the
best baseline (paired bootstrap 95% interval), and the pairs the README discusses. Uses
`reczero.evaluation.report`, so the numbers are the report's. Where the run's per-sample files are
there, it also prints how often each LLM's answers state their sum right and land on the rule's rating.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from reczero.evaluation.report import comparisons, load_inputs, reference, table_rows

METHODS = (
    "global_mean", "user_mean", "item_mean", "bias_baseline", "biased_mf", "item_knn", "teacher_rule",
    "item_mean (rounded)", "bias_baseline (rounded)", "biased_mf (rounded)", "item_knn (rounded)",
)  # fmt: skip
PAIRS_AGAINST = ("user_mean", "item_mean", "item_mean (rounded)", "bias_baseline", "teacher_rule")


def main(folder: Path) -> None:
    inputs = [folder / "baselines.json", *sorted(folder.glob("*.metrics.json"))]
    rows = [r for r in table_rows(load_inputs(inputs)) if r.split == "test"]
    llm = [r for r in rows if r.kind == "llm"]
    keep = llm + [r for name in METHODS for r in rows if r.method == name]
    pairs = comparisons(keep)
    best = reference(keep)
    diff = {(a.method, b.method): d for a, b, d in pairs}

    def ci(a: str, b: str) -> str:
        d = diff.get((a, b))
        if d is None and (b, a) in diff:
            f = diff[(b, a)]
            d = type(f)(-f.diff, -f.high, -f.low, f.count)
        star = " *" if d.low > 0 or d.high < 0 else ""
        return f"{d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{star}"

    print(f"n = {keep[0].n} shared test samples; best baseline: {best.method}\n")
    print(
        "| method | MAE | RMSE | parse rate | format rate | copy rate | grounded rate | MAE - best baseline [95% CI] |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in sorted(keep, key=lambda r: r.mae):
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        vs = "(best baseline)" if r is best else ci(r.method, best.method)
        print(
            f"| {r.method} | {r.mae:.3f} | {r.rmse:.3f} | {fmt(r.parse_rate)} | {fmt(r.format_rate)} | "
            f"{fmt(r.copy_rate)} | {fmt(r.grounded_rate)} | {vs} |"
        )
    print("\n| A | B | MAE(A) - MAE(B) [95% CI] |\n|---|---|---|")
    for a in llm:
        for b in PAIRS_AGAINST:
            if any(r.method == b for r in keep):
                print(f"| {a.method} | {b} | {ci(a.method, b)} |")
    names = [r.method for r in llm]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            print(f"| {a} | {b} | {ci(a, b)} |")


_NUM = r"([0-9]+(?:\.[0-9]+)?)"


def rule_agreement(folder: Path) -> None:
    """For each LLM's predictions JSONL: the share of answers whose match step states its sum correctly
    (``a +/- b = c``) and the share whose greedy rating equals the rule-based teacher's."""
    baselines = json.loads((folder / "baselines.json").read_text())
    if "samples" not in baselines:
        return
    rule = next(r for r in baselines["results"] if r["name"] == "teacher_rule")
    by_key = dict(zip(baselines["samples"]["test"]["keys"], rule["test_pred"]))
    for path in sorted(p.with_suffix("").with_suffix(".jsonl") for p in folder.glob("*.metrics.json")):
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        sums = same = 0
        for row in rows:
            m = re.search(rf"<match>[^<]*?{_NUM}\s*([+-])\s*{_NUM}\s*=\s*{_NUM}", row["completion"])
            if m:
                a, b, c = float(m.group(1)), float(m.group(3)), float(m.group(4))
                sums += abs(round(a + b if m.group(2) == "+" else a - b, 1) - c) < 0.051
            rate = re.search(rf"<rate>\s*{_NUM}", row["completion"])
            same += rate is not None and by_key.get(row["key"]) == float(rate.group(1))
        print(
            f"{path.stem}: sum stated correctly {sums / len(rows):.3f}, greedy rating = rule's {same / len(rows):.3f}"
        )


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/ml100k")
    main(out)
    rule_agreement(out)
