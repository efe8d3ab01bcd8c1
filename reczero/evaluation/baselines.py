"""`reczero baselines`: the classical predictors tuned on validation and scored on test, on the LLM's split.

`run_baselines` tunes each predictor (`predictors`) on the validation split only and reports
validation and test MAE / RMSE in the same form as the LLM evaluation.

Protocol of `run_baselines`:
  1. fit every candidate of a method's grid on `train`, score it on the validation targets;
  2. keep the candidate with the lowest validation metric (`select_by`, MAE by default, the paper's
     headline metric; ties keep the earlier grid point);
  3. refit that candidate on `refit` rows and score it on the test targets.
Before step 3 the test ratings are only checked for count and finiteness; they never take part in
the choice. Every prediction is clipped to the rating scale; a "(rounded)" twin of each continuous
method rounds it to the scale's grid as well (an integer guess lowers MAE, as the LLM's do).

What the command (`baselines_command`, on the DataModule's split, see `protocol.baseline_split`) fits on:
  - `split: time` (the headline protocol): tuning fits on the training period (timestamps before
    the first cut) and scores the validation samples; the refit uses every interaction before the
    test period (training + validation periods, all of them, not only the validation samples).
    Every row a method learns from is strictly earlier than every test interaction, ties included.
  - `split: leave_last`: tuning fits on every user's ratings but their last two, the refit adds each
    user's second to last. NOT leakage-free for classical methods: another user's training rating can
    be later than a test interaction (on ML-100K, 901 of 943 test items have later training ratings).
    Use it for comparison with papers that report it, not as evidence that one method beats another.
It also scores four predictors that use exactly what each sample's prompt shows (`shown_predictors`):
the user's and the item's averages over all strictly earlier ratings, their bias combination and the
rule-based RecOne teacher. The LLM sees the same facts, so these are its like-for-like peers; the
fitted methods under the time split see less (nothing from the test period).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import time
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reczero.data.datamodule import RatingDataModule
from reczero.data.render import prompt_input
from reczero.evaluation.predictors import PREDICTORS, Predictor, TooLargeError, encode
from reczero.evaluation.protocol import baseline_split, split_description
from reczero.recone.teacher import teacher_for
from reczero.scale import round_to_scale, round_up_from

__all__ = ["DEFAULT_GRIDS", "BaselineResult", "format_table", "run_baselines"]


# Small validation grids, so that tuning every method stays a CPU job (README: the time on ML-100K).
DEFAULT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "global_mean": {},
    "user_mean": {},
    "item_mean": {},
    "bias_baseline": {"reg_user": [2.0, 5.0, 15.0, 30.0], "reg_item": [2.0, 5.0, 10.0, 25.0]},
    "biased_mf": {"factors": [16, 50], "reg": [0.02, 0.05, 0.1], "epochs": [20, 40]},
    "item_knn": {"k": [20, 40], "shrinkage": [100.0]},
}


@dataclass
class BaselineResult:
    """One method's chosen hyper-parameters and its scores (predictions clipped to the scale).

    valid_*: the chosen candidate fit on train, scored on validation. test_*: refit on train +
    validation, scored on test. fit_seconds: that refit plus its test predictions; search_seconds:
    the whole validation grid. valid_pred [n_valid] / test_pred [n_test]: the clipped predictions,
    in target order, for per-sample comparisons with an LLM.
    """

    name: str
    params: dict[str, Any]
    valid_mae: float
    valid_rmse: float
    test_mae: float
    test_rmse: float
    n_valid: int
    n_test: int
    fit_seconds: float
    search_seconds: float = 0.0
    n_candidates: int = 1
    valid_pred: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    test_pred: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)


def _errors(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    diff = pred - truth
    return float(np.abs(diff).mean()), float(math.sqrt((diff * diff).mean()))


def _candidates(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    for key in keys:
        if isinstance(grid[key], (str, bytes)) or not isinstance(grid[key], Sequence) or not grid[key]:
            raise ValueError(f"grid values must be non-empty lists, got {key}={grid[key]!r}")
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]


def _make(cls: type, params: Mapping[str, Any], seed: int) -> Predictor:
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"{cls.name} has no hyper-parameter {', '.join(unknown)}; it takes {', '.join(accepted) or 'none'}"
        )
    extra = {"seed": seed} if "seed" in accepted and "seed" not in params else {}
    return cls(**params, **extra)


def _truth(values: Sequence[float], targets: Sequence[Any], what: str) -> np.ndarray:
    truth = np.asarray(values, dtype=np.float64)
    if truth.shape != (len(targets),):
        raise ValueError(f"{what}: {len(truth)} ratings for {len(targets)} targets")
    if len(truth) == 0:
        raise ValueError(f"{what}: no targets")
    if not np.isfinite(truth).all():
        raise ValueError(f"{what}: ratings must be finite")
    return truth


def run_baselines(
    train: Sequence[tuple[Hashable, Hashable, float]],
    valid_targets: Sequence[tuple[Hashable, Hashable]],
    valid_truth: Sequence[float],
    test_targets: Sequence[tuple[Hashable, Hashable]],
    test_truth: Sequence[float],
    scale_low: float,
    scale_high: float,
    grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    seed: int = 0,
    select_by: str = "mae",
    refit: Sequence[tuple[Hashable, Hashable, float]] | None = None,
) -> list[BaselineResult]:
    """Tune each method on validation, refit, score on test (module docstring).

    train: (user, item, rating) rows before the validation interactions. refit: the rows the chosen
    candidate is refit on before the test (None: train + the validation targets). valid/test targets:
    (user, item) pairs with their true ratings in the same order. grids: method name (a key of
    `PREDICTORS`) -> {hyper-parameter: candidate values}; the methods named are run in that order
    ({} runs a method with its defaults); None runs `DEFAULT_GRIDS`. A method whose dense data
    would not fit (`TooLargeError`) is skipped with a warning. `seed` goes to seeded methods.
    """
    if not scale_low < scale_high:
        raise ValueError(f"need scale_low < scale_high, got {scale_low}, {scale_high}")
    if select_by not in ("mae", "rmse"):
        raise ValueError(f"select_by must be 'mae' or 'rmse', got {select_by!r}")
    grids = DEFAULT_GRIDS if grids is None else grids
    unknown = sorted(set(grids) - set(PREDICTORS))
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(PREDICTORS)}")
    valid_y = _truth(valid_truth, valid_targets, "validation")
    n_test = len(_truth(test_truth, test_targets, "test"))  # shape check only; values are read after selection
    fit_train, (valid_codes,), _, _ = encode(train, [valid_targets])
    full_rows = [*train, *((u, i, r) for (u, i), r in zip(valid_targets, valid_y))] if refit is None else refit
    fit_full, (test_codes,), _, _ = encode(full_rows, [test_targets])
    pick = 0 if select_by == "mae" else 1

    results = []
    for name, grid in grids.items():
        cls, candidates = PREDICTORS[name], _candidates(grid)
        start = time.perf_counter()
        best: tuple[float, dict[str, Any], np.ndarray] | None = None
        try:
            for params in candidates:
                model = _make(cls, params, seed).fit(fit_train)
                pred = np.clip(model.predict(*valid_codes), scale_low, scale_high)  # [n_valid]
                score = _errors(pred, valid_y)[pick]
                if best is None or score < best[0]:
                    best = (score, params, pred)
            search_seconds = time.perf_counter() - start
            start = time.perf_counter()
            final = _make(cls, best[1], seed).fit(fit_full)
            test_pred = np.clip(final.predict(*test_codes), scale_low, scale_high)  # [n_test]
            fit_seconds = time.perf_counter() - start
        except TooLargeError as err:
            warnings.warn(f"skipping {name}: {err}", stacklevel=2)
            continue
        test_y = np.asarray(test_truth, dtype=np.float64)  # first read of the test ratings
        valid_mae, valid_rmse = _errors(best[2], valid_y)
        test_mae, test_rmse = _errors(test_pred, test_y)
        results.append(
            BaselineResult(
                name=name,
                params=dict(best[1]),
                valid_mae=valid_mae,
                valid_rmse=valid_rmse,
                test_mae=test_mae,
                test_rmse=test_rmse,
                n_valid=len(valid_y),
                n_test=n_test,
                fit_seconds=fit_seconds,
                search_seconds=search_seconds,
                n_candidates=len(candidates),
                valid_pred=best[2],
                test_pred=test_pred,
            )
        )
    return results


ROUND_UP_AT = (0.5, 0.6, 0.7)  # the fractions a rounded twin may round up from (tune_teacher.py's grid)


def with_rounded(
    results: Sequence[BaselineResult], valid_truth: Sequence[float], test_truth: Sequence[float], scale
) -> list[BaselineResult]:
    """`results` plus, for each method whose predictions are not already on the scale's grid, a
    "<name> (rounded)" twin: the same predictions on the grid, rounded up from the fraction of a step
    (`ROUND_UP_AT`) with the lowest validation MAE, the choice the compact rule teacher gets
    (benchmarks/tune_teacher.py); the chosen fraction is recorded as the `round_up_at` parameter."""
    valid_y, test_y = np.asarray(valid_truth, np.float64), np.asarray(test_truth, np.float64)
    out = list(results)
    for res in results:
        grid = lambda pred, at: np.array(  # noqa: E731
            [round_up_from(float(x), at, scale.low, scale.high, scale.step) for x in pred]
        )
        if all(float(x) == round_to_scale(float(x), scale) for x in (*res.valid_pred, *res.test_pred)):
            continue
        at = min(ROUND_UP_AT, key=lambda a: _errors(grid(res.valid_pred, a), valid_y)[0])  # first of equals
        valid_r, test_r = grid(res.valid_pred, at), grid(res.test_pred, at)
        (valid_mae, valid_rmse), (test_mae, test_rmse) = _errors(valid_r, valid_y), _errors(test_r, test_y)
        params = {**res.params, "round_up_at": at}
        twin = dataclasses.replace(
            res, name=f"{res.name} (rounded)", params=params, valid_pred=valid_r, test_pred=test_r
        )
        out.append(dataclasses.replace(twin, valid_mae=valid_mae, valid_rmse=valid_rmse, test_mae=test_mae))
        out[-1].test_rmse = test_rmse
    return out


def shown_predictors(dm, positions: Sequence[int], table=None) -> dict[str, np.ndarray]:
    """Ratings predicted from what each sample's prompt shows (all earlier ratings, strictly before it).

    user_mean_shown / item_mean_shown: the user's / the item's average (the other one, then the
    typical rating, where it has none); bias_shown: item average + user average - typical rating;
    teacher_rule: the rule-based RecOne teacher's rating for the config's prompt style (`recone.teacher`).
    The typical rating is the train split's mean (`RatingDataModule.typical_rating`). `table`: the
    sample table `positions` point into (default the DataModule's).
    """
    table = dm.table if table is None else table
    typical, scale = dm.typical_rating, dm.scale
    rule = teacher_for(dm.prompt, typical)
    out: dict[str, list[float]] = {"user_mean_shown": [], "item_mean_shown": [], "bias_shown": [], "teacher_rule": []}
    for pos in positions:
        user = table.user_avg[pos] if table.user_count[pos] else None
        item = table.item_avg[pos] if table.item_count[pos] else None
        u = user if user is not None else typical
        i = item if item is not None else typical
        out["user_mean_shown"].append(user if user is not None else item if item is not None else typical)
        out["item_mean_shown"].append(item if item is not None else user if user is not None else typical)
        out["bias_shown"].append(scale.clip(i + u - typical))
        out["teacher_rule"].append(rule(prompt_input(dm.data, table, pos))[1])
    return {name: np.clip(np.asarray(values, np.float64), scale.low, scale.high) for name, values in out.items()}


def score_shown(dm, split: dict) -> list[BaselineResult]:
    """`shown_predictors` on the validation and test samples, as results (nothing is fit or tuned)."""
    start = time.perf_counter()
    valid = shown_predictors(dm, split["validation"]["positions"], split["validation"]["table"])
    test = shown_predictors(dm, split["test"]["positions"])
    valid_y = np.asarray(split["validation"]["truth"], np.float64)
    test_y = np.asarray(split["test"]["truth"], np.float64)
    seconds = time.perf_counter() - start
    results = []
    for name in valid:
        (valid_mae, valid_rmse), (test_mae, test_rmse) = _errors(valid[name], valid_y), _errors(test[name], test_y)
        results.append(
            BaselineResult(name, {}, valid_mae, valid_rmse, test_mae, test_rmse, len(valid_y), len(test_y), seconds)
        )
        results[-1].valid_pred, results[-1].test_pred = valid[name], test[name]
    return results


def format_table(results: Sequence[BaselineResult]) -> str:
    """A markdown table: one row per method with its chosen hyper-parameters and scores."""
    lines = [
        "| method | chosen hyper-parameters | valid MAE | valid RMSE | test MAE | test RMSE | n valid | n test | search s | fit s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        params = ", ".join(
            f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in res.params.items()
        )
        lines.append(
            f"| {res.name} | {params or '-'} | {res.valid_mae:.4f} | {res.valid_rmse:.4f} | {res.test_mae:.4f} | "
            f"{res.test_rmse:.4f} | {res.n_valid} | {res.n_test} | {res.search_seconds:.1f} | {res.fit_seconds:.1f} |"
        )
    return "\n".join(lines)


# -- CLI: reczero baselines -----------------------------------------------------------------------
@dataclass
class BaselineOptions:
    """`reczero baselines`' own options.

    Args:
        output: write the results as JSON here (what `reczero report` reads).
        methods: a subset of the methods (default all: global_mean, user_mean, item_mean, bias_baseline,
            biased_mf, item_knn).
        select_by: the validation metric that picks each method's hyper-parameters.
        seed: seed of the predictors that draw random numbers.
    """

    output: str | None = None
    methods: list[str] | None = None
    select_by: Literal["mae", "rmse"] = "mae"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods or ()) - set(DEFAULT_GRIDS))
        if unknown:
            raise ValueError(f"methods: unknown method(s) {unknown}; known: {list(DEFAULT_GRIDS)}")


def baselines_command(data: RatingDataModule, options: BaselineOptions) -> dict:
    """Classical rating predictors, tuned on validation, scored on the LLM's chronological split."""
    dm, cfg = data, options
    start = time.perf_counter()
    grids = None if cfg.methods is None else {m: DEFAULT_GRIDS[m] for m in cfg.methods}
    split = baseline_split(dm)
    valid, test, scale = split["validation"], split["test"], dm.scale
    if dm.sample_config.split == "leave_last":
        warnings.warn(
            "leave_last: the classical baselines are fitted on ratings later than some test ones", stacklevel=1
        )
    results = run_baselines(
        split["train"], valid["pairs"], valid["truth"], test["pairs"], test["truth"],
        scale.low, scale.high, grids=grids, seed=cfg.seed, select_by=cfg.select_by, refit=split["refit"],
    )  # fmt: skip
    results = with_rounded([*results, *score_shown(dm, split)], valid["truth"], test["truth"], scale)
    seconds = time.perf_counter() - start
    description = split_description(dm, split)
    print(description + "\n")
    print(format_table(results))
    print(f"\n{seconds:.1f} s in all (data, search and refits)")
    out = {
        "kind": "baselines",
        "data": {"name": dm.data.name, "scale": scale.name},
        "split": description,
        "counts": {
            "train": len(split["train"]),
            "refit": len(split["refit"]),
            "validation": len(valid["pairs"]),
            "test": len(test["pairs"]),
        },
        "protocol": dm.sample_config.split,
        "seconds": seconds,
        "select_by": cfg.select_by,
        "results": [_result_json(r) for r in results],
        "samples": {
            name: {"keys": part["keys"], "truth": part["truth"]}
            for name, part in (("validation", valid), ("test", test))
        },
    }
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(out) + "\n")
        print(f"wrote {cfg.output}")
    return out


def _result_json(res) -> dict:
    row = {k: v for k, v in dataclasses.asdict(res).items() if k not in ("valid_pred", "test_pred")}
    row["valid_pred"] = [round(float(x), 4) for x in res.valid_pred]
    row["test_pred"] = [round(float(x), 4) for x in res.test_pred]
    return row
