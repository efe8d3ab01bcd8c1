"""Choose the compact rule teacher's constants on validation samples only.

The compact prompt states count-shrunk user and item scores (`prompts.scores`), and the rule teacher
rounds their sum up from a fraction (`rationales.compact_rationale`). This script grid-searches
`prompt.user_shrink`, `prompt.item_shrink` and `prompt.round_up_at` for the lowest MAE on a config's
validation samples (every one of them, not the config's cap), prints the best settings and writes
JSON. Test samples are never read here: `reczero baselines` scores the chosen teacher on test as
`teacher_rule`.

    python benchmarks/tune_teacher.py --config configs/ml100k-sft.yaml --path ../shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import yaml

from reczero.data.datamodule import RatingDataModule
from reczero.data.render import prompt_input
from reczero.data.samples import SampleConfig
from reczero.data.sources import SourceConfig
from reczero.prompts import scores
from reczero.scale import round_up_from

USER_SHRINK = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0)
ITEM_SHRINK = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0)
ROUND_UP_AT = (0.5, 0.6, 0.7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--path", help="data folder (overrides the config's data.source.path)")
    ap.add_argument("--output", default="benchmarks/results/teacher/tune_teacher.json")
    args = ap.parse_args()
    data = yaml.safe_load(Path(args.config).read_text())["data"]
    source = dict(data["source"], **({"path": args.path} if args.path else {}))
    samples = dict(data.get("samples", {}))
    samples["max_samples"] = {k: v for k, v in samples.get("max_samples", {}).items() if k != "validation"}
    dm = RatingDataModule(source=SourceConfig(**source), samples=SampleConfig(**samples))
    dm.setup()
    typical = dm.typical_rating
    positions = dm.positions("validation")
    inputs = [prompt_input(dm.data, dm.table, pos) for pos in positions]
    truth = np.array([dm.data.interactions[dm.table.target[pos]].rating for pos in positions])
    scale = dm.scale
    start = time.perf_counter()
    rows = []
    for user_shrink, item_shrink in itertools.product(USER_SHRINK, ITEM_SHRINK):
        totals = [scores(inp, typical, user_shrink, item_shrink).total for inp in inputs]
        for round_up_at in ROUND_UP_AT:
            pred = np.array([round_up_from(t, round_up_at, scale.low, scale.high, scale.step) for t in totals])
            rows.append(
                {
                    "user_shrink": user_shrink,
                    "item_shrink": item_shrink,
                    "round_up_at": round_up_at,
                    "valid_mae": float(np.abs(pred - truth).mean()),
                }
            )
    best = min(rows, key=lambda r: r["valid_mae"])  # first of equals: grid order
    plain = next(r for r in rows if r["user_shrink"] == 0 and r["item_shrink"] == 0 and r["round_up_at"] == 0.5)
    result = {
        "command": f"python benchmarks/tune_teacher.py --config {args.config}",
        "data": source.get("format"),
        "n_validation": len(positions),
        "typical": typical,
        "best": best,
        "no_shrink_half_up": plain,
        "grid": rows,
        "seconds": time.perf_counter() - start,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(positions)} validation samples, typical rating {typical:.3f}")
    print("| setting | user_shrink | item_shrink | round_up_at | valid MAE |\n|---|---:|---:|---:|---:|")
    for name, r in (("chosen", best), ("no shrinkage, halves up", plain)):
        print(
            f"| {name} | {r['user_shrink']:g} | {r['item_shrink']:g} | {r['round_up_at']:g} | {r['valid_mae']:.4f} |"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
