"""Think-before-Recommendation prompts and SFT targets (pure: standard library only).

The prompt shows what was known before the target interaction: the user's recent ratings and
reviews, their average, the target item's metadata, other users' recent ratings of it and its
average. It asks for four tagged steps - analyse the user, analyse the item, match them, rate -
with the rating alone in the last block. The SFT target format comes from here too
(`format_completion`), so prompts, targets and the reward's format check never drift apart.

Token budget: `fit_prompt` shortens review text first, then drops the oldest history records,
until the rendered chat fits `max_prompt_tokens`; it reports whether it had to shorten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from reczero.scale import RatingScale

STEP_TAGS = ("analyze user", "analyze item", "match", "rate")

SYSTEM_PROMPT = "You are a careful recommender. You think about a user and an item before you predict a rating."

_STEP_HINTS = (
    "what this user tends to like and dislike, from the history above",
    "what the target item offers, with its likely strengths and weaknesses",
    "whether the item fits this user's tastes, and why",
)


@dataclass
class HistoryLine:
    """One earlier rating: the user's own (title = the item) or another user's of the target item."""

    title: str
    rating: float
    review: str | None = None
    details: str | None = None  # short metadata, e.g. "Drama, Comedy"


@dataclass
class PromptInput:
    """Everything a prompt shows, already resolved to text."""

    scale: RatingScale
    item_title: str
    user_history: list[HistoryLine] = field(default_factory=list)  # oldest first
    item_history: list[HistoryLine] = field(default_factory=list)  # oldest first
    item_details: list[tuple[str, str]] = field(default_factory=list)  # ("Genres", "Drama"), ...
    user_avg: float | None = None
    user_count: int = 0
    item_avg: float | None = None
    item_count: int = 0


def format_rating(value: float, scale: RatingScale) -> str:
    """A rating as the model should write it: '4' on integer scales, '3.5' on half stars."""
    if scale.step >= 1 and float(value).is_integer():
        return str(int(value))
    return f"{value:.1f}".rstrip("0").rstrip(".") if float(value).is_integer() else f"{value:g}"


def truncate(text: str | None, limit: int) -> str | None:
    """At most `limit` characters, cut at a word boundary with an ellipsis; None when nothing is left."""
    if not text or limit <= 0:
        return None
    text = " ".join(text.split())
    if not text:
        return None
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0] if " " in text[: limit - 1] else text[: limit - 1]
    return cut + "…"


def _history_block(lines: list[HistoryLine], scale: RatingScale, review_chars: int, show_title: bool) -> list[str]:
    out = []
    for line in lines:
        head = f'"{line.title}"' if show_title else "A user"
        if show_title and line.details:
            head += f" ({line.details})"
        entry = f"- {head}: {format_rating(line.rating, scale)}"
        review = truncate(line.review, review_chars)
        if review:
            entry += f' - "{review}"'
        out.append(entry)
    return out


def _average(avg: float | None, count: int) -> str:
    if avg is None or count == 0:
        return "no earlier ratings"
    return f"{avg:.2f} over {count} rating{'s' if count != 1 else ''}"


def answer_format(scale: RatingScale) -> str:
    """The four tagged steps the model must write, as shown in the prompt."""
    rows = [f"<{tag}>{hint}</{tag}>" for tag, hint in zip(STEP_TAGS, _STEP_HINTS)]
    rows.append(f"<rate>only the predicted rating, a number from {_num(scale.low)} to {_num(scale.high)}</rate>")
    return "\n".join(rows)


def example_answer(scale: RatingScale) -> str:
    """A one-shot worked answer (about another user and item) for small models that cannot follow the
    skeleton alone; its rating sits at three quarters of the scale (4 on 1-5), near where most
    ratings fall, so a copied number is a plausible guess rather than an outlier."""
    rating = format_rating(round(scale.low + 0.75 * scale.span), scale)
    return "\n".join(
        (
            "Example of a complete answer, about a different user and item:",
            "<analyze user>Enjoys light comedies and animation; rates horror low.</analyze user>",
            "<analyze item>A warm animated comedy; reviewers praise its humour, a few find it slight.</analyze item>",
            "<match>Comedy and animation are this user's favourite genres, so it fits well.</match>",
            f"<rate>{rating}</rate>",
        )
    )


def user_message(inp: PromptInput, review_chars: int = 200, example: bool = False) -> str:
    """The user turn: history, target item, then the instruction with the answer skeleton
    (and, with `example`, a worked answer about another user and item)."""
    scale = inp.scale
    parts = [
        f"Predict how this user will rate the target item on a scale from {_num(scale.low)} to {_num(scale.high)}."
    ]
    parts.append("\nThe user's recent ratings, oldest first:")
    parts.extend(_history_block(inp.user_history, scale, review_chars, show_title=True) or ["- none"])
    parts.append(f"The user's average rating: {_average(inp.user_avg, inp.user_count)}.")
    parts.append(f'\nTarget item: "{inp.item_title}"')
    parts.extend(f"{key}: {value}" for key, value in inp.item_details if value)
    if any(line.review for line in inp.item_history) and review_chars > 0:
        parts.append("Recent ratings of it by other users, oldest first:")
        parts.extend(_history_block(inp.item_history, scale, review_chars, show_title=False))
    else:  # bare ratings read better (and cost fewer tokens) on one line
        ratings = ", ".join(format_rating(line.rating, scale) for line in inp.item_history) or "none"
        parts.append(f"Recent ratings of it by other users, oldest first: {ratings}")
    parts.append(f"The item's average rating: {_average(inp.item_avg, inp.item_count)}.")
    parts.append("\nThink before you rate. Answer in exactly four tagged steps, in this order, then stop:")
    parts.append(answer_format(scale))
    if example:
        parts.append("\n" + example_answer(scale))
    return "\n".join(parts)


def build_messages(
    inp: PromptInput, review_chars: int = 200, system_prompt: str | None = SYSTEM_PROMPT, example: bool = False
) -> list[dict]:
    """Chat messages for `tokenizer.apply_chat_template` (system first when given)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user_message(inp, review_chars, example)})
    return messages


