"""Reward rules, branch by branch, on hand-written completions with hand-computed rewards."""

from __future__ import annotations

import pytest

from reczero.answers import TEMPLATES, check_format, parse_number, parse_rating
from reczero.rewards import RewardSpec, score, score_batch
from reczero.scale import RatingScale

STARS = RatingScale(1.0, 5.0, 1.0)
HALF = RatingScale(0.5, 5.0, 0.5)
IMDB = RatingScale(1.0, 10.0, 1.0)
PAPER = RewardSpec()


def four(user="likes jazz", item="a jazz album", match="fits well", rate="4", lead="", tail="") -> str:
    return (
        f"{lead}<analyze user>{user}</analyze user>\n<analyze item>{item}</analyze item>\n"
        f"<match>{match}</match>\n<rate>{rate}</rate>{tail}"
    )


# --- parse_number / parse_rating ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("4", 4.0),
        (" 4.5 ", 4.5),
        ("4.0", 4.0),
        ("+4", 4.0),
        ("4.", 4.0),
        (".5", 0.5),
        ("\n 3 \t", 3.0),
        ("4 stars", 4.0),
        ("1 Star", 1.0),
        ("4.5STARS", 4.5),
        ("-2", -2.0),
        ("-0", 0.0),
        ("007", 7.0),
    ],
)
def test_parse_number_accepts(content, expected):
    assert parse_number(content) == expected


@pytest.mark.parametrize(
    "content",
    [
        "",
        "   ",
        "4/5",
        "four",
        "4-5",
        "4 or 5",
        "4 5",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e3",
        "4,5",
        "1,000",
        "Rating: 4",
        "4!",
        "stars",
        "4 stars stars",
        "\u0664",  # Arabic-Indic four: float() would accept it, we do not
        "4\u00bd",
        "+",
        ".",
        "--4",
        "9" * 400,  # finite digits but overflows float to inf
    ],
)
def test_parse_number_rejects(content):
    assert parse_number(content) is None


def test_parse_rating_uses_last_complete_block():
    text = "<rate>2</rate> thinking again <rate>5</rate> <rate>3"
    assert parse_rating(text) == 5.0
    assert parse_rating("<rate>2</rate><rate>oops</rate>") is None
    assert parse_rating("no tags at all") is None
    assert parse_rating("</rate>4<rate>") is None
    assert parse_rating("<answer> 3.5 </answer>", tag="answer") == 3.5
    assert parse_rating(None) is None  # type: ignore[arg-type]


# --- paper reward on 1-5 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "target", "total", "rating"),
    [
        ("4", 4.0, 2.0, 1.0),  # perfect: 1 + 1
        ("4", 5.0, 1.5, 0.5),  # one star off
        ("1", 5.0, 0.0, -1.0),  # four stars off: 1 + (1 - 4/2)
        ("4.5", 4.0, 1.75, 0.75),  # continuous prediction
        (" 3 stars ", 2.0, 1.5, 0.5),
    ],
)
def test_paper_graded_reward(rate, target, total, rating):
    result = score(four(rate=rate), target, STARS, PAPER)
    assert result.format_ok and result.reason == "ok"
    assert result.total == pytest.approx(total)
    assert result.format == 1.0
    assert result.rating == pytest.approx(rating)
    assert result.total == pytest.approx(result.format + result.rating)


