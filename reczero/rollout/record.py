"""Rollouts: G sampled completions per prompt, scored, with group advantages, as one typed record.

`build_rollout` samples `group_size` completions of each prompt of a batch (shared prefill, see
`engine`; the LoRA merged while sampling, see `merge`), scores them with the reward spec
(`score_texts`) and computes GRPO advantages into a `RolloutRecord`; `modules.rollout_callback` runs
it before every training batch. Group layout everywhere: prompt-major, rows b*G .. b*G+G-1 are
prompt b's completions. A group never spans ranks: each rank samples the groups of its own prompts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import torch

from reczero import grpo, rewards
from reczero.rollout.engine import Generation, SamplingConfig, generate
from reczero.rollout.merge import MERGE_MODES, merged_lora
from reczero.scale import RatingScale


@dataclass
class RolloutConfig(SamplingConfig):
    """Sampling plus grouping. Used as `--model.rollout.<field>`.

    group_size: completions per prompt (G); the paper uses 8.
    advantage_scale: "group" (divide by the group's std, paper), "batch" or "none" (Dr. GRPO).
    seed: seed of the sampling generator (offset by the rank); its state is checkpointed.
    merge_lora: "auto" (on the CPU only), "always" or "never": sample with the LoRA folded into the
        base weights (`rollout.merge.merged_lora`; exact restore; skipped for 4-bit and sharded weights).
    """

    group_size: int = 8
    advantage_scale: str = "group"
    seed: int = 0
    merge_lora: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(
                f"rollout.group_size must be >= 2 (GRPO compares samples of a group), got {self.group_size}"
            )
        if self.advantage_scale not in grpo.ADVANTAGE_SCALES:
            raise ValueError(f"rollout.advantage_scale must be one of {grpo.ADVANTAGE_SCALES}")
        if self.temperature == 0:
            raise ValueError("rollout.temperature 0 makes every sample of a group identical: nothing to learn")
        if self.merge_lora not in MERGE_MODES:
            raise ValueError(f"rollout.merge_lora must be one of {MERGE_MODES}, got {self.merge_lora!r}")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**{f.name: getattr(self, f.name) for f in fields(SamplingConfig)})


@dataclass
class RolloutRecord:
    """One step's rollouts (N = B * G rows, prompt-major).

    input_ids:       [N, P + C] prompt (left-padded to P) followed by the completion (right-padded to C)
    attention_mask:  [N, P + C] 1 on real tokens
    completion_mask: [N, C] True on generated tokens (EOS / stop tokens included)
    prompt_width:    P
    rewards:         [N] total reward
    components:      name -> [N] reward components ("format", "rating")
    advantages:      [N]
    format_ok:       [N] bool
    predictions:     [N] parsed rating, NaN where none could be read
    copied:          [N] True where a reasoning block copies the prompt's skeleton or one-shot example
    grounded:        [N] True where the answer is no copy and both analyses name facts of this prompt
    targets:         [N] the true rating of each row's prompt
    truncated:       [N] True where the completion hit max_new_tokens without ending
    sample_ids:      [B] dataset positions of the prompts
    texts:           N decoded completions
    group_size:      G
    generation_seconds: wall time spent sampling
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int
    rewards: torch.Tensor
    components: dict[str, torch.Tensor]
    advantages: torch.Tensor
    format_ok: torch.Tensor
    predictions: torch.Tensor
    copied: torch.Tensor
    grounded: torch.Tensor
    targets: torch.Tensor
    truncated: torch.Tensor
    sample_ids: torch.Tensor
    texts: list[str]
    group_size: int
    generation_seconds: float = 0.0

    def to(self, device: torch.device | str) -> RolloutRecord:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif isinstance(value, dict):
                value = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in value.items()}
            moved[f.name] = value
        return RolloutRecord(**moved)


@dataclass
class Scores:
    """Rewards and measures of N completions: rewards [N], components name -> [N], format_ok [N],
    predictions [N] (NaN when unparsable), copied [N] (a reasoning block copies the prompt's skeleton
    or example), grounded [N] (not copied, and both analyses name facts of this prompt)."""

    rewards: torch.Tensor
    components: dict[str, torch.Tensor]
    format_ok: torch.Tensor
    predictions: torch.Tensor
    copied: torch.Tensor
    grounded: torch.Tensor


