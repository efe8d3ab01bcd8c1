"""The rule-based rationales: four-step answers reasoned from a prompt's own facts (pure: standard library).

Two rules, one per prompt style (`data.render.PromptConfig.style`):

- `rationale` (the full prompt): item average + (user average - typical), each to one decimal, then
  to the scale, naming the genres the user rates well above or below their mean;
- `compact_rationale` (the compact prompt): the stated count-shrunk scores added once
  (``item score + user score``), rounded up from a fraction chosen on validation.

Both serve twice: as RecOne's rule teacher (`recone.teacher.teacher_for`, `reczero coldstart --teacher
template`, the `teacher_rule` baseline) and as the one-shot worked example a prompt may show
(`example_input`: a made-up user and item seeded by the sample key, so the example leaks nothing).
Prompt rendering itself lives in `prompts`; this module only writes answers.
"""

from __future__ import annotations

import hashlib
import random

from reczero.prompts import (
    HistoryLine,
    PromptInput,
    Scores,
    format_completion,
    item_genres,
    signed,
    split_genres,
)
from reczero.scale import RatingScale, round_to_scale, round_up_from

GENRE_DEVIATION = 0.5  # a genre counts as liked / disliked this far above / below the user's shown mean


def genre_deviation(inp: PromptInput) -> dict[str, float]:
    """Genre -> the user's mean rating of it minus their mean over the shown history."""
    if not inp.user_history:
        return {}
    mean = sum(line.rating for line in inp.user_history) / len(inp.user_history)
    by_genre: dict[str, list[float]] = {}
    for line in inp.user_history:
        for genre in split_genres(line.details):
            by_genre.setdefault(genre, []).append(line.rating)
    return {g: sum(r) / len(r) - mean for g, r in by_genre.items()}


def _liked_and_disliked(inp: PromptInput) -> tuple[list[str], list[str]]:
    """The user's (at most two) most liked and most disliked genres, by `genre_deviation`."""
    dev = genre_deviation(inp)
    liked = sorted((g for g, d in dev.items() if d >= GENRE_DEVIATION), key=lambda g: -dev[g])[:2]
    disliked = sorted((g for g, d in dev.items() if d <= -GENRE_DEVIATION), key=lambda g: dev[g])[:2]
    return liked, disliked


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def rationale(inp: PromptInput, typical: float) -> tuple[str, float]:
    """(a four-step answer, its rating) reasoned from `inp`'s own facts with one-decimal arithmetic.

    The rule: the item's average from other users, shifted by how far the user's average lies from
    a `typical` rating (the training data's mean): ``rating = item avg + (user avg - typical)``,
    each rounded to one decimal, then to the scale. A user or item without earlier ratings counts as
    typical. Genres the user rates well above or below their mean are named, and the match says
    whether the item's genres are among them. Small models copy numbers well and add badly, so
    every step writes the numbers it uses and the sum it makes.
    """
    scale = inp.scale
    anchor = round(typical, 1)
    liked, disliked = _liked_and_disliked(inp)
    if inp.user_avg is None or not inp.user_count:
        offset, user = 0.0, "No earlier ratings, so treat them as a typical rater."
    else:
        offset = round(round(inp.user_avg, 1) - anchor, 1)
        user = f"Rates {inp.user_avg:.1f} on average over {inp.user_count} rating{'s' if inp.user_count != 1 else ''}"
        side = "above" if offset > 0 else "below"
        user += f", {abs(offset):.1f} {side} a typical {anchor:.1f}." if offset else ", a typical rater."
        if liked:
            user += f" Likes {_names(liked)}."
        if disliked:
            user += f" Dislikes {_names(disliked)}."
    genres = item_genres(inp)
    item = f'"{inp.item_title}": {_names(genres)}.' if genres else f'"{inp.item_title}".'
    if inp.item_avg is None or not inp.item_count:
        base = anchor
        item += f" No ratings yet, so assume a typical {anchor:.1f}."
    else:
        base = round(inp.item_avg, 1)
        item += f" Other users rate it {inp.item_avg:.1f} on average over {inp.item_count} rating"
        item += "s." if inp.item_count != 1 else "."
    total = round(base + offset, 1)
    match = f"{base:.1f} {'-' if offset < 0 else '+'} {abs(offset):.1f} = {total:.1f}."
    fits, clashes = [g for g in genres if g in liked], [g for g in genres if g in disliked]
    if fits:
        match += f" {_names(fits)} suits this user."
    if clashes:
        match += f" {_names(clashes)} does not suit this user."
    rating = round_to_scale(total, scale)
    return format_completion(user, item, match, rating, scale), rating


