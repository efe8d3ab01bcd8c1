"""Offline evaluation of an LLM policy: `reczero evaluate`.

`reczero evaluate` scores a policy on the DataModule's validation or test samples:
  - the policy is the bare base model (zero-shot), a saved peft adapter folder (`--adapter`) or a
    Lightning checkpoint (`--ckpt`, LoRA weights under `policy.`-prefixed state_dict keys, loaded
    into a policy built from the config's `model.init_args.policy` the way its run built it;
    `policy.loading`). Checkpoints load weights-only; `--trust_pickle` allows pickled objects;
  - ratings come from `rollout.decoding` (`--decode.mode` greedy, expected or self_consistency), scored
    by the model's reward spec as in training;
  - metrics from `metrics.rating_metrics`: an unparsable answer counts, scored with the fallback
    below (never as a perfect answer), and lowers the parse rate;
  - `--output preds.jsonl` writes one line per sample and `preds.metrics.json` beside it.

`reczero baselines` (`baselines`) scores the classical predictors on the same split; both JSON files
are what `reczero report` reads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from reczero import metrics
from reczero.data.batching import PromptCollator, pad_id
from reczero.data.datamodule import RatingDataModule
from reczero.modules.base import PolicyModule
from reczero.policy.loading import load_model
from reczero.rewards import RewardSpec
from reczero.rollout.decoding import DecodeConfig, Decoded, decode_batch, rating_candidates

log = logging.getLogger(__name__)

FALLBACK_NOTE = (
    "an unparsable or out-of-scale answer is scored as the user's average over all earlier ratings, "
    "clipped to the scale (the item's average when the user has none, else the scale's midpoint)"
)
HISTORY_EDGES = (5, 10, 15, 20)  # records shown in the prompt (user + item history)
USER_COUNT_EDGES = (5, 10, 20, 50, 100, 200)  # the user's earlier ratings


# -- the evaluation loop --------------------------------------------------------------------------
@dataclass
class SampleResult:
    """One evaluated sample (a line of the predictions JSONL): the sample and what decoding made of it."""

    key: str
    user: str
    item: str
    target: float
    fallback: float
    history_len: int
    user_count: int
    decoded: Decoded

    @property
    def scored_as(self) -> float:
        return self.fallback if self.decoded.prediction is None else self.decoded.prediction

    def to_json(self) -> dict:
        d = self.decoded
        one = lambda values: values[0] if len(values) == 1 else values  # noqa: E731
        return {
            "key": self.key,
            "user": self.user,
            "item": self.item,
            "target": self.target,
            "prediction": d.prediction,
            "fallback": self.fallback,
            "fallback_used": d.prediction is None,
            "history_len": self.history_len,
            "user_count": self.user_count,
            "finished": one(d.finished),
            "copied": one(d.copied),
            "grounded": one(d.grounded),
            **d.json_fields(),
        }


@dataclass
class EvalResult:
    rows: list[SampleResult]
    split_size: int
    seconds: float
    scale: object
    expected_values: list[float] = field(default_factory=list)

    def rating_metrics(self, greedy: bool = False) -> metrics.RatingMetrics:
        """Metrics of the decoded predictions, or with `greedy` of each greedy completion's own rating
        (expected mode decodes greedily first, so one pass scores both)."""
        return metrics.rating_metrics(
            [r.decoded.greedy if greedy else r.decoded.prediction for r in self.rows],
            [r.target for r in self.rows],
            [r.fallback for r in self.rows],
            self.scale,
        )


def evaluate(
    model,
    tokenizer,
    dm,
    spec: RewardSpec | None = None,
    split: str = "test",
    cfg: DecodeConfig | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Decode a rating for the first `limit` samples of `split` (all when None), in batches of similar
    length, scored by `spec` (the reward's format and copy rules)."""
    from tqdm.auto import tqdm

    cfg, spec = cfg or DecodeConfig(), spec or RewardSpec()
    dm.prompt.check_scored_by(spec)  # the prompts must ask for the template the answers are scored by
    dm.set_tokenizer(tokenizer)
    dm.setup()
    ds = dm.dataset(split)
    n = len(ds) if limit is None else min(limit, len(ds))
    features = [ds[i] for i in range(n)]
    order = sorted(range(n), key=lambda i: len(features[i]["input_ids"]))  # similar lengths share a batch
    scale = dm.scale
    collate = PromptCollator(pad_id(tokenizer), scale)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.mode == "self_consistency" else None
    candidates = rating_candidates(tokenizer, scale) if cfg.mode == "expected" else None
    if candidates is not None and candidates.missing:
        log.warning("expected decoding covers %s; not single tokens: %s", candidates.covered, candidates.missing)
    results: list[SampleResult | None] = [None] * n
    start = time.perf_counter()
    bar = tqdm(total=n, desc=f"evaluate {split}", unit="sample", file=sys.stderr, disable=not progress)
    for first in range(0, n, batch_size):
        chunk = order[first : first + batch_size]
        batch = collate([features[i] for i in chunk])
        decoded = decode_batch(model, tokenizer, batch, cfg, spec, dm.prompt.response_prefix, generator, candidates)
        for i, d in zip(chunk, decoded):
            pos = features[i]["sample_id"]
            row = dm.data.interactions[dm.table.target[pos]]
            results[i] = SampleResult(
                key=dm.sample_key(pos),
                user=row.user,
                item=row.item,
                target=float(features[i]["target"]),
                fallback=float(features[i]["fallback"]),
                history_len=int(features[i]["history_len"]),
                user_count=int(dm.table.user_count[pos]),
                decoded=d,
            )
        bar.update(len(chunk))
    bar.close()
    covered = candidates.covered if candidates is not None else []
    return EvalResult(results, len(ds), time.perf_counter() - start, scale, covered)


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def summarize(result: EvalResult, **meta) -> dict:
    """The metrics JSON (`kind: evaluate`), `meta` (name, split, decoding, model, data...) included."""
    m = result.rating_metrics()
    rows = result.rows
    flags = [ok for r in rows for ok in r.decoded.format_ok]
    done = [f for r in rows for f in r.decoded.finished]
    values = {k: _finite(v) for k, v in m.to_dict().items() if not k.startswith("mae_target_")}
    values["count"], values["parsed"] = m.count, m.parsed
    values["fallbacks"] = m.count - m.parsed
    values["format_rate"] = sum(flags) / len(flags)
    values["finished_rate"] = sum(done) / len(done)
    copied = [c for r in rows for c in r.decoded.copied]
    grounded = [g for r in rows for g in r.decoded.grounded]
    values["copy_rate"] = sum(copied) / len(copied) if copied else None
    values["grounded_rate"] = sum(grounded) / len(grounded) if grounded else None
    masses = [r.decoded.rate_mass for r in rows if r.decoded.rate_mass is not None]
    if masses:
        values["rate_mass_mean"] = sum(masses) / len(masses)
    history = [metrics.bucket_label(r.history_len, HISTORY_EDGES) for r in rows]
    users = [metrics.bucket_label(r.user_count, USER_COUNT_EDGES) for r in rows]
    out = {"kind": "evaluate", **meta, "metrics": values, "fallback": FALLBACK_NOTE}
    out["mae_by_target"] = {f"{t:g}": v for t, v in m.mae_by_target.items()}
    out["mae_by_history_len"] = _ordered(metrics.mae_by_group(m.errors, history), history)
    out["mae_by_user_count"] = _ordered(metrics.mae_by_group(m.errors, users), users)
    out["evaluated"], out["split_size"] = len(rows), result.split_size
    out["seconds"] = result.seconds
    if result.expected_values:
        out["expected_values"] = result.expected_values
        greedy = result.rating_metrics(greedy=True)
        out["metrics_greedy"] = {k: _finite(v) for k, v in greedy.to_dict().items() if not k.startswith("mae_target_")}
        out["scored_greedy"] = [r.fallback if r.decoded.greedy is None else r.decoded.greedy for r in rows]
    # per sample, in one order: what `reczero report` pairs methods on (paired bootstrap intervals)
    out["sample_keys"] = [r.key for r in rows]
    out["targets"] = [r.target for r in rows]
    out["scored"] = [r.scored_as for r in rows]
    return out


