"""A rule-based RecOne teacher: four-tag rationales written from the prompt's own facts.

RecOne's cold start needs traces from a teacher stronger than the policy. On a CPU with only the
bundled SmolLM2-135M-Instruct there is none: the base model leaves tags unclosed or copies the
prompt's example, and a RecZero-trained policy is no better. This teacher reads the same
`PromptInput` the prompt shows and writes `prompts.rationale`: the user's average and the genres
they rate well above or below it, the item's genres and its average from other users, and the
arithmetic that turns them into a rating,

    rating = item average + (user average - typical rating),   each to one decimal, then to the scale,

where the typical rating is the training data's mean (`RatingDataModule.typical_rating`).
`reczero coldstart --teacher template` keeps a trace only when that rating is within `--tolerance`
of the truth, the same rule as for model teachers; there is no hint round. Use it to run RecOne on a
laptop; use a real model teacher (e.g. Qwen2.5-7B-Instruct on a GPU) for richer rationales.
"""

from __future__ import annotations

from reczero.prompts import PromptInput, rationale

TEACHER_NAME = "template"


def template_trace(inp: PromptInput, typical: float) -> tuple[str, float]:
    """(the four-tag completion, its rating) for one prompt."""
    return rationale(inp, typical)
