"""Think-before-Recommendation prompts and SFT targets (pure: standard library only).

The prompt shows what was known before the target interaction: the user's recent ratings and
reviews, their average, the target item's metadata, other users' recent ratings of it and its
average. It asks for four tagged steps - analyse the user, analyse the item, match them, rate -
with the rating alone in the last block, or for the tags of another reward template (`tags`: the
ablations' `<think>`/`<answer>` and `<answer>` alone, `answers.TEMPLATES`). The SFT target format
comes from here too (`format_completion`), so prompts, targets and the reward's format check never
drift apart.

Token budget: `fit_prompt` shortens review text first, then drops the oldest history records,
until the rendered chat fits `max_prompt_tokens`; it reports whether it had to shorten.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from reczero.scale import RatingScale, format_number

STEP_TAGS = ("analyze user", "analyze item", "match", "rate")

SYSTEM_PROMPT = "You are a careful recommender. You think about a user and an item before you predict a rating."

_STEP_HINTS = (
    "what this user tends to like and dislike, from the history above",
    "what the target item offers, with its likely strengths and weaknesses",
    "whether the item fits this user's tastes, and why",
)
# the hint of every reasoning tag a reward template (`answers.TEMPLATES`) may ask for
_TAG_HINTS = {
    **dict(zip(STEP_TAGS, _STEP_HINTS)),
    "think": "what this user likes and dislikes, what the target item offers, and whether the two fit",
}


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
    key: str = ""  # the sample's identity ("user|item|timestamp"): seeds its one-shot example


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


def answer_format(scale: RatingScale, tags: tuple[str, ...] = STEP_TAGS) -> str:
    """The tagged steps the model must write, as shown in the prompt: `tags` are the reward template's
    (`answers.Template.tags`, the rating tag last), each with its hint."""
    rows = [f"<{tag}>{_TAG_HINTS[tag]}</{tag}>" for tag in tags[:-1]]
    rows.append(f"<{tags[-1]}>{_rate_hint(scale)}</{tags[-1]}>")
    return "\n".join(rows)


def _instruction(tags: tuple[str, ...]) -> str:
    if len(tags) == 1:
        return "Answer with the tagged rating alone, then stop:"
    count = {2: "two", 3: "three", 4: "four"}.get(len(tags), str(len(tags)))
    return f"Think before you rate. Answer in exactly {count} tagged steps, in this order, then stop:"


def in_template(answer: str, tags: tuple[str, ...]) -> str:
    """A four-step answer (`format_completion`) rewritten in another template's `tags`: the reasoning
    blocks joined into its reasoning tag (if it has one), the rating in its rating tag."""
    if tags == STEP_TAGS:
        return answer
    blocks = [answer[answer.find(f"<{t}>") + len(t) + 2 : answer.find(f"</{t}>")] for t in STEP_TAGS]
    reasoning = " ".join(b.strip() for b in blocks[:-1])
    rows = [f"<{tag}>{reasoning}</{tag}>" for tag in tags[:-1]] + [f"<{tags[-1]}>{blocks[-1]}</{tags[-1]}>"]
    return "\n".join(rows)


def _rate_hint(scale: RatingScale) -> str:
    return f"only the predicted rating, a number from {format_number(scale.low)} to {format_number(scale.high)}"


# -- genres, as the prompt shows them ("Genres: Drama, Comedy"; Amazon's "Categories") ----------------
GENRE_KEYS = ("Genres", "Categories")


def split_genres(details: str | None) -> list[str]:
    """The genres of a comma-separated metadata line ("Drama, Comedy" -> ["Drama", "Comedy"])."""
    return [g.strip() for g in (details or "").split(",") if g.strip()]


def item_genres(inp: PromptInput) -> list[str]:
    """The target item's genres, from its first genre line."""
    return next((split_genres(value) for key, value in inp.item_details if key in GENRE_KEYS), [])


def copy_sources(scale: RatingScale, example: str | None = None, tags: tuple[str, ...] = STEP_TAGS) -> tuple[str, ...]:
    """The texts an answer's reasoning must not copy: the skeleton's hints and the example's reasoning blocks."""
    return (*(_TAG_HINTS[tag] for tag in tags[:-1]), _rate_hint(scale), *example_blocks(example, tags))


def example_blocks(example: str | None, tags: tuple[str, ...] = STEP_TAGS) -> tuple[str, ...]:
    """The reasoning blocks of a one-shot example (none without one)."""
    blocks = []
    for tag in tags[:-1] if example else ():
        start, end = example.find(f"<{tag}>"), example.find(f"</{tag}>")
        if 0 <= start < end:
            blocks.append(example[start + len(tag) + 2 : end])
    return tuple(blocks)


# -- the compact, numbers-first prompt (`PromptConfig.style: compact`) ------------------------------
@dataclass(frozen=True)
class Scores:
    """The numbers a compact prompt states and its match step adds, each to one decimal.

    An average resting on few ratings is pulled toward the typical rating (shrinkage):
    ``item = typical + (item avg - typical) * n / (n + item_shrink)`` and
    ``user = (user avg - typical) * n / (n + user_shrink)``, the user's as an offset from typical.
    A side without earlier ratings scores the typical rating (offset 0). The shrinkage constants are
    chosen on validation samples (benchmarks/tune_teacher.py)."""

    typical: float
    user: float  # the user's offset from typical
    item: float  # the item's score on the scale

    @property
    def total(self) -> float:
        return round(self.item + self.user, 1)


