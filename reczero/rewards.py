"""Rule-based rewards for rating completions: the format check and the rating parse (`answers`), then the score.

RecZero's reward (method.md) is a format component plus a rating component:

* the format passes iff every tag of the template occurs exactly once, the blocks come in order
  without nesting, the reasoning blocks are non-empty, none copies the skeleton or the example, and
  the rating block holds a number inside the rating scale (`answers.check_format`: every rule and
  its reason code);
* passing: ``total = format_reward + rating``, with the graded rating ``1 - |pred - true| / divisor``
  (paper: 1 + (1 - err / 2), so 2 / 1.5 / 0 at 0 / 1 / 4 stars off on 1-5) or the authors'
  exact-match ablation (+2 if equal else -1.5);
* failing: ``total = format_penalty`` (-1), plus optional partial credit (`RewardSpec.format_shaping`)
  for small models that would otherwise see reward std 0 in every group.

Pure (standard library + `reczero.answers`, `reczero.reasoning`, `reczero.scale`); nothing ever
raises on text. The GRPO module turns these rewards into advantages; prompts.py writes the matching
instruction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from reczero.answers import (
    answer_grounding,
    check_format,
    get_template,
)
from reczero.reasoning import COPY_THRESHOLD, Grounding, PromptFacts
from reczero.scale import EXACT_TOLERANCE, RatingScale


@dataclass
class RewardSpec:
    """How completions are scored (the reward half of the RL config).

    template: "four_step" (paper), "think_answer" or "answer_only" (ablations; see `TEMPLATES`).
    rating_reward: "graded" = ``1 - |pred - true| / divisor`` (paper), or "exact" = `exact_correct`
        when ``|pred - true| < 1e-6`` else `exact_wrong` (authors' ablation: +2 / -1.5).
    divisor: a positive number, or "scale" for the scale's span (max - min). The paper's 2.0 on a
        1-5 scale makes the graded term run from 1 (exact) to -1 (four stars off), i.e. a total of 2
        down to 0; "scale" keeps the term in [0, 1] on any scale (use it on 1-10).
    format_reward / format_penalty: the format component when the format passes / fails (+1 / -1).
    format_shaping: partial credit on failure (0 = paper). A failing completion scores
        ``format_penalty + format_shaping * (0.75 * tags_found / tags_total + 0.25 * rating_ok)``,
        where tags_found counts tag strings present exactly once and rating_ok is 1 when the last
        rating block parses to a number inside the scale. It grows monotonically with both and
        peaks at ``format_penalty + format_shaping``, which must stay below the lowest passing
        reward (checked by `validate_for`), so passing always beats failing.
    clip_rating_reward: floor the graded term at 0. Off by default, keeping the paper's arithmetic
        (four stars off on 1-5 gives a term of -1 and a total of 0).
    allow_trailing_text: accept text after the last closing tag (see `check_format`).
    reject_copies: fail the format when a reasoning block copies the prompt's skeleton hints or its
        one-shot example (the `copy_sources` passed to `score`; `check_format`). False: the paper's rule.
    copy_threshold: word-sequence similarity from which a block counts as a near-copy (`reasoning.is_copy`).
    """

    template: str = "four_step"
    rating_reward: str = "graded"
    divisor: float | str = 2.0
    format_reward: float = 1.0
    format_penalty: float = -1.0
    format_shaping: float = 0.0
    clip_rating_reward: bool = False
    exact_correct: float = 2.0
    exact_wrong: float = -1.5
    allow_trailing_text: bool = False
    reject_copies: bool = True
    copy_threshold: float = COPY_THRESHOLD

    def __post_init__(self) -> None:
        get_template(self.template)
        if not 0.0 < self.copy_threshold <= 1.0:
            raise ValueError(f"copy_threshold must lie in (0, 1], got {self.copy_threshold}")
        if self.rating_reward not in ("graded", "exact"):
            raise ValueError(f"rating_reward must be 'graded' or 'exact', got {self.rating_reward!r}")
        if isinstance(self.divisor, str):
            if self.divisor != "scale":
                raise ValueError(f"divisor must be a positive number or 'scale', got {self.divisor!r}")
        elif isinstance(self.divisor, bool) or not (math.isfinite(self.divisor) and self.divisor > 0):
            raise ValueError(f"divisor must be a positive finite number or 'scale', got {self.divisor!r}")
        for name in ("format_reward", "format_penalty", "format_shaping", "exact_correct", "exact_wrong"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.format_shaping < 0:
            raise ValueError(f"format_shaping must be >= 0 (partial credit), got {self.format_shaping}")
        if self.format_penalty >= self.format_reward:
            raise ValueError(
                f"format_penalty ({self.format_penalty}) must be below format_reward ({self.format_reward})"
            )
        if self.exact_wrong >= self.exact_correct:
            raise ValueError(f"exact_wrong ({self.exact_wrong}) must be below exact_correct ({self.exact_correct})")

    def divisor_for(self, scale: RatingScale) -> float:
        return scale.span if self.divisor == "scale" else float(self.divisor)

    def rating_term(self, prediction: float, target: float, scale: RatingScale) -> float:
        """The rating component for a well-formatted prediction (both inside the scale)."""
        error = abs(prediction - target)
        if self.rating_reward == "exact":
            return self.exact_correct if error < EXACT_TOLERANCE else self.exact_wrong
        term = 1.0 - error / self.divisor_for(scale)
        return max(term, 0.0) if self.clip_rating_reward else term

    def failing_reward(self, tags_found: int, tags_total: int, rating_ok: bool) -> float:
        """The total for a completion whose format fails (see `format_shaping`)."""
        if self.format_shaping == 0.0:
            return self.format_penalty
        progress = 0.75 * min(max(tags_found, 0), tags_total) / tags_total + 0.25 * bool(rating_ok)
        return self.format_penalty + self.format_shaping * progress

    def passing_range(self, scale: RatingScale) -> tuple[float, float]:
        """Lowest and highest total of a well-formatted completion on `scale`."""
        worst = self.rating_term(scale.low, scale.high, scale)
        best = self.rating_term(scale.low, scale.low, scale)
        return self.format_reward + worst, self.format_reward + best

    def bounds(self, scale: RatingScale) -> tuple[float, float]:
        """(min, max) of `score(...).total` over every text and every target inside `scale`.

        Paper defaults on 1-5: (-1, 2). Exact ablation: (-1, 3). Divisor "scale": (-1, 2) on any scale.
        """
        low_pass, high_pass = self.passing_range(scale)
        return min(self.format_penalty, low_pass), max(self.format_penalty + self.format_shaping, high_pass)

    def validate_for(self, scale: RatingScale) -> None:
        """Raise when some failing completion would score at least as much as some passing one.

        That happens with the paper's divisor 2 on a 1-10 scale (nine stars off: 1 + 1 - 4.5 = -2.5,
        below the -1 penalty) or with too much `format_shaping`; the policy would then learn to break
        the format whenever it is unsure.
        """
        low_pass, _ = self.passing_range(scale)
        best_fail = self.format_penalty + self.format_shaping
        if best_fail >= low_pass:
            raise ValueError(
                f"on the {scale.name} scale the worst well-formatted answer scores {low_pass:g} but a failed "
                f"format can score {best_fail:g} (penalty {self.format_penalty:g} + shaping {self.format_shaping:g}); "
                "use divisor='scale', clip_rating_reward=True, a lower format_penalty or less format_shaping"
            )


@dataclass(frozen=True)
class RewardBreakdown:
    """One completion's reward: total = format + rating.

    format: format_reward when the format passes, else the (possibly shaped) failing reward.
    rating: the rating term when the format passes, else 0. parsed: the rating read from the last
    rating block (may be set when the format fails). reason: "ok" or the `check_format` reason.
    """

    total: float
    format: float
    rating: float
    format_ok: bool
    parsed: float | None
    reason: str
    copied: bool = False
    grounded: Grounding | None = None

    @property
    def grounded_answer(self) -> bool:
        """Reasoning about this prompt: not a copy, and both analyses name a fact of it."""
        return self.grounded is not None and self.grounded.both and not self.copied


def score(
    completion: str,
    target: float,
    scale: RatingScale,
    spec: RewardSpec,
    copy_sources: Sequence[str] = (),
    facts: PromptFacts | None = None,
) -> RewardBreakdown:
    """Score one completion against the true rating `target` (which must lie inside `scale`).

    `copy_sources`: the texts its reasoning must not copy (`check_format`), e.g. the prompt's skeleton
    hints and example blocks (`prompts.copy_sources`). `facts`: what the prompt shows, to measure
    grounding (`answer_grounding`; a measure, never part of the reward). Never raises on the completion text; raises ValueError for a target outside the scale or a
    spec that lets failing completions outscore passing ones on this scale (`validate_for`).
    """
    if not scale.contains(float(target)):
        raise ValueError(f"target rating {target!r} is outside the {scale.name} scale")
    spec.validate_for(scale)
    return _score(completion, float(target), scale, spec, copy_sources, facts)


def _score(
    completion: str,
    target: float,
    scale: RatingScale,
    spec: RewardSpec,
    copy_sources: Sequence[str],
    facts: PromptFacts | None = None,
) -> RewardBreakdown:
    check = check_format(
        completion,
        scale,
        spec.template,
        spec.allow_trailing_text,
        copy_sources,
        spec.copy_threshold,
        spec.reject_copies,
    )
    copied = check.copied
    grounded = None if facts is None else answer_grounding(completion, facts, spec.template)
    if not check.ok:
        rating_ok = check.rating is not None and scale.contains(check.rating)
        value = spec.failing_reward(check.tags_found, check.tags_total, rating_ok)
        return RewardBreakdown(value, value, 0.0, False, check.rating, check.reason, copied, grounded)
    assert check.rating is not None
    term = spec.rating_term(check.rating, target, scale)
    total = spec.format_reward + term
    return RewardBreakdown(total, spec.format_reward, term, True, check.rating, "ok", copied, grounded)


def score_batch(
    completions: Sequence[str],
    targets: Sequence[float],
    scale: RatingScale,
    spec: RewardSpec,
    copy_sources: Sequence[Sequence[str]] | None = None,
    facts: Sequence[PromptFacts] | None = None,
) -> list[RewardBreakdown]:
    """`score` for each (completion, target) pair; for GRPO, repeat each target once per sample.
    `copy_sources` / `facts`: one per completion (None: no copy check / no grounding measure)."""
    if len(completions) != len(targets):
        raise ValueError(f"{len(completions)} completions but {len(targets)} targets")
    for name, per_row in (("copy-source lists", copy_sources), ("facts", facts)):
        if per_row is not None and len(per_row) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(per_row)} {name}")
    spec.validate_for(scale)
    for target in targets:
        if not scale.contains(float(target)):
            raise ValueError(f"target rating {target!r} is outside the {scale.name} scale")
    sources = copy_sources if copy_sources is not None else [()] * len(completions)
    facts = facts if facts is not None else [None] * len(completions)
    return [
        _score(text, float(t), scale, spec, src, fact)
        for text, t, src, fact in zip(completions, targets, sources, facts)
    ]
