"""RecOne's rule teacher: the rule-based rationale that matches a config's prompt style.

RecOne's cold start needs traces from a teacher stronger than the policy. On a CPU with only the
bundled SmolLM2-135M-Instruct there is none: the base model leaves tags unclosed or copies the
prompt's example. The rule teacher writes four-tag answers from the same `PromptInput` the prompt
shows (`reczero.rationales`: `rationale` for the full prompt, `compact_rationale` for the compact one).

`reczero coldstart --teacher template` uses it and keeps a trace only when its rating is within
`--tolerance` of the truth (there is no hint round). The compact rule's constants are tuned by
benchmarks/tune_teacher.py on validation samples only; the teacher is scored on test as
`teacher_rule` by `reczero baselines`.
"""

from __future__ import annotations

from collections.abc import Callable

from reczero.prompts import PromptInput, scores
from reczero.rationales import compact_rationale, rationale

TEACHER_NAME = "template"  # `reczero coldstart --teacher template`: the rule teacher, no model


def teacher_for(prompt, typical: float) -> Callable[[PromptInput], tuple[str, float]]:
    """The rule teacher that matches `prompt` (a `data.render.PromptConfig`): inp -> (trace, rating)."""
    if prompt.style == "compact":
        return lambda inp: compact_rationale(
            inp, scores(inp, typical, prompt.user_shrink, prompt.item_shrink), prompt.round_up_at
        )
    return lambda inp: rationale(inp, typical)