def score_texts(
    texts: list[str],
    targets: list[float],
    scale: RatingScale,
    spec: rewards.RewardSpec,
    copy_sources: list | None = None,
    facts: list | None = None,
) -> Scores:
    """Score each completion (`rewards.score_batch`); `copy_sources` / `facts` one per text, or None."""
    scored = rewards.score_batch(texts, targets, scale, spec, copy_sources, facts)
    flags = lambda values: torch.tensor(values, dtype=torch.bool)  # noqa: E731
    return Scores(
        rewards=torch.tensor([s.total for s in scored], dtype=torch.float32),
        components={
            "format": torch.tensor([s.format for s in scored], dtype=torch.float32),
            "rating": torch.tensor([s.rating for s in scored], dtype=torch.float32),
        },
        format_ok=flags([s.format_ok for s in scored]),
        predictions=torch.tensor([math.nan if s.parsed is None else s.parsed for s in scored], dtype=torch.float32),
        copied=flags([s.copied for s in scored]),
        grounded=flags([s.grounded_answer for s in scored]),
    )


def build_rollout(
    model,
    tokenizer,
    batch: dict[str, torch.Tensor],
    cfg: RolloutConfig,
    spec: rewards.RewardSpec,
    scale: RatingScale,
    generator: torch.Generator | None = None,
    response_prefix: str = "",
) -> RolloutRecord:
    """Sample, score and compute advantages for one prompt batch (the model is used as is).

    `response_prefix` (already at the end of each prompt) is scored together with each completion.
    """
    start = time.perf_counter()
    with merged_lora(model, cfg.merge_lora):
        gen = generate(
            model, tokenizer, batch["input_ids"], batch["attention_mask"], cfg.group_size, cfg.sampling(), generator
        )
    return record_from_generation(batch, gen, cfg, spec, scale, response_prefix, time.perf_counter() - start)


def record_from_generation(
    batch: dict[str, torch.Tensor],
    gen: Generation,
    cfg: RolloutConfig,
    spec: rewards.RewardSpec,
    scale: RatingScale,
    response_prefix: str = "",
    generation_seconds: float = 0.0,
) -> RolloutRecord:
    """Score `gen` (B * G completions, prompt-major) against the batch's targets into a record."""
    group = cfg.group_size
    targets = batch["target"].repeat_interleave(group)  # [N]
    texts = [response_prefix + t for t in gen.texts]
    per_row = lambda key: None if key not in batch else [x for x in batch[key] for _ in range(group)]  # noqa: E731
    scores = score_texts(texts, targets.tolist(), scale, spec, per_row("copy_sources"), per_row("facts"))
    advantages = grpo.group_advantages(scores.rewards, group, cfg.advantage_scale)  # [N]
    prompt_ids = batch["input_ids"].repeat_interleave(group, dim=0)  # [N, P]
    prompt_mask = batch["attention_mask"].repeat_interleave(group, dim=0)  # [N, P]
    completion_mask = gen.completion_mask  # [N, C]
    device = prompt_ids.device
    return RolloutRecord(
        input_ids=torch.cat([prompt_ids, gen.tokens.to(device)], dim=1),
        attention_mask=torch.cat([prompt_mask, completion_mask.long().to(device)], dim=1),
        completion_mask=completion_mask.to(device),
        prompt_width=prompt_ids.shape[1],
        rewards=scores.rewards.to(device),
        components={k: v.to(device) for k, v in scores.components.items()},
        advantages=advantages.to(device),
        format_ok=scores.format_ok.to(device),
        predictions=scores.predictions.to(device),
        copied=scores.copied.to(device),
        grounded=scores.grounded.to(device),
        targets=targets.float(),
        truncated=~gen.finished.to(device),
        sample_ids=batch["sample_id"],
        texts=texts,
        group_size=group,
        generation_seconds=generation_seconds,
    )