def test_format_failure_scores_minus_one():
    result = score("I would say 4.", 4.0, STARS, PAPER)
    assert (result.total, result.format, result.rating, result.format_ok) == (-1.0, -1.0, 0.0, False)
    assert result.reason == "missing_tag:analyze user"
    assert result.parsed is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (four() + "<rate>5</rate>", "duplicate_tag:rate"),
        (four().replace("</match>", "</match></match>"), "duplicate_tag:match"),
        (four().replace("<match>fits well</match>", ""), "missing_tag:match"),
        (four().replace("</match>", ""), "unclosed_tag:match"),
        (four().replace("<match>", ""), "unopened_tag:match"),
        (four().replace("</rate>", ""), "unclosed_tag:rate"),
        # analyze item block moved after match: out of order
        (
            "<analyze user>u</analyze user><match>m</match><analyze item>i</analyze item><rate>4</rate>",
            "out_of_order",
        ),
        # match nested inside analyze user
        (
            "<analyze user>u <match>m</match></analyze user><analyze item>i</analyze item><rate>4</rate>",
            "out_of_order",
        ),
        # close before open
        ("<analyze user>u</analyze user><analyze item>i</analyze item></match>m<match><rate>4</rate>", "out_of_order"),
        # overlapping blocks
        ("<analyze user>u<analyze item></analyze user>i</analyze item><match>m</match><rate>4</rate>", "out_of_order"),
        (four(match=""), "empty_block:match"),
        (four(user=" \n\t "), "empty_block:analyze user"),
        (four(item="\u3000"), "empty_block:analyze item"),  # ideographic space is whitespace too
        (four(rate=""), "unparsable_rating"),
        (four(rate="NaN"), "unparsable_rating"),
        (four(rate="inf"), "unparsable_rating"),
        (four(rate="4/5"), "unparsable_rating"),
        (four(rate="four"), "unparsable_rating"),
        (four(rate="4 or 5"), "unparsable_rating"),
        (four(rate="6"), "rating_out_of_scale"),
        (four(rate="0"), "rating_out_of_scale"),
        (four(rate="-0"), "rating_out_of_scale"),
        (four(rate="5.01"), "rating_out_of_scale"),
        (four(tail=" Hope this helps!"), "trailing_text"),
        (four().replace("<rate>", "<Rate>").replace("</rate>", "</Rate>"), "missing_tag:rate"),
    ],
)
def test_format_failures(text, reason):
    check = check_format(text, STARS)
    assert not check.ok
    assert check.reason == reason
    result = score(text, 4.0, STARS, PAPER)
    assert result.total == -1.0 and not result.format_ok and result.reason == reason


def test_first_failure_wins_in_tag_order():
    text = "<rate>4</rate><rate>4</rate>"  # analyze user is missing and rate is duplicated
    assert check_format(text, STARS).reason == "missing_tag:analyze user"


def test_allowed_surroundings():
    assert check_format(four(lead="Let me think.\n"), STARS).ok
    assert check_format(four(tail="\n\n  "), STARS).ok
    assert check_format(four(tail="<|im_end|>\n"), STARS).ok
    assert check_format(four(tail="</s><|endoftext|>"), STARS).ok
    assert check_format(four(tail=" extra"), STARS, allow_trailing_text=True).ok
    between = four().replace("</analyze user>\n", "</analyze user>\nNow the item.\n")
    assert check_format(between, STARS).ok
    # other templates' tags inside the blocks are just text
    assert check_format(four(match="<think>hmm</think>"), STARS).ok


def test_trailing_text_is_allowed_by_spec():
    spec = RewardSpec(allow_trailing_text=True)
    assert score(four(tail=" I hope that helps"), 4.0, STARS, spec).total == 2.0


def test_check_format_reports_rating_and_tag_counts():
    check = check_format(four(rate="6"), STARS)
    assert (check.tags_found, check.tags_total, check.rating) == (8, 8, 6.0)
    check = check_format(four() + four(), STARS)
    assert check.tags_found == 0 and check.rating == 4.0
    check = check_format("<analyze user>x</analyze user><rate>3</rate>", STARS)
    assert check.tags_found == 4 and check.reason == "missing_tag:analyze item"
    check = check_format(four(), STARS)
    assert check.ok and check.rating == 4.0 and check.tags_found == 8
    assert check_format(12345, STARS).reason == "not_text"  # type: ignore[arg-type]


def test_four_step_tag_strings():
    assert TEMPLATES["four_step"].tags == ("analyze user", "analyze item", "match", "rate")
    assert TEMPLATES["four_step"].n_tag_strings == 8


@pytest.mark.parametrize(
    ("text", "reason", "parsed"),
    [
        ("x" * 1_000_000, "missing_tag:analyze user", None),
        ("<rate>" * 150_000, "missing_tag:analyze user", None),
        ("</rate>" * 150_000, "missing_tag:analyze user", None),
        ("<rate>4" + " " * 1_000_000 + "x</rate>", "missing_tag:analyze user", None),
        ("<rate>" + "1" * 1_000_000 + "</rate>", "missing_tag:analyze user", None),  # inf is no rating
        ("<rate>" + "1" * 1_000_000 + "x</rate>", "missing_tag:analyze user", None),
        (four(match="because " * 130_000), "ok", 4.0),
        (four(tail=" " * 1_000_000 + "x"), "trailing_text", 4.0),
        ("<analyze user>" * 70_000 + "<" * 100_000, "duplicate_tag:analyze user", None),
    ],
)
def test_one_megabyte_adversarial_completions_get_their_verdict(text, reason, parsed):
    """Texts built to make a backtracking parser blow up are scored, without raising, to the right verdict."""
    result = score(text, 4.0, STARS, PAPER)
    assert (result.reason, result.parsed, parse_rating(text)) == (reason, parsed, parsed)
    assert result.total == (2.0 if reason == "ok" else PAPER.format_penalty)