def merge_system(messages: list[dict]) -> list[dict]:
    """Fold a system message into the first user turn, for chat templates without a system role."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    else:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def format_completion(user_analysis: str, item_analysis: str, match: str, rating: float, scale: RatingScale) -> str:
    """The SFT target: the four blocks in order, the rating alone in the last."""
    blocks = (user_analysis.strip(), item_analysis.strip(), match.strip(), format_rating(rating, scale))
    return "\n".join(f"<{tag}>{text}</{tag}>" for tag, text in zip(STEP_TAGS, blocks))


@dataclass
class FittedPrompt:
    text: str
    num_tokens: int
    shortened: bool
    review_chars: int
    dropped_records: int


def fit_prompt(
    inp: PromptInput,
    render: Callable[[PromptInput, int], str],
    count_tokens: Callable[[str], int],
    max_prompt_tokens: int | None,
    review_chars: int = 200,
) -> FittedPrompt:
    """Render `inp` within `max_prompt_tokens`: shorten reviews first, then drop the oldest records.

    `render(inp, review_chars)` gives the full chat text and `count_tokens` its length, so this
    stays independent of any tokenizer library. Raises when even an empty history does not fit.
    """
    text = render(inp, review_chars)
    n = count_tokens(text)
    if max_prompt_tokens is None or n <= max_prompt_tokens:
        return FittedPrompt(text, n, False, review_chars, 0)
    for chars in (review_chars // 2, review_chars // 4, 0):
        text = render(inp, chars)
        n = count_tokens(text)
        if n <= max_prompt_tokens:
            return FittedPrompt(text, n, True, chars, 0)
    current, dropped = inp, 0
    while current.user_history or current.item_history:
        if len(current.user_history) >= len(current.item_history):
            current = replace(current, user_history=current.user_history[1:])
        else:
            current = replace(current, item_history=current.item_history[1:])
        dropped += 1
        text = render(current, 0)
        n = count_tokens(text)
        if n <= max_prompt_tokens:
            return FittedPrompt(text, n, True, 0, dropped)
    raise ValueError(
        f"the prompt needs {n} tokens even with no history, above max_prompt_tokens={max_prompt_tokens}; "
        "raise max_prompt_tokens or shorten the item metadata"
    )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