def _ordered(by_group: dict, labels: list[str]) -> dict:
    """Buckets in ascending order of their lower edge, each with its sample count."""
    counts = {label: labels.count(label) for label in by_group}

    def low(label: str) -> float:
        return -math.inf if label.startswith("<") else float(label.lstrip(">=").split("-")[0])

    return {label: {"mae": by_group[label], "n": counts[label]} for label in sorted(by_group, key=low)}


def write_outputs(result: EvalResult, summary: dict, output: str | Path) -> Path:
    """Write the per-sample JSONL to `output` and the summary to `<stem>.metrics.json`; returns the latter."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w") as fh:
        for row in result.rows:
            fh.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
    path = output.with_suffix(".metrics.json")
    summary = {**summary, "predictions_file": output.name}
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return path


def format_summary(summary: dict) -> str:
    m = summary["metrics"]
    lines = [
        f"{summary['name']} on {summary['data']['name']} {summary['split']} ({summary['evaluated']} of "
        f"{summary['split_size']} samples, {summary['decoding']['mode']} decoding, {summary['seconds']:.1f} s)",
        f"  MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}  parse rate {m['parse_rate']:.3f}  format rate "
        f"{m['format_rate']:.3f}  exact {m['exact_rate']:.3f}  within 0.5 {m['within_0_5']:.3f}  "
        f"within 1 {m['within_1']:.3f}",
        f"  copy rate {_rate(m.get('copy_rate'))}  grounded rate {_rate(m.get('grounded_rate'))}",
        f"  fallbacks: {m['fallbacks']} ({summary['fallback']})",
        "  MAE by true rating: " + ", ".join(f"{k}: {v:.3f}" for k, v in summary["mae_by_target"].items()),
        "  MAE by records shown: "
        + ", ".join(f"{k}: {v['mae']:.3f} (n={v['n']})" for k, v in summary["mae_by_history_len"].items()),
        "  MAE by the user's earlier ratings: "
        + ", ".join(f"{k}: {v['mae']:.3f} (n={v['n']})" for k, v in summary["mae_by_user_count"].items()),
    ]
    if "metrics_greedy" in summary:
        g = summary["metrics_greedy"]
        lines.insert(
            2,
            f"  the same pass, greedy ratings: MAE {g['mae']:.4f}  RMSE {g['rmse']:.4f}  parse rate {g['parse_rate']:.3f}",
        )
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# -- CLI: reczero evaluate ------------------------------------------------------------------------
@dataclass
class PolicyOptions:
    """Which policy to run, and where (shared by `reczero evaluate` and `reczero predict`).

    Args:
        adapter: a saved peft adapter folder on `model.init_args.policy.model`.
        ckpt: a Lightning checkpoint (its LoRA weights, loaded into a policy built from `model.init_args.policy`
            the way its run built it: a `reference: sft` run's SFT adapter is merged under them).
        trust_pickle: load a `ckpt` that holds pickled Python objects besides tensors (unpickling runs
            code named in the file: trusted files only). Off: such a file is refused.
        device: auto | cpu | cuda | cuda:1 ...
        batch_size: prompts per batch (default data.eval_batch_size).
        decode: how ratings are decoded; `decode.max_new_tokens` defaults to `model.init_args.val_max_new_tokens`.
    """

    adapter: str | None = None
    ckpt: str | None = None
    trust_pickle: bool = False
    device: str = "auto"
    batch_size: int | None = None
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(max_new_tokens=None))

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def load(self, module: PolicyModule):
        """(model in eval mode, tokenizer, short name, the decoding with its length resolved)."""
        model, tokenizer, name = load_model(
            module.policy_config, self.adapter, self.ckpt, self.device, self.trust_pickle
        )
        length = self.decode.max_new_tokens or module.hparams.val_max_new_tokens
        return model, tokenizer, name, dataclasses.replace(self.decode, max_new_tokens=length)


@dataclass
class EvaluateOptions(PolicyOptions):
    """`reczero evaluate`'s own options (besides the policy's).

    Args:
        split: the split to score.
        limit: score the first N samples of the split.
        output: per-sample JSONL; the metrics go to <stem>.metrics.json.
        name: the method's name in reports (default from the model).
        no_progress: no progress bar on stderr.
    """

    split: Literal["validation", "test"] = "test"
    limit: int | None = None
    output: str | None = None
    name: str | None = None
    no_progress: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


def evaluate_command(data: RatingDataModule, model: PolicyModule, options: EvaluateOptions) -> dict:
    """Score a policy on a split (MAE, RMSE, parse rate, format, copy and grounding rates)."""
    policy, tokenizer, name, decode = options.load(model)
    if decode.mode != "greedy":
        name += f" [{'expected' if decode.mode == 'expected' else f'sc{decode.samples}'}]"
    result = evaluate(
        policy, tokenizer, data, model.reward_spec, options.split, decode, options.limit,
        options.batch_size or data.eval_batch_size, not options.no_progress,
    )  # fmt: skip
    summary = summarize(
        result,
        name=options.name or name,
        split=options.split,
        decoding=dataclasses.asdict(decode),
        model={"base": model.policy_config.model, "adapter": options.adapter, "ckpt": options.ckpt},
        data={"name": data.data.name, "scale": data.scale.name, "limit": options.limit},
    )
    print(format_summary(summary))
    if options.output:
        path = write_outputs(result, summary, options.output)
        print(f"wrote {options.output} and {path}")
    return summary