# --- ablations and other scales ------------------------------------------------------------------


def test_exact_match_ablation():
    spec = RewardSpec(rating_reward="exact")
    assert score(four(rate="4"), 4.0, STARS, spec).total == 3.0  # 1 + 2
    assert score(four(rate="4.0"), 4.0, STARS, spec).total == 3.0
    wrong = score(four(rate="5"), 4.0, STARS, spec)
    assert (wrong.total, wrong.rating) == (-0.5, -1.5)  # 1 - 1.5
    assert score(four(rate="4.5"), 4.0, STARS, spec).total == -0.5
    assert score("4", 4.0, STARS, spec).total == -1.0
    assert spec.bounds(STARS) == (-1.0, 3.0)


def test_think_answer_template():
    spec = RewardSpec(template="think_answer")
    good = "<think>The user loves jazz.</think>\n<answer>5</answer>"
    assert score(good, 5.0, STARS, spec).total == 2.0
    assert check_format("<think> </think><answer>5</answer>", STARS, "think_answer").reason == "empty_block:think"
    assert check_format("<answer>5</answer><think>x</think>", STARS, "think_answer").reason == "out_of_order"
    assert check_format(four(), STARS, "think_answer").reason == "missing_tag:think"
    assert check_format(good, STARS, "think_answer").tags_total == 4


def test_answer_only_template():
    spec = RewardSpec(template="answer_only")
    assert score("<answer>3</answer>", 4.0, STARS, spec).total == 1.5
    assert score(" <answer> 3 </answer> <|im_end|>", 3.0, STARS, spec).total == 2.0
    assert check_format("<answer></answer>", STARS, "answer_only").reason == "unparsable_rating"
    assert check_format("<rate>3</rate>", STARS, "answer_only").reason == "missing_tag:answer"
    assert TEMPLATES["answer_only"].tags == ("answer",)


def test_divisor_scale_on_imdb():
    spec = RewardSpec(divisor="scale")
    assert spec.divisor_for(IMDB) == 9.0
    assert score(four(rate="10"), 10.0, IMDB, spec).total == 2.0
    assert score(four(rate="1"), 10.0, IMDB, spec).total == pytest.approx(1.0)  # 1 + (1 - 9/9)
    assert score(four(rate="8"), 10.0, IMDB, spec).total == pytest.approx(1 + 1 - 2 / 9)
    assert score(four(rate="7.5"), 10.0, IMDB, spec).total == pytest.approx(1 + 1 - 2.5 / 9)
    assert spec.bounds(IMDB) == (-1.0, 2.0)
    # on 1-5 "scale" means /4: four off gives 1 + 0
    assert score(four(rate="1"), 5.0, STARS, spec).total == pytest.approx(1.0)


def test_paper_divisor_on_imdb_is_rejected_unless_clipped():
    with pytest.raises(ValueError, match="divisor='scale'"):
        score(four(rate="1"), 10.0, IMDB, PAPER)
    clipped = RewardSpec(clip_rating_reward=True)
    assert score(four(rate="1"), 10.0, IMDB, clipped).total == 1.0  # term floored at 0
    assert score(four(rate="9"), 10.0, IMDB, clipped).total == 1.5
    assert clipped.bounds(IMDB) == (-1.0, 2.0)


def test_clip_keeps_paper_values_on_one_to_five():
    clipped = RewardSpec(clip_rating_reward=True)
    assert score(four(rate="3"), 5.0, STARS, clipped).total == 1.0  # 1 - 2/2 = 0, no clip needed
    assert score(four(rate="1"), 5.0, STARS, clipped).total == 1.0  # -1 clipped to 0
    assert score(four(rate="1"), 5.0, STARS, PAPER).total == 0.0  # paper arithmetic


def test_half_star_scale():
    assert score(four(rate="4.5"), 5.0, HALF, PAPER).total == 1.75
    assert check_format(four(rate="0.5"), HALF).ok
    assert check_format(four(rate="0.4"), HALF).reason == "rating_out_of_scale"
    assert PAPER.bounds(HALF) == (-1.0, 2.0)
    assert PAPER.passing_range(HALF) == (pytest.approx(-0.25), 2.0)  # 1 + 1 - 4.5/2


# --- format shaping -----------------------------------------------------------------------------


