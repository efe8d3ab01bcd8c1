"""Rule-based RecOne teachers: four-tag rationales written from the prompt's own facts.

RecOne's cold start needs traces from a teacher stronger than the policy. On a CPU with only the
bundled SmolLM2-135M-Instruct there is none: the base model leaves tags unclosed or copies the
prompt's example. These teachers read the same `PromptInput` the prompt shows.

- `template_trace` (the full prompt, `prompts.rationale`): item average + (user average - typical),
  each to one decimal, then to the scale.
- `compact_trace` (the compact prompt, `prompt.style: compact`): the prompt states count-shrunk
  scores (`prompts.scores`), so the trace names the user's liked and disliked genres and the item's
  genres (what grounding measures) and writes one addition, ``item score + user score``, rounded up
  from `round_up_at` (a fraction chosen on validation: ratings lean above a plain rounding's). Small
  models copy numbers well and add badly, so the trace only copies two numbers and adds them once.

`reczero coldstart --teacher template` uses the one that matches the config's prompt style and keeps
a trace only when its rating is within `--tolerance` of the truth (there is no hint round). The
constants are tuned by benchmarks/tune_teacher.py on validation samples only; the teacher is scored
on test as `teacher_rule` by `reczero baselines`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from reczero.prompts import (
    GENRE_DEVIATION,
    PromptInput,
    Scores,
    format_completion,
    genre_deviation,
    item_genres,
    rationale,
    scores,
    signed,
)

TEACHER_NAME = "template"


def template_trace(inp: PromptInput, typical: float) -> tuple[str, float]:
    """(the four-tag completion, its rating) for one full-style prompt."""
    return rationale(inp, typical)


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def round_up_from(value: float, round_up_at: float, low: float, high: float, step: float = 1.0) -> float:
    """`value` on the scale's grid, rounded up when its fraction of a step is at least `round_up_at`."""
    steps = (value - low) / step
    whole = math.floor(steps + 1e-9)
    rating = low + (whole + (steps - whole >= round_up_at - 1e-6)) * step
    return min(max(rating, low), high)


def compact_trace(inp: PromptInput, score: Scores, round_up_at: float = 0.5) -> tuple[str, float]:
    """(the four-tag completion, its rating) for one compact prompt whose scores are `score`."""
    dev = genre_deviation(inp)
    liked = sorted((g for g, d in dev.items() if d >= GENRE_DEVIATION), key=lambda g: -dev[g])[:2]
    disliked = sorted((g for g, d in dev.items() if d <= -GENRE_DEVIATION), key=lambda g: dev[g])[:2]
    user = []
    if liked:
        user.append(f"Likes {_names(liked)}.")
    if disliked:
        user.append(f"Dislikes {_names(disliked)}.")
    if not user and inp.user_avg is not None and inp.user_count:  # no genre to ground it: the average does
        user.append(f"Average {inp.user_avg:.2f}.")
    elif not user:
        user.append("No earlier ratings.")
    user.append(f"User score {signed(score.user)}.")
    genres = item_genres(inp)
    item = (f"{_names(genres)}." if genres else f'"{inp.item_title}".') + f" Item score {score.item:.1f}."
    fits = [g for g in genres if g in liked]
    clashes = [g for g in genres if g in disliked]
    match = []
    if fits:
        match.append(f"{_names(fits)} suits this user.")
    if clashes:
        match.append(f"{_names(clashes)} does not.")
    match.append(f"{score.item:.1f} {'-' if score.user < 0 else '+'} {abs(score.user):.1f} = {score.total:.1f}")
    scale = inp.scale
    rating = round_up_from(score.total, round_up_at, scale.low, scale.high, scale.step)
    return format_completion(" ".join(user), item, " ".join(match), rating, scale), rating


def teacher_for(prompt, typical: float) -> Callable[[PromptInput], tuple[str, float]]:
    """The rule teacher that matches `prompt` (a `data.render.PromptConfig`): inp -> (trace, rating)."""
    if prompt.style == "compact":
        return lambda inp: compact_trace(
            inp, scores(inp, typical, prompt.user_shrink, prompt.item_shrink), prompt.round_up_at
        )
    return lambda inp: template_trace(inp, typical)
