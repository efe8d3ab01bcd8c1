"""Which rows the classical predictors may learn from under the DataModule's split (`reczero baselines`).

Under `split: time` every row a method fits on is strictly earlier than every test interaction, ties
included; under `split: leave_last` other users' later ratings are in the fit (see `baselines`).
"""

from __future__ import annotations

import dataclasses

from reczero.data.samples import assign_splits, build_samples


def baseline_split(dm) -> dict:
    """The classical predictors' view of the DataModule's split (see the module docstring).

    train: the rows tuning fits on, as (user, item, rating): the `train` split's interactions (time:
    the training period; leave_last: every user's ratings but the last two). refit: what the chosen
    candidate is refit on before the test: every `train` and `validation` interaction (time: all of
    them are earlier than every test interaction). test: the DataModule's test samples (after
    min_history and any max_samples cap), the very samples an LLM is evaluated on. validation: EVERY
    validation sample, whatever `max_samples` caps for the LLM's validation: the baselines are tuned
    on all of it, their best configuration. Each holds positions into its `table`, (user, item)
    pairs, true ratings and sample keys.
    """
    dm.setup()
    rows = dm.data.interactions
    cfg = dm.sample_config
    splits = assign_splits(dm.data, cfg)
    tables = {"test": dm.table, "validation": dm.table}
    if "validation" in cfg.max_samples:
        rest = {k: v for k, v in cfg.max_samples.items() if k != "validation"}
        tables["validation"] = build_samples(dm.data, dataclasses.replace(cfg, max_samples=rest))
    out = {
        "train": [(r.user, r.item, r.rating) for r, s in zip(rows, splits) if s == "train"],
        "refit": [(r.user, r.item, r.rating) for r, s in zip(rows, splits) if s in ("train", "validation")],
        "test_start": min((r.timestamp for r, s in zip(rows, splits) if s == "test"), default=None),
    }
    for split, table in tables.items():
        positions = [p for p, s in enumerate(table.split) if s == split]
        targets = [rows[table.target[p]] for p in positions]
        out[split] = {
            "table": table,
            "positions": positions,
            "pairs": [(r.user, r.item) for r in targets],
            "truth": [r.rating for r in targets],
            "keys": [f"{r.user}|{r.item}|{r.timestamp}" for r in targets],
        }
    return out


def split_description(dm, split: dict) -> str:
    cfg = dm.sample_config
    n_valid, n_test = len(split["validation"]["pairs"]), len(split["test"]["pairs"])
    if cfg.split == "time":
        how = (
            f"global time split at quantiles {cfg.time_quantiles}: tuned with {len(split['train'])} training-period "
            f"interactions on {n_valid} validation samples, refit on all {len(split['refit'])} interactions before "
            f"the test period (nothing at or after {split['test_start']})"
        )
    else:
        how = (
            f"leave-last split (per user: last rating -> test, second to last -> validation): tuned with "
            f"{len(split['train'])} interactions on {n_valid} validation samples, refit on {len(split['refit'])}; "
            "NOT leakage-free for these methods (other users' later ratings are in the fit): use split: time"
        )
    return (
        f"{dm.data.name}, {how}. Scored on the {n_test} test samples an LLM is evaluated on (samples with under "
        f"{cfg.min_history} history records dropped{'; a seeded subset' if 'test' in cfg.max_samples else ''})."
    )