def test_format_shaping_values():
    spec = RewardSpec(format_shaping=0.5)
    assert score("no tags", 4.0, STARS, spec).total == -1.0
    # all 8 tags once, rating parsed in scale, but a block is empty: full progress
    assert score(four(match=" "), 4.0, STARS, spec).total == pytest.approx(-0.5)
    # all 8 tags, rating out of scale: 0.75 of the credit
    assert score(four(rate="7"), 4.0, STARS, spec).total == pytest.approx(-1 + 0.5 * 0.75)
    # 4 of 8 tags, no rating
    half_tags = "<analyze user>u</analyze user><analyze item>i</analyze item>"
    assert score(half_tags, 4.0, STARS, spec).total == pytest.approx(-1 + 0.5 * 0.75 * 4 / 8)
    # a parsed rating without the reasoning tags: 2 tag strings + rating
    assert score("<rate>4</rate>", 4.0, STARS, spec).total == pytest.approx(-1 + 0.5 * (0.75 * 2 / 8 + 0.25))
    # format and rating components of a shaped failure
    result = score(half_tags, 4.0, STARS, spec)
    assert result.rating == 0.0 and result.format == result.total


def test_format_shaping_is_monotone_and_below_passing():
    spec = RewardSpec(format_shaping=0.9)
    full = four(match="")  # every tag once, empty match block: fails
    pieces = [
        "",
        "<analyze user>",
        "<analyze user>u</analyze user>",
        "<analyze user>u</analyze user><analyze item>",
        "<analyze user>u</analyze user><analyze item>i</analyze item>",
        "<analyze user>u</analyze user><analyze item>i</analyze item><match>",
        "<analyze user>u</analyze user><analyze item>i</analyze item><match></match>",
        "<analyze user>u</analyze user><analyze item>i</analyze item><match></match><rate>",
        full.replace("4</rate>", "x</rate>"),
        full,
    ]
    totals = [score(text, 4.0, STARS, spec).total for text in pieces]
    assert totals == sorted(totals)
    assert len(set(totals)) == len(totals)
    low_pass, _ = spec.passing_range(STARS)
    assert max(totals) < low_pass
    assert max(totals) == pytest.approx(-1 + 0.9)
    assert spec.bounds(STARS) == (-1.0, 2.0)


def test_format_shaping_too_large_is_rejected():
    with pytest.raises(ValueError, match="format_shaping|shaping"):
        score(four(), 4.0, STARS, RewardSpec(format_shaping=1.0))  # best failure 0 == worst pass 0
    with pytest.raises(ValueError):
        RewardSpec(format_shaping=1.0).validate_for(STARS)
    RewardSpec(format_shaping=0.99).validate_for(STARS)


# --- spec validation, bounds and batch -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"template": "xml"}, "unknown template"),
        ({"rating_reward": "mse"}, "rating_reward"),
        ({"divisor": "span"}, "divisor"),
        ({"divisor": 0.0}, "divisor"),
        ({"divisor": -2.0}, "divisor"),
        ({"divisor": float("nan")}, "divisor"),
        ({"divisor": True}, "divisor"),
        ({"format_shaping": -0.1}, "format_shaping"),
        ({"format_penalty": 1.0}, "format_penalty"),
        ({"format_reward": float("inf")}, "format_reward"),
        ({"exact_correct": -2.0}, "exact_wrong"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardSpec(**kwargs)


def test_bounds_paper_and_variants():
    assert PAPER.bounds(STARS) == (-1.0, 2.0)
    assert RewardSpec(format_penalty=-2.0).bounds(STARS) == (-2.0, 2.0)
    assert RewardSpec(divisor=1.0, format_penalty=-4.0).bounds(STARS) == (-4.0, 2.0)  # worst pass 1 + 1 - 4 = -2


def test_target_outside_scale_raises():
    with pytest.raises(ValueError, match="outside"):
        score(four(), 0.0, STARS, PAPER)
    with pytest.raises(ValueError, match="outside"):
        score_batch([four()], [6.0], STARS, PAPER)


def test_score_batch():
    texts = [four(rate="4"), four(rate="5"), "junk"]
    results = score_batch(texts, [4.0, 4.0, 4.0], STARS, PAPER)
    assert [r.total for r in results] == [2.0, 1.5, -1.0]
    assert [r.parsed for r in results] == [4.0, 5.0, None]
    with pytest.raises(ValueError, match="2 targets"):
        score_batch(texts, [4.0, 4.0], STARS, PAPER)
    assert score_batch([], [], STARS, PAPER) == []
