"""Prompts: what the user turn shows, rating formatting, truncation, the token budget and SFT targets.

`fit_prompt` is driven with a whitespace word counter, so every budget below is exact. The SFT
target (`format_completion`) is checked against the reward's own format check and parser, so the
two can never drift apart.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from reczero import prompts, rationales
from reczero.answers import TEMPLATES, check_format, parse_rating
from reczero.prompts import (
    SYSTEM_PROMPT,
    HistoryLine,
    PromptInput,
    build_messages,
    fit_prompt,
    format_completion,
    format_rating,
    merge_system,
    truncate,
    user_message,
)
from reczero.scale import SCALES, RatingScale

FIVE, HALF, TEN = SCALES["1-5"], SCALES["0.5-5"], SCALES["1-10"]


def words(text: str) -> int:
    return len(text.split())


def render(inp: PromptInput, review_chars: int) -> str:
    return user_message(inp, review_chars)


def example(scale: RatingScale = FIVE) -> PromptInput:
    return PromptInput(
        scale=scale,
        item_title="Target Movie (1999)",
        user_history=[
            HistoryLine("Oldest Movie", 2.0, "too slow for me", "Drama"),
            HistoryLine("Middle Movie", 4.0, None, None),
            HistoryLine("Newest Movie", 5.0, "loved every minute", "Comedy, Romance"),
        ],
        item_history=[HistoryLine("Target Movie (1999)", 3.0, "fine"), HistoryLine("Target Movie (1999)", 4.0)],
        item_details=[("Genres", "Drama, Comedy"), ("Year", "1999"), ("Brand", "")],
        user_avg=3.6667,
        user_count=3,
        item_avg=3.5,
        item_count=2,
    )


# -- the user turn --------------------------------------------------------------------------------


def test_user_message_shows_history_oldest_first_with_averages_and_details() -> None:
    text = user_message(example())
    assert text.index('"Oldest Movie"') < text.index('"Middle Movie"') < text.index('"Newest Movie"')
    assert '- "Oldest Movie" (Drama): 2 - "too slow for me"' in text
    assert '- "Middle Movie": 4\n' in text
    assert '- "Newest Movie" (Comedy, Romance): 5 - "loved every minute"' in text
    assert "The user's average rating: 3.67 over 3 ratings." in text
    assert 'Target item: "Target Movie (1999)"' in text
    assert "Genres: Drama, Comedy" in text and "Year: 1999" in text
    assert "Brand" not in text  # empty values are left out
    assert '- A user: 3 - "fine"' in text and "- A user: 4" in text  # other users' ratings, anonymous
    assert text.index('- A user: 3 - "fine"') < text.index("- A user: 4")
    assert "The item's average rating: 3.50 over 2 ratings." in text
    assert text.index("Newest Movie") < text.index("Target item") < text.index("Think before you rate")


def test_user_message_answer_skeleton_and_scale() -> None:
    assert TEMPLATES["four_step"].tags is prompts.STEP_TAGS  # the prompt asks for what the reward checks
    for scale, low, high in ((FIVE, "1", "5"), (HALF, "0.5", "5"), (TEN, "1", "10")):
        text = user_message(example(scale))
        assert f"on a scale from {low} to {high}." in text
        assert f"<rate>only the predicted rating, a number from {low} to {high}</rate>" in text
        skeleton = text[text.index("Think before you rate") :]
        marks = [m for tag in prompts.STEP_TAGS for m in (f"<{tag}>", f"</{tag}>")]
        positions = [skeleton.index(m) for m in marks]
        assert positions == sorted(positions)
        assert all(skeleton.count(m) == 1 for m in marks)
        assert skeleton.endswith("</rate>")


def test_user_message_without_history_and_bare_item_ratings() -> None:
    empty = PromptInput(scale=FIVE, item_title="Lonely")
    text = user_message(empty)
    assert "oldest first:\n- none\n" in text
    assert "The user's average rating: no earlier ratings." in text
    assert "Recent ratings of it by other users, oldest first: none" in text
    assert "The item's average rating: no earlier ratings." in text
    # item ratings without reviews (or with reviews hidden) read as one line
    bare = replace(example(), item_history=[HistoryLine("t", 3.0), HistoryLine("t", 4.5)], item_count=1, item_avg=4.0)
    text = user_message(bare)
    assert "Recent ratings of it by other users, oldest first: 3, 4.5" in text
    assert "The item's average rating: 4.00 over 1 rating." in text
    hidden = user_message(example(), review_chars=0)
    assert "Recent ratings of it by other users, oldest first: 3, 4" in hidden
    assert "too slow" not in hidden and "fine" not in hidden


def test_build_messages() -> None:
    inp = example()
    messages = build_messages(inp, review_chars=50)
    assert messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_message(inp, 50)},
    ]
    assert build_messages(inp, system_prompt=None) == [{"role": "user", "content": user_message(inp)}]
    assert build_messages(inp, system_prompt="Be brief.")[0] == {"role": "system", "content": "Be brief."}


# -- formatting helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "scale", "text"),
    [
        (4.0, FIVE, "4"),
        (1.0, FIVE, "1"),
        (4.5, FIVE, "4.5"),  # continuous predictions are allowed on integer scales
        (3.5, HALF, "3.5"),
        (0.5, HALF, "0.5"),
        (4.0, HALF, "4"),
        (5.0, HALF, "5"),
        (10.0, TEN, "10"),
        (4.25, FIVE, "4.25"),
    ],
)
def test_format_rating(value: float, scale: RatingScale, text: str) -> None:
    assert format_rating(value, scale) == text


def test_truncate() -> None:
    assert truncate(None, 10) is None
    assert truncate("", 10) is None
    assert truncate("   ", 10) is None
    assert truncate("some text", 0) is None
    assert truncate("  a  short\n text ", 100) == "a short text"  # whitespace normalised
    assert truncate("exactly ten", 11) == "exactly ten"
    cut = truncate("the quick brown fox jumps over", 18)
    assert cut == "the quick brown…" and len(cut) <= 18
    assert truncate("the quick brown fox", 12) == "the quick…"  # at a word boundary
    assert truncate("supercalifragilistic", 6) == "super…"  # one long word is cut hard
    for limit in range(1, 40):
        out = truncate("one two three four five six seven eight nine ten", limit)
        assert out is not None and len(out) <= limit


def test_merge_system() -> None:
    plain = [{"role": "user", "content": "U"}]
    assert merge_system(plain) is plain
    assert merge_system([]) == []
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert merge_system(messages) == [{"role": "user", "content": "S\n\nU"}]
    assert messages[1]["content"] == "U"  # the input is not mutated
    assert merge_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]
    odd = [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}]
    assert merge_system(odd) == [{"role": "user", "content": "S"}, {"role": "assistant", "content": "A"}]


# -- token budget ---------------------------------------------------------------------------------


def long_reviews() -> PromptInput:
    review = " ".join(f"word{i}" for i in range(60))  # ~400 characters
    return replace(
        example(),
        user_history=[HistoryLine(f"U{k}", 3.0, review) for k in range(1, 4)],
        item_history=[HistoryLine("T", 4.0, review), HistoryLine("T", 2.0, review)],
    )


def test_fit_prompt_unchanged_when_it_fits() -> None:
    inp = long_reviews()
    full = render(inp, 200)
    for budget in (None, words(full), words(full) + 100):
        fitted = fit_prompt(inp, render, words, budget)
        assert (fitted.text, fitted.num_tokens) == (full, words(full))
        assert (fitted.shortened, fitted.review_chars, fitted.dropped_records) == (False, 200, 0)


@pytest.mark.parametrize("chars", [100, 50, 0])
def test_fit_prompt_shortens_reviews_first(chars: int) -> None:
    inp = long_reviews()
    budget = words(render(inp, chars))
    assert budget < words(render(inp, 200))
    fitted = fit_prompt(inp, render, words, budget)
    assert (fitted.shortened, fitted.review_chars, fitted.dropped_records) == (True, chars, 0)
    assert fitted.text == render(inp, chars) and fitted.num_tokens == budget
    assert '"U1"' in fitted.text  # nothing dropped yet


def test_fit_prompt_then_drops_oldest_records_from_the_longer_history() -> None:
    inp = long_reviews()  # user history U1 U2 U3, item history 2 records
    uh, ih = inp.user_history, inp.item_history
    # the longer history loses its oldest record; a tie drops the user's
    states = [
        (uh[1:], ih),  # 3 vs 2: user
        (uh[2:], ih),  # 2 vs 2: user
        (uh[2:], ih[1:]),  # 1 vs 2: item
        ([], ih[1:]),  # 1 vs 1: user
    ]  # (the last drop, 0 vs 1, turns "oldest first: 2" into "... none": no fewer words)
    for dropped, (users, items) in enumerate(states, start=1):
        expected = render(replace(inp, user_history=users, item_history=items), 0)
        fitted = fit_prompt(inp, render, words, words(expected))
        assert fitted.text == expected, dropped
        assert (fitted.shortened, fitted.review_chars, fitted.dropped_records) == (True, 0, dropped)
    fitted = fit_prompt(inp, render, words, words(render(replace(inp, user_history=uh[1:]), 0)))
    assert '"U1"' not in fitted.text and '"U2"' in fitted.text and '"U3"' in fitted.text


def test_fit_prompt_raises_when_nothing_fits() -> None:
    inp = long_reviews()
    bare = words(render(replace(inp, user_history=[], item_history=[]), 0))
    with pytest.raises(ValueError, match=rf"needs {bare} tokens even with no history.*max_prompt_tokens=10"):
        fit_prompt(inp, render, words, 10)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        fit_prompt(PromptInput(scale=FIVE, item_title="x"), render, words, 5)


# -- SFT targets against the reward ---------------------------------------------------------------


@pytest.mark.parametrize("scale", [FIVE, HALF, TEN], ids=lambda s: s.name)
def test_format_completion_passes_the_reward_format_check(scale: RatingScale) -> None:
    for rating in scale.values():
        text = format_completion("  Likes drama.\n", "A slow drama.", "\nGood fit.  ", rating, scale)
        check = check_format(text, scale)
        assert check.ok, (rating, check.reason)
        assert parse_rating(text) == rating
        assert text.startswith("<analyze user>Likes drama.</analyze user>")
        assert "<match>Good fit.</match>" in text
        assert text.endswith(f"<rate>{format_rating(rating, scale)}</rate>")
    continuous = format_completion("u", "i", "m", 4.5, FIVE)
    assert check_format(continuous, FIVE).ok and parse_rating(continuous) == 4.5


def test_prompts_module_is_pure() -> None:
    code = "import sys, reczero.prompts; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_example_answer_is_a_passing_answer_shown_after_the_skeleton():
    """The one-shot example must itself pass the format check, and the prompt shows it as given."""
    from reczero import rewards
    from reczero.scale import SCALES

    for name in ("1-5", "0.5-5", "1-10"):
        scale = SCALES[name]
        example = rationales.example_answer("u|i|1", scale, scale.low + 0.6 * scale.span)
        assert rewards.check_format(example, scale).ok
        inp = prompts.PromptInput(scale=scale, item_title="X")
        shown = prompts.user_message(inp, example=example)
        assert shown.endswith("about a different user and item:\n" + example)
        assert example not in prompts.user_message(inp)