def compact_rationale(inp: PromptInput, score: Scores, round_up_at: float = 0.5) -> tuple[str, float]:
    """(a four-step answer, its rating) for one compact prompt whose scores are `score`.

    The compact prompt states the count-shrunk scores (`prompts.scores`), so the answer names the user's
    liked and disliked genres and the item's genres (what grounding measures) and writes one addition,
    ``item score + user score``, rounded up from `round_up_at` (a fraction chosen on validation: ratings
    lean above a plain rounding's). Small models copy numbers well and add badly, so it only copies two
    numbers and adds them once.
    """
    liked, disliked = _liked_and_disliked(inp)
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


_EXAMPLE_WORDS = (
    ("Silver", "Quiet", "Last", "Hidden", "Northern", "Paper", "Broken", "Golden", "Winter", "Distant"),
    ("Harbor", "Orchard", "Signal", "Garden", "Letters", "Voyage", "Kingdom", "Bridge", "Season", "Echo"),
)
_EXAMPLE_GENRES = ("Comedy", "Drama", "Horror", "Romance", "Thriller", "Animation", "Documentary", "Western")


def example_input(
    key: str, scale: RatingScale, typical: float, genres: tuple[str, ...] = (), unlike: PromptInput | None = None
) -> PromptInput:
    """A made-up user and item, seeded by `key`: the facts the one-shot example reasons about.

    Nothing in it comes from the data but the genre names (`genres`, else a fixed list), so the example
    leaks nothing, and it differs from prompt to prompt, so a copy of it is never a fit answer. With
    `unlike` (the prompt's own input) the example's averages differ from the prompt's by at least a
    tenth of the scale and its item genre is not one of the prompt item's: an answer that states this
    prompt's facts in the example's words is then never mistaken for a copy (`reasoning.is_copy`).
    """
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    names = list(genres) if len(genres) >= 3 else list(_EXAMPLE_GENRES)
    spread, gap = scale.span / 5, scale.span / 10

    def average(avoid: float | None) -> float:
        for _ in range(100):
            value = scale.clip(typical + rng.uniform(-2, 2) * spread)
            if avoid is None or abs(round(value, 1) - round(avoid, 1)) >= gap:
                return value
        return scale.clip(avoid + (gap if avoid < typical else -gap) * 2)

    def rating(center: float) -> float:
        return round_to_scale(center + rng.uniform(-spread, spread), scale)

    taken = {g.lower() for g in item_genres(unlike)} if unlike is not None else set()
    favourite, disliked, other = rng.sample(names, 3)
    history = [HistoryLine("", rating(scale.high - spread), details=favourite) for _ in range(2)]
    history += [HistoryLine("", rating(scale.low + 1.5 * spread), details=disliked) for _ in range(2)]
    history += [HistoryLine("", rating(typical), details=other) for _ in range(2)]
    title = f"The {rng.choice(_EXAMPLE_WORDS[0])} {rng.choice(_EXAMPLE_WORDS[1])}"
    choices = [g for g in (favourite, disliked, other) if g.lower() not in taken] or [favourite]
    return PromptInput(
        scale=scale,
        item_title=title,
        user_history=history,
        item_details=[("Genres", rng.choice(choices))],
        user_avg=average(unlike.user_avg if unlike is not None and unlike.user_count else None),
        user_count=rng.randint(6, 300),
        item_avg=average(unlike.item_avg if unlike is not None and unlike.item_count else None),
        item_count=rng.randint(3, 400),
    )


def example_answer(
    key: str, scale: RatingScale, typical: float, genres: tuple[str, ...] = (), unlike: PromptInput | None = None
) -> str:
    """The one-shot worked answer shown after the skeleton: `rationale` of `example_input(key, ...)`."""
    return rationale(example_input(key, scale, typical, genres, unlike), typical)[0]