def scores(inp: PromptInput, typical: float, user_shrink: float, item_shrink: float) -> Scores:
    """`Scores` of `inp` around `typical` (the train split's mean rating)."""
    user = 0.0
    if inp.user_avg is not None and inp.user_count:
        user = (inp.user_avg - typical) * inp.user_count / (inp.user_count + user_shrink)
    item = typical
    if inp.item_avg is not None and inp.item_count:
        item = typical + (inp.item_avg - typical) * inp.item_count / (inp.item_count + item_shrink)
    return Scores(typical=round(typical, 1), user=_round1(user), item=_round1(inp.scale.clip(item)))


def _round1(x: float) -> float:
    """One decimal, halves away from zero (what a reader expects; Python's round() goes to even), no -0.0."""
    value = math.floor(abs(x) * 10 + 0.5 + 1e-9) / 10
    return math.copysign(value, x) if value else 0.0


def signed(x: float) -> str:
    """An offset as the compact prompt and its traces write it: '+0.3', '-0.2', '+0.0'."""
    return f"{'-' if x < 0 else '+'}{abs(x):.1f}"


_COMPACT_HINTS = {
    "analyze user": "liked and disliked genres, user score",
    "analyze item": "the item's genres, item score",
    "match": "the fit, then item score + user score",
    "think": "liked and disliked genres, the item's genres, then item score + user score",
}


def compact_format(scale: RatingScale, tags: tuple[str, ...] = STEP_TAGS) -> str:
    """The compact prompt's answer skeleton: `tags` with short hints, the rating tag last."""
    rows = [f"<{tag}>{_COMPACT_HINTS[tag]}</{tag}>" for tag in tags[:-1]]
    rows.append(f"<{tags[-1]}>{_compact_rate_hint(scale)}</{tags[-1]}>")
    return "\n".join(rows)


def compact_message(inp: PromptInput, score: Scores, tags: tuple[str, ...] = STEP_TAGS, review_chars: int = 0) -> str:
    """The compact user turn: counts and averages first, the recent history as short lines, the scores
    the match step adds, then the skeleton. Reviews only where `review_chars` > 0."""
    scale = inp.scale
    lo, hi = format_number(scale.low), format_number(scale.high)
    count = lambda n: f"{n} earlier rating{'s' if n != 1 else ''}"  # noqa: E731
    parts = [f"Predict the user's rating of the target item, from {lo} to {hi}."]
    if inp.user_avg is not None and inp.user_count:
        parts.append(f"\nUser: {count(inp.user_count)}, average {inp.user_avg:.2f}. Recent, oldest first:")
    else:
        parts.append("\nUser: no earlier ratings.")
    parts.extend(_history_block(inp.user_history, scale, review_chars, show_title=True))
    genres = item_genres(inp)
    parts.append(f'\nTarget item: "{inp.item_title}"' + (f" ({', '.join(genres)})" if genres else ""))
    if inp.item_avg is not None and inp.item_count:
        recent = ", ".join(format_rating(line.rating, scale) for line in inp.item_history)
        parts.append(
            f"Item: {count(inp.item_count)}, average {inp.item_avg:.2f}." + (f" Recent: {recent}" if recent else "")
        )
    else:
        parts.append("Item: no earlier ratings.")
    parts.append(
        f"Scores (pulled toward the typical {score.typical:.1f} when based on few ratings): "
        f"user {signed(score.user)}, item {score.item:.1f}"
    )
    parts.append("\nAnswer in these tagged steps, then stop:" if len(tags) > 1 else "\n" + _instruction(tags))
    parts.append(compact_format(scale, tags))
    return "\n".join(parts)


def _compact_rate_hint(scale: RatingScale) -> str:
    return f"the rating alone, {format_number(scale.low)} to {format_number(scale.high)}"


def compact_copy_sources(
    scale: RatingScale, tags: tuple[str, ...] = STEP_TAGS, example: str | None = None
) -> tuple[str, ...]:
    """What an answer to a compact prompt must not copy: its skeleton's hints and the example's blocks."""
    return (*(_COMPACT_HINTS[tag] for tag in tags[:-1]), _compact_rate_hint(scale), *example_blocks(example, tags))


def user_message(
    inp: PromptInput, review_chars: int = 200, example: str | None = None, tags: tuple[str, ...] = STEP_TAGS
) -> str:
    """The user turn: history, target item, then the instruction with the answer skeleton of `tags`
    (and, with `example`, that worked answer about another user and item)."""
    scale = inp.scale
    parts = [
        f"Predict how this user will rate the target item on a scale from {format_number(scale.low)} to {format_number(scale.high)}."
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
    parts.append("\n" + _instruction(tags))
    parts.append(answer_format(scale, tags))
    if example:
        parts.append("\nExample of a complete answer, about a different user and item:\n" + example)
    return "\n".join(parts)


def build_messages(
    inp: PromptInput,
    review_chars: int = 200,
    system_prompt: str | None = SYSTEM_PROMPT,
    example: str | None = None,
    tags: tuple[str, ...] = STEP_TAGS,
) -> list[dict]:
    """Chat messages for `tokenizer.apply_chat_template` (system first when given)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user_message(inp, review_chars, example, tags)})
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
