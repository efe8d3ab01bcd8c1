"""The hint-leak filter of RecOne's hint round: does an explanation written with the true rating give it away?

`reczero coldstart` gives a teacher that found no right rating the true one as a hint and keeps the
explanation only when `leaks_hint` finds nothing (Reason4Rec's rule). Pure: standard library plus
`reczero.scale`.
"""

from __future__ import annotations

import math
import re

from reczero.scale import EXACT_TOLERANCE, RatingScale, format_number

# Rating talk the explanation must not contain (case-insensitive, whole words; "/<high>" and
# "out of <high>" use the scale's top, e.g. "/5" and "out of 5" on 1-5).
RATING_WORDS = ("rating", "ratings", "rated", "rate it", "star", "stars", "score", "scores", "scored")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NUMBER_TOKEN = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+)?(?![\w])")


def leaks_hint(completion: str, rating: float, scale: RatingScale) -> str | None:
    """Why an explanation written with the true `rating` as a hint gives it away, or None when clean.

    Reason4Rec's rule: the rationale must not state the hinted rating nor talk about ratings. Checked
    on the reasoning, i.e. all text before the LAST `<rate>` tag (the three reasoning blocks and
    anything around them; the whole text if there is no `<rate>`), case-insensitively, first hit wins:

    1. ``number:<n>``: the rating as a standalone number: digits not inside a longer number or word
       ("4", "4.0", "4.00", "4-star", "a 4." match for 4; "14", "3.4", "4.5", "4th" do not);
    2. ``word:<w>``: the rating as a whole English word, "one" to "ten" ("four"; 3.5 as "three and a
       half"). "one" is not checked for a rating of 1: as a pronoun ("no one", "one of") it is far too
       common to mean the rating, and would drop most 1-star traces; digits and rating talk still apply;
    3. ``talk:<w>``: rating talk, whole words or phrases: `RATING_WORDS` ("rating", "ratings", "rated",
       "rate it", "star", "stars", "score", "scores", "scored"), "/<high>" and "out of <high>".

    Conservative on purpose: a dropped trace costs one teacher call; a leaked hint teaches the
    student to justify ratings it was never shown how to infer. Never raises on text.
    """
    text = completion[: completion.rfind("<rate>")] if "<rate>" in completion else completion
    lower = text.lower()
    for token in _NUMBER_TOKEN.findall(lower):
        if abs(float(token) - rating) < EXACT_TOLERANCE:
            return f"number:{token}"
    whole, half = int(math.floor(rating)), rating - math.floor(rating)
    if 0 <= whole < len(NUMBER_WORDS) and (whole != 1 or half):
        word = NUMBER_WORDS[whole]
        phrase = word if not half else (f"{word} and a half" if abs(half - 0.5) < 1e-9 else None)
        if phrase and re.search(rf"\b{phrase.replace(' ', '[ -]')}\b", lower):
            return f"word:{phrase}"
    high = format_number(scale.high)
    for talk in (*RATING_WORDS, f"out of {high}"):
        if re.search(rf"\b{re.escape(talk)}\b", lower):
            return f"talk:{talk}"
    if re.search(rf"/\s*{re.escape(high)}(?![0-9])", lower):
        return f"talk:/{high}"
    return None
