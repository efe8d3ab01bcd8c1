"""Copy detection and grounding on hand-made answers: exact, case-changed and near copies of the
skeleton or the example fail the format; an answer that reasons about this prompt passes and is
grounded; one that talks about something else is not."""

from __future__ import annotations

from reczero import answers, prompts, rationales, reasoning, rewards
from reczero.prompts import HistoryLine, PromptInput
from reczero.scale import SCALES, round_to_scale

SCALE = SCALES["1-5"]
EXAMPLE = rationales.example_answer("u1|i1|100", SCALE, 3.5, ("Drama", "Comedy", "Horror"))
SOURCES = prompts.copy_sources(SCALE, EXAMPLE)


def blocks_of(text: str) -> list[str]:
    return [b for b in answers.reasoning_blocks(text) if b is not None]


def answer(user: str, item: str, match: str, rating: str = "4") -> str:
    return (
        f"<analyze user>{user}</analyze user>\n<analyze item>{item}</analyze item>\n"
        f"<match>{match}</match>\n<rate>{rating}</rate>"
    )


def make_input() -> PromptInput:
    return PromptInput(
        scale=SCALE,
        item_title="Hunt for Red October, The (1990)",
        user_history=[
            HistoryLine("Schindler's List (1993)", 5, details="Drama, War"),
            HistoryLine("Fish Called Wanda, A (1988)", 2, details="Comedy"),
        ],
        item_details=[("Genres", "Action, Thriller"), ("Year", "1990")],
        user_avg=3.96,
        user_count=25,
        item_avg=4.23,
        item_count=88,
    )


GROUNDED = answer(
    "Rates 4.0 on average over 25 ratings and loved Schindler's List.",
    "The Hunt for Red October is an Action thriller; others give it 4.23.",
    "War and action sit close, so a little above the item's average.",
)


def test_an_exact_copy_of_the_example_fails_the_format():
    check = rewards.check_format(EXAMPLE, SCALE, copy_sources=SOURCES)
    assert not check.ok and check.copied
    assert check.reason == "copied_block:analyze user"


def test_a_copy_with_other_case_and_spacing_fails():
    changed = EXAMPLE.replace("Rates", "RATES   ").replace(" on average", "\non  average")
    assert changed != EXAMPLE
    check = rewards.check_format(changed, SCALE, copy_sources=SOURCES)
    assert not check.ok and check.reason.startswith("copied_block:")


def test_a_near_copy_with_a_changed_number_fails():
    user, item, match = blocks_of(EXAMPLE)
    near = answer("My own view of this user.", item.replace(" on average", " in average"), "Mine too.", "3")
    check = rewards.check_format(near, SCALE, copy_sources=SOURCES)
    assert check.reason == "copied_block:analyze item"
    words = reasoning.words(item)
    assert reasoning.is_copy(" ".join(words[:-1] + ["9999"]), item)  # one word changed


def test_copying_the_skeleton_hints_fails():
    hints = answer(
        "What this user tends to like and dislike, from the history above.",
        "the target item and its strengths",
        "whether it fits",
    )
    check = rewards.check_format(hints, SCALE, copy_sources=SOURCES)
    assert check.reason == "copied_block:analyze user"


def test_a_grounded_answer_passes_and_is_grounded():
    check = rewards.check_format(GROUNDED, SCALE, copy_sources=SOURCES)
    assert check.ok and not check.copied
    user, item, _ = blocks_of(GROUNDED)
    g = reasoning.grounding(user, item, reasoning.prompt_facts(make_input()))
    assert g.user and g.item and g.both


def test_an_answer_in_the_examples_words_about_this_prompt_is_not_a_copy():
    """Following the example's structure with this prompt's own facts is what the example is for."""
    text, _ = rationales.rationale(make_input(), 3.5)
    assert not rewards.check_format(text, SCALE, copy_sources=SOURCES).copied


def test_copies_pass_when_rejection_is_off_but_are_still_reported():
    spec = rewards.RewardSpec(reject_copies=False)
    scored = rewards.score(EXAMPLE, 4, SCALE, spec, copy_sources=SOURCES)
    assert scored.format_ok and scored.copied
    strict = rewards.score(EXAMPLE, 4, SCALE, rewards.RewardSpec(), copy_sources=SOURCES)
    assert not strict.format_ok and strict.copied and strict.total == -1.0


def test_grounding_names_facts_of_the_right_side_only():
    facts = reasoning.prompt_facts(make_input())
    # the item's title in the user block and the user's title in the item block ground neither
    swapped = reasoning.grounding("Likes The Hunt for Red October.", "Like Schindler's List.", facts)
    assert not swapped.user and not swapped.item
    assert reasoning.grounding("Average 3.96.", "Average 4.2.", facts).both  # averages, as shown or to 1 decimal
    assert reasoning.grounding("Drama fan.", "A thriller.", facts).both  # genres, any case
    # numbers and genres match as whole words only
    assert not reasoning.grounding("Rated 13.96 times; a dramatic person.", "Thrillers.", facts).user
    assert not reasoning.grounding("Likes films.", None, facts).item


def test_grounding_ignores_the_year_and_a_trailing_article_of_titles():
    facts = reasoning.prompt_facts(make_input())
    assert "hunt for red october" in facts.item_phrases
    assert "fish called wanda" in facts.user_phrases
    assert reasoning.grounding("Enjoyed A Fish Called Wanda.", "Hunt For Red October!", facts).both


def test_the_example_varies_per_prompt_and_passes_the_format():
    other = rationales.example_answer("u2|i9|200", SCALE, 3.5, ("Drama", "Comedy", "Horror"))
    assert other != EXAMPLE
    for scale_name in ("1-5", "0.5-5", "1-10"):
        scale = SCALES[scale_name]
        text = rationales.example_answer("k", scale, (scale.low + scale.high) / 2)
        assert rewards.check_format(text, scale).ok


def test_the_rationale_adds_the_users_offset_to_the_items_average():
    text, rating = rationales.rationale(make_input(), 3.5)
    assert "4.2 + 0.5 = 4.7" in text and rating == 5
    low, low_rating = rationales.rationale(PromptInput(scale=SCALE, item_title="X", user_avg=2.04, user_count=3), 3.5)
    assert "3.5 - 1.5 = 2.0" in low and low_rating == 2  # no item ratings: the typical value stands in
    assert round_to_scale(3.45, SCALE) == 3 and round_to_scale(3.5, SCALE) == 4


def test_a_huge_block_is_not_compared_quadratically():
    big = "word " * 200_000
    assert not reasoning.is_copy(big, "word word word")
    assert reasoning.find_copy([big], SOURCES) is None
