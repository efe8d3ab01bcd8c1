"""`reczero coldstart`: build RecOne's SFT traces with a local Hugging Face model as the teacher.

RecOne (method.md) warm-starts the policy on ~1,000 four-tag reasoning traces from a stronger
teacher: keep a trace whose rating is right; where none is, give the teacher the true rating as a
hint and keep an explanation that reaches it without mentioning it (Reason4Rec's rule). Here:

  1. train samples in a seeded order, `--batch-size` at a time; the teacher (default: the policy's own
     base model, `--teacher` any hub id or folder, `--teacher-adapter` a LoRA on it) samples `--tries`
     completions of each prompt
     (one batched `rollout.engine.generate` call, shared prefill);
  2. a sample keeps its first completion that passes `rewards.check_format` with a rating within
     `--tolerance` of the truth (`judge_direct`); completions that copy the prompt's skeleton hints
     or its one-shot example answer (`data.prompt.answer_example`) are rejected too (`copied_example`);
  3. the others are asked again, the prompt extended by `hint_sentence(truth)`, `--hint-tries`
     completions each (default `--tries`; 0 skips this round); kept: the first that passes the
     format, rates exactly the hint and does not leak it (`judge_hinted`, `hints.leaks_hint`);
     else the sample is dropped.

`--teacher template` replaces the model by `teacher` (rule-based, one try, no hint round)
for machines where no model teacher is strong enough.

Output: the traces JSONL (`reczero.data.traces` format, plus `target` and `source` = "direct" | "hint"),
appended and flushed after every batch, and `<output>.stats.json` (rewritten after every batch):
kept directly, kept after the hint, dropped by reason. Resumable: samples already in the output, or
recorded as dropped in the stats, are skipped, and the run stops once the output holds `--num-traces`
(or after `--max-samples` samples tried in this run, a budget cap).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from reczero import answers, rewards
from reczero.data.batching import left_pad, pad_id
from reczero.data.datamodule import RatingDataModule
from reczero.data.render import prompt_input
from reczero.modules.base import PolicyModule
from reczero.prompts import answer_format, format_rating
from reczero.recone.hints import leaks_hint
from reczero.recone.teacher import TEACHER_NAME, teacher_for
from reczero.scale import EXACT_TOLERANCE, RatingScale

log = logging.getLogger(__name__)

# How far a dropped sample's best hinted try got, worst first: it is counted under the furthest.
DROP_STAGES = ("format", "copied_example", "wrong_rating", "leak")


@dataclass(frozen=True)
class Verdict:
    """keep: use this completion. reason: "ok", "format:<check_format reason>", "copied_example",
    "wrong_rating" or "leak:<leaks_hint reason>". rating: the parsed rating (None when unparsable)."""

    keep: bool
    reason: str
    rating: float | None

    @property
    def stage(self) -> str:
        return self.reason.split(":", 1)[0]


def _check(
    completion: str, scale: RatingScale, sources: tuple[str, ...]
) -> tuple[answers.FormatCheck, Verdict | None]:
    """The reward's format check; a block that copies the prompt's skeleton hints or its one-shot
    example (`sources`, `prompts.copy_sources`) is a `copied_example` drop: small teachers copy it."""
    check = rewards.check_format(completion, scale, copy_sources=sources)
    if check.reason.startswith("copied_block"):
        return check, Verdict(False, f"copied_example:{check.reason.split(':', 1)[1]}", check.rating)
    if not check.ok:
        return check, Verdict(False, f"format:{check.reason}", check.rating)
    return check, None


def judge_direct(
    completion: str, truth: float, scale: RatingScale, tolerance: float, sources: tuple[str, ...] = ()
) -> Verdict:
    """Without a hint: keep when the format passes, nothing of `sources` is copied, and
    |rating - truth| <= tolerance."""
    check, rejected = _check(completion, scale, sources)
    if rejected:
        return rejected
    if abs(check.rating - truth) > tolerance + EXACT_TOLERANCE:
        return Verdict(False, "wrong_rating", check.rating)
    return Verdict(True, "ok", check.rating)


def judge_hinted(completion: str, truth: float, scale: RatingScale, sources: tuple[str, ...] = ()) -> Verdict:
    """With the hint: keep when the format passes, nothing of `sources` is copied, the rating equals the
    hint, and `leaks_hint` is None."""
    check, rejected = _check(completion, scale, sources)
    if rejected:
        return rejected
    if abs(check.rating - truth) > EXACT_TOLERANCE:
        return Verdict(False, "wrong_rating", check.rating)
    leak = leaks_hint(completion, truth, scale)
    if leak is not None:
        return Verdict(False, f"leak:{leak}", check.rating)
    return Verdict(True, "ok", check.rating)


def hint_sentence(truth: float, scale: RatingScale) -> str:
    return (
        f"The user's actual rating was {format_rating(truth, scale)}. "
        "Explain the reasoning that leads to it without mentioning the rating itself."
    )


def add_hint(prompt: str, truth: float, scale: RatingScale, example: str | None = None) -> str:
    """`prompt` with the hint sentence on its own line at the end of the instruction: after the answer
    skeleton, or after the one-shot `example` answer when the prompt shows one (inside the user turn,
    before the chat template's assistant header). Adds ~30 tokens beyond `max_prompt_tokens`."""
    ends = [prompt.rfind(s) + len(s) for s in (answer_format(scale), example) if s and s in prompt]
    if not ends:
        raise ValueError("the prompt does not contain the answer skeleton; cannot place the hint")
    end = max(ends)
    return f"{prompt[:end]}\n{hint_sentence(truth, scale)}{prompt[end:]}"


def first_kept(texts: list[str], judge) -> tuple[int | None, list[Verdict]]:
    """Index of the first text `judge` keeps (None if none) and every verdict."""
    verdicts = [judge(t) for t in texts]
    return next((i for i, v in enumerate(verdicts) if v.keep), None), verdicts


def drop_reason(verdicts: list[Verdict]) -> str:
    """A dropped sample's reason: the furthest `DROP_STAGES` entry any of its last round's tries reached
    (the hinted round, or the direct one when `--hint-tries 0`)."""
    return max((v.stage for v in verdicts), key=DROP_STAGES.index, default="format")


# -- the run --------------------------------------------------------------------------------------
def _read_done(output: Path, stats_path: Path) -> tuple[set[str], int, dict]:
    """(sample keys already handled, traces in the output, stats so far) for a resumed run."""
    keys, count = set(), 0
    if output.exists():
        for line in output.read_text(encoding="utf-8").splitlines():
            if line.strip():
                keys.add(json.loads(line)["key"])
                count += 1
    stats = {"kept_direct": 0, "kept_hint": 0, "dropped": 0, "drop_reasons": dict.fromkeys(DROP_STAGES, 0)}
    stats.update({"direct_rejects": {}, "hint_rejects": {}, "dropped_keys": {}})
    if stats_path.exists() and output.exists():
        stats.update(json.loads(stats_path.read_text()))
    keys.update(stats["dropped_keys"])
    return keys, count, stats


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _count(table: dict, verdicts: list[Verdict]) -> None:
    for v in verdicts:
        if not v.keep:
            table[v.reason] = table.get(v.reason, 0) + 1


def _tokenize(tokenizer, texts: list[str], device):
    ids, mask = left_pad(tokenizer(texts, add_special_tokens=False)["input_ids"], pad_id(tokenizer))  # [B, P] each
    return ids.to(device), mask.to(device)


def run_coldstart(model, tokenizer, dm, output: str | Path, cfg: ColdstartOptions) -> dict:
    """Build traces for `dm`'s train split with `model` (eval mode; None: the rule teacher
    `teacher.teacher_for`, one deterministic try per sample, no hint round); returns the stats."""
    import torch

    from reczero.rollout.engine import SamplingConfig, generate

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stats_path = output.with_name(output.name + ".stats.json")
    done, have, stats = _read_done(output, stats_path)
    dm.set_tokenizer(tokenizer)
    ds, scale = dm.dataset("train"), dm.scale
    order = [i for i in range(len(ds)) if dm.sample_key(ds.positions[i]) not in done]
    random.Random(cfg.seed).shuffle(order)
    order = order[: cfg.max_samples] if cfg.max_samples else order
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    device = model.device if model is not None else torch.device("cpu")
    generator = torch.Generator(device).manual_seed(cfg.seed)
    prefix = dm.prompt.response_prefix
    rule = teacher_for(dm.prompt, dm.typical_rating)
    log.info("coldstart: %d traces so far, %d train samples left, target %d", have, len(order), cfg.num_traces)

    def sample(rows: list[int], prompts: list[str], tries: int) -> list[list[str]]:
        """B dataset rows and their prompts -> B lists of `tries` completions."""
        if model is None:
            return [[rule(prompt_input(ds.data, ds.table, ds.positions[i]))[0]] for i in rows]
        ids, mask = _tokenize(tokenizer, prompts, device)
        texts = generate(model, tokenizer, ids, mask, tries, sampling, generator).texts  # B * tries, prompt-major
        texts = [(prefix + t).rstrip() for t in texts]
        return [texts[b * tries : (b + 1) * tries] for b in range(len(prompts))]

    hint_tries = cfg.tries if cfg.hint_tries is None else cfg.hint_tries
    hint_tries = 0 if model is None else hint_tries  # the template cannot take a hint

    with output.open("a", encoding="utf-8") as out:
        start = 0
        while start < len(order) and have < cfg.num_traces:
            batch = order[start : start + min(cfg.batch_size, cfg.num_traces - have)]
            start += len(batch)
            prompts = [ds.prompt_text(i) for i in batch]
            inputs = [prompt_input(ds.data, ds.table, ds.positions[i]) for i in batch]
            examples = [ds.renderer.example_for(inp) for inp in inputs]
            sources = [ds.renderer.copy_sources(inp) for inp in inputs]
            truths = [ds.data.interactions[ds.table.target[ds.positions[i]]].rating for i in batch]
            kept: dict[int, tuple[str, float, str]] = {}
            failed: dict[int, list[Verdict]] = {}  # b -> the verdicts that drop it, unless a hinted try is kept
            direct = [
                partial(judge_direct, truth=truths[b], scale=scale, tolerance=cfg.tolerance, sources=sources[b])
                for b in range(len(batch))
            ]
            _keep_first(sample(batch, prompts, cfg.tries), range(len(batch)), direct, "direct", stats, kept, failed)
            retry = [b for b in range(len(batch)) if b not in kept]
            if retry and hint_tries:
                hinted = sample(
                    [batch[b] for b in retry],
                    [add_hint(prompts[b], truths[b], scale, examples[b]) for b in retry],
                    hint_tries,
                )
                judges = [partial(judge_hinted, truth=truths[b], scale=scale, sources=sources[b]) for b in retry]
                _keep_first(hinted, retry, judges, "hint", stats, kept, failed)
            keys = [dm.sample_key(ds.positions[i]) for i in batch]
            have += _write_batch(out, keys, truths, kept, failed, stats)
            out.flush()
            os.fsync(out.fileno())
            _write_json(stats_path, stats)
            log.info("coldstart: %d / %d traces (%s)", have, cfg.num_traces, _summary(stats))
    stats["tokens"] = trace_token_stats(output, tokenizer, prefix, ds, dm.sample_key)
    _write_json(stats_path, stats)
    return stats


def _keep_first(samples, rows, judges, source: str, stats: dict, kept: dict, failed: dict) -> None:
    """Judge each row's tries (`samples` and `judges`, one per row of `rows`): the first kept try wins
    (`kept[b]` = (text, rating, source)), else the row's verdicts go to `failed[b]`; the tries rejected
    before it count in `stats["<source>_rejects"]`."""
    for b, texts, judge in zip(rows, samples, judges):
        idx, verdicts = first_kept(texts, judge)
        _count(stats[f"{source}_rejects"], verdicts if idx is None else verdicts[:idx])
        if idx is not None:
            kept[b] = (texts[idx], verdicts[idx].rating, source)
            failed.pop(b, None)
        else:
            failed[b] = verdicts


def _write_batch(out, keys: list[str], truths: list[float], kept: dict, failed: dict, stats: dict) -> int:
    """Write a batch's kept traces (in batch order) and count its drops; returns how many were kept."""
    for b, verdicts in failed.items():
        reason = drop_reason(verdicts)
        stats["dropped"] += 1
        stats["drop_reasons"][reason] = stats["drop_reasons"].get(reason, 0) + 1
        stats["dropped_keys"][keys[b]] = reason
    for b, (text, rating, source) in sorted(kept.items()):
        line = {"key": keys[b], "completion": text, "rating": rating, "target": truths[b], "source": source}
        out.write(json.dumps(line) + "\n")
        stats["kept_direct" if source == "direct" else "kept_hint"] += 1
    return len(kept)


def _percentiles(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


def trace_token_stats(output: Path, tokenizer, prefix: str, ds, key_of: Callable[[int], str]) -> dict:
    """Token lengths of the traces as the policy must generate them (after `prefix`, with EOS), and of
    their prompts: what `rollout.max_new_tokens` and `prompt.max_prompt_tokens` must hold."""
    keys, texts = set(), []
    for line in output.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            keys.add(record["key"])
            completion = record["completion"]
            texts.append(completion[len(prefix) :] if completion.startswith(prefix) else completion)
    completions = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    prompts = [len(ds[i]["input_ids"]) for i in range(len(ds)) if key_of(ds.positions[i]) in keys]
    return {"completion": _percentiles(completions), "prompt": _percentiles(prompts)}


def _summary(stats: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in stats["drop_reasons"].items())
    return f"direct {stats['kept_direct']}, hint {stats['kept_hint']}, dropped {stats['dropped']} ({reasons})"


# -- CLI --------------------------------------------------------------------------------------------
@dataclass
class ColdstartOptions:
    """`reczero coldstart`'s options.

    Args:
        output: the traces JSONL (default: the config's `data.traces`).
        teacher: hub id or folder (default: `model.init_args.policy.model`); "template": the rule-based teacher.
        teacher_adapter: a saved LoRA adapter on the teacher (e.g. a RecZero policy).
        num_traces: stop once the output holds this many.
        max_samples: try at most this many samples in this run.
        tries: completions sampled per prompt, per round.
        hint_tries: completions per hinted prompt (default `tries`; 0: no hint round).
        tolerance: the largest |rating - truth| kept without a hint.
        batch_size: samples per generate call.
        temperature: sampling temperature.
        top_p: nucleus sampling.
        max_new_tokens: completion budget.
        seed: sample order and sampling seed.
        device: auto | cpu | cuda | cuda:1 ...
        if_missing: do nothing when the output file exists.
    """

    output: str | None = None
    teacher: str | None = None
    teacher_adapter: str | None = None
    num_traces: int = 1000
    max_samples: int | None = None
    tries: int = 4
    hint_tries: int | None = None
    tolerance: float = 0.5
    batch_size: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    device: str = "auto"
    if_missing: bool = False

    def __post_init__(self) -> None:
        for name in ("num_traces", "tries", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hint_tries is not None and self.hint_tries < 0:
            raise ValueError(f"hint_tries must be >= 0, got {self.hint_tries}")
        if self.teacher_adapter and not Path(self.teacher_adapter, "adapter_config.json").is_file():
            raise ValueError(
                f"teacher_adapter {self.teacher_adapter}: no adapter_config.json there (a peft adapter folder)"
            )


def coldstart_command(data: RatingDataModule, model: PolicyModule, options: ColdstartOptions) -> dict | None:
    """Build RecOne's SFT reasoning traces with a teacher (a model, or the rule-based template)."""
    from reczero.policy.factory import load_tokenizer
    from reczero.policy.loading import load_model

    output = options.output or data.traces
    if not output:
        raise ValueError("output is required (or a --config whose data.traces names the file)")
    if options.if_missing and Path(output).exists():
        print(f"{output} exists; nothing to do (--if_missing)")
        return None
    policy = model.policy_config
    if options.teacher == TEACHER_NAME:  # no model to load; the policy's tokenizer renders the prompts
        teacher, tokenizer = None, load_tokenizer(policy)
    else:
        config = dataclasses.replace(policy, model=options.teacher or policy.model, adapter_path=None)
        teacher, tokenizer, _ = load_model(config, adapter=options.teacher_adapter, device=options.device)
    stats = run_coldstart(teacher, tokenizer, data, output, options)
    print(f"{output}: {_summary(stats)}")
    for part, figures in stats["tokens"].items():
        if figures.get("n"):
            print(
                f"{part} tokens over {figures['n']} traces: p50 {figures['p50']}, p95 {figures['p95']}, "
                f"p99 {figures['p99']}, max {figures['max']}"
            )
    return stats
