"""A rule-based RecOne teacher: four-tag rationales written from the prompt's own facts.

RecOne's cold start needs traces from a teacher stronger than the policy. On a CPU with only the
bundled SmolLM2-135M-Instruct there is none: measured with `reczero coldstart`, the base model
passed 1 of 32 direct tries (the rest unclosed or copied tags), and a RecZero-trained policy copies
the prompt's one-shot example almost verbatim. This teacher reads the same `PromptInput` the prompt
shows (the user's rated titles with their genres and averages, the item's genres and its ratings by
other users), writes what a careful analyst would say about them, and reasons to a rating:

    prediction = mean(user average, item average) + half the user's average deviation on the item's genres

rounded to the scale. `reczero coldstart --teacher template` keeps a trace only when that rating is
within `--tolerance` of the truth, the same rule as for model teachers; there is no hint round. Use
it to exercise RecOne end to end on a laptop; use a real model teacher (e.g. Qwen2.5-7B-Instruct on
a GPU) for traces worth training a paper-grade policy on.
"""

from __future__ import annotations

from collections import defaultdict

from reczero.prompts import PromptInput, format_completion, format_rating
from reczero.scale import RatingScale

TEACHER_NAME = "template"
_DEVIATION = 0.5  # a genre counts as liked / disliked this far above / below the user's mean


def _genres(details: str | None) -> list[str]:
    return [g.strip() for g in (details or "").split(",") if g.strip()]


def genre_deviation(inp: PromptInput) -> dict[str, float]:
    """Genre -> the user's mean rating of it minus their mean over the shown history."""
    if not inp.user_history:
        return {}
    mean = sum(line.rating for line in inp.user_history) / len(inp.user_history)
    by_genre: dict[str, list[float]] = defaultdict(list)
    for line in inp.user_history:
        for genre in _genres(line.details):
            by_genre[genre].append(line.rating)
    return {g: sum(r) / len(r) - mean for g, r in by_genre.items()}


def item_genres(inp: PromptInput) -> list[str]:
    return next((_genres(value) for key, value in inp.item_details if key == "Genres"), [])


def _num(x: float) -> str:
    return f"{x:.1f}"


def _names(genres: list[str]) -> str:
    return genres[0] if len(genres) == 1 else ", ".join(genres[:-1]) + " and " + genres[-1]


def template_trace(inp: PromptInput) -> tuple[str, float]:
    """(the four-tag completion, its rating) for one prompt."""
    scale: RatingScale = inp.scale
    dev = genre_deviation(inp)
    liked = sorted((g for g, d in dev.items() if d >= _DEVIATION), key=lambda g: -dev[g])[:2]
    disliked = sorted((g for g, d in dev.items() if d <= -_DEVIATION), key=lambda g: dev[g])[:2]

    if inp.user_avg is None or inp.user_count == 0:
        user = "No earlier ratings from this user, so nothing is known of their taste."
    else:
        user = f"Rates {_num(inp.user_avg)} on average over {inp.user_count} ratings"
        user += "; a generous rater." if inp.user_avg >= scale.low + 0.7 * scale.span else "."
        if liked:
            user += f" Rates {_names(liked)} above their average."
        if disliked:
            user += f" Rates {_names(disliked)} below it."
        if not liked and not disliked and dev:
            user += " No genre stands out in their recent ratings."

    genres = item_genres(inp)
    item = f"{_names(genres)}." if genres else "Its genre is not given."
    if inp.item_avg is None or inp.item_count == 0:
        item += " Nobody has rated it yet."
    else:
        item += f" Other users rate it {_num(inp.item_avg)} on average over {inp.item_count} ratings."
        if inp.item_history:
            last = inp.item_history[-1].rating
            item += f" The latest gave {format_rating(last, scale)}."

    anchors = [a for a, n in ((inp.user_avg, inp.user_count), (inp.item_avg, inp.item_count)) if a is not None and n]
    base = sum(anchors) / len(anchors) if anchors else scale.low + scale.span / 2
    shared = [g for g in genres if g in dev]
    shift = 0.5 * sum(dev[g] for g in shared) / len(shared) if shared else 0.0
    rating = scale.clip(round((base + shift - scale.low) / scale.step) * scale.step + scale.low)

    fits = [g for g in shared if g in liked]
    clashes = [g for g in shared if g in disliked]
    if fits and not clashes:
        match = f"It is {_names(fits)}, which this user rates highly, so expect a little above {_num(base)}."
    elif clashes and not fits:
        match = f"It is {_names(clashes)}, which this user rates low, so expect a little below {_num(base)}."
    elif fits and clashes:
        match = f"It mixes {_names(fits)}, liked, with {_names(clashes)}, disliked; these roughly cancel out."
    elif shared:
        match = f"The user has seen {_names(shared)} before without a strong reaction, so stay near {_num(base)}."
    else:
        match = f"Nothing in the history speaks to this item, so stay near {_num(base)}."
    return format_completion(user, item, match, rating, scale), rating
