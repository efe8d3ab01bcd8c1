"""The rule-based RecOne teacher: its traces pass the reward's format check, say what the prompt
shows, reason to the rating they give, and `coldstart --teacher template` keeps only right ones."""

from __future__ import annotations

import json

import pytest

from reczero import reasoning, rewards
from reczero.cli import main
from reczero.data.schema import SCALES
from reczero.prompts import (
    HistoryLine,
    PromptInput,
    compact_copy_sources,
    compact_message,
    copy_sources,
    scores,
)
from reczero.rationales import compact_rationale, example_answer, genre_deviation, rationale
from reczero.scale import round_up_from

SCALE = SCALES["1-5"]


def make_input(**overrides) -> PromptInput:
    history = [
        HistoryLine("A", 5, details="Comedy, Animation"),
        HistoryLine("B", 5, details="Comedy"),
        HistoryLine("C", 1, details="Horror"),
        HistoryLine("D", 3, details="Drama"),
    ]
    fields = dict(
        scale=SCALE,
        item_title="T",
        user_history=history,
        item_history=[HistoryLine("T", 4), HistoryLine("T", 2)],
        item_details=[("Genres", "Comedy, Romance"), ("Year", "1995")],
        user_avg=3.5,
        user_count=10,
        item_avg=3.0,
        item_count=2,
    )
    return PromptInput(**{**fields, **overrides})


def test_genre_deviation_is_relative_to_the_shown_history():
    dev = genre_deviation(make_input())  # history mean 3.5
    assert dev == {"Comedy": 1.5, "Animation": 1.5, "Horror": -2.5, "Drama": -0.5}


@pytest.mark.parametrize(
    ("overrides", "rating", "words"),
    [
        # item 3.0 + (user 3.5 - typical 3.5) = 3.0; Comedy is liked, Romance not seen
        ({}, 3.0, ["Likes Comedy and Animation", "Dislikes Horror", "3.0 + 0.0 = 3.0", "Comedy suits", '"T"']),
        ({"user_avg": 4.26}, 4.0, ["0.8 above a typical 3.5", "3.0 + 0.8 = 3.8"]),  # 4.3 - 3.5 = 0.8
        ({"user_avg": 2.04, "item_details": [("Genres", "Horror")]}, 2.0, ["3.0 - 1.5 = 1.5", "Horror does not suit"]),
        ({"item_avg": None, "item_count": 0, "item_history": []}, 4.0, ["No ratings yet", "3.5 + 0.0 = 3.5"]),
        ({"user_history": [], "user_avg": None, "user_count": 0}, 3.0, ["No earlier ratings", "typical rater"]),
    ],
)
def test_trace_passes_the_format_check_and_reasons_to_its_rating(overrides, rating, words):
    text, got = rationale(make_input(**overrides), 3.5)
    example = example_answer("k", SCALE, 3.5, ("Comedy", "Drama", "Horror"))
    check = rewards.check_format(text, SCALE, copy_sources=copy_sources(SCALE, example))
    assert check.ok and check.rating == got == rating
    assert all(w in text for w in words), text


def test_half_star_scale_rounds_to_its_step():
    inp = make_input(scale=SCALES["0.5-5"], user_avg=3.3, item_avg=3.0, item_details=[])
    text, got = rationale(inp, 3.5)  # 3.0 + (3.3 - 3.5) = 2.8 -> 3.0 on half stars
    assert got == 3.0 and rewards.check_format(text, SCALES["0.5-5"]).rating == 3.0


def test_coldstart_cli_with_the_template_teacher_keeps_only_right_ratings(tmp_path, tiny_model_dir):
    """Everything it writes stays under tmp_path: the sample cache, and no bundled-model conversion."""
    out = tmp_path / "traces.jsonl"
    args = [
        "coldstart", "--config", "configs/sft.yaml", "--output", str(out), "--teacher", "template",
        "--num-traces", "12", f"--data.cache_dir={tmp_path / 'cache'}", f"--model.init_args.policy.model={tiny_model_dir}", "--data.prompt.max_prompt_tokens=1536",
    ]  # fmt: skip
    stats = main(args)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 12 == stats["kept_direct"] and stats["kept_hint"] == 0 and stats["hint_rejects"] == {}
    assert all(line["rating"] == line["target"] and line["source"] == "direct" for line in lines)
    assert stats["dropped"] == stats["drop_reasons"]["wrong_rating"] > 0  # the rule is wrong often enough
    again = main(args)  # resumes: the output already holds 12, nothing is added
    assert again == stats and len(out.read_text().splitlines()) == 12


# -- the compact, numbers-first prompt and its teacher -----------------------------------------------
def test_scores_shrink_toward_typical_by_count():
    # user: (3.9 - 3.5) * 10 / (10 + 10) = 0.2; item: 3.5 + (4.5 - 3.5) * 2 / (2 + 8) = 3.7
    got = scores(make_input(user_avg=3.9, user_count=10, item_avg=4.5, item_count=2), 3.5, 10.0, 8.0)
    assert (got.user, got.item, got.total, got.typical) == (0.2, 3.7, 3.9, 3.5)
    unshrunk = scores(make_input(user_avg=3.9, item_avg=4.5), 3.5, 0.0, 0.0)
    assert (unshrunk.user, unshrunk.item) == (0.4, 4.5)
    empty = scores(make_input(user_avg=None, user_count=0, item_avg=None, item_count=0), 3.52, 5.0, 5.0)
    assert (empty.user, empty.item) == (0.0, 3.5)  # no ratings: typical, offset 0
    assert scores(make_input(user_avg=3.25, item_avg=3.0), 3.5, 0.0, 0.0).user == -0.3  # halves away from 0


@pytest.mark.parametrize(
    ("total", "round_up_at", "rating"),
    [(3.5, 0.6, 3.0), (3.6, 0.6, 4.0), (3.5, 0.5, 4.0), (5.4, 0.6, 5.0), (0.4, 0.5, 1.0)],
)
def test_round_up_from(total, round_up_at, rating):
    assert round_up_from(total, round_up_at, 1.0, 5.0) == rating


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            {},
            [
                "Likes Comedy and Animation.",
                "Dislikes Horror and Drama.",
                "User score +0.0.",
                "Comedy and Romance.",
                "Comedy suits",
            ],
        ),
        ({"user_history": [], "user_avg": 4.1, "user_count": 3}, ["Average 4.10.", "User score +0.6."]),
        ({"item_details": []}, ['"T".', "Item score"]),
    ],
)
def test_compact_trace_passes_the_format_check_is_grounded_and_adds_its_scores(overrides, words):
    inp = make_input(**overrides)
    score = scores(inp, 3.5, 0.0, 0.0)
    text, rating = compact_rationale(inp, score, 0.6)
    check = rewards.check_format(text, SCALE, copy_sources=compact_copy_sources(SCALE))
    assert check.ok and check.rating == rating == round_up_from(score.total, 0.6, 1.0, 5.0)
    assert f"{score.item:.1f} {'-' if score.user < 0 else '+'} {abs(score.user):.1f} = {score.total:.1f}" in text
    blocks = [text[text.find(f"<{t}>") + len(t) + 2 : text.find(f"</{t}>")] for t in ("analyze user", "analyze item")]
    assert reasoning.grounding(*blocks, reasoning.prompt_facts(inp)).both
    assert all(w in text for w in words), text


def test_compact_message_states_the_numbers_the_match_adds():
    inp = make_input()
    text = compact_message(inp, scores(inp, 3.5, 15.0, 20.0))
    assert "10 earlier ratings, average 3.50" in text and "2 earlier ratings, average 3.00" in text
    assert "Scores (pulled toward the typical 3.5 when based on few ratings): user +0.0, item 3.5" in text
    assert text.index('"A" (Comedy, Animation): 5') < text.index('"D" (Drama): 3')  # oldest first
    assert "<rate>the rating alone, 1 to 5</rate>" in text and "Recent: 4, 2" in text


def test_coldstart_with_the_compact_teacher_keeps_every_trace_and_reports_token_lengths(tmp_path, tiny_model_dir):
    out = tmp_path / "traces.jsonl"
    args = [
        "coldstart", "--config", "configs/sft.yaml", "--output", str(out), "--teacher", "template",
        "--num-traces", "8", "--tolerance", "4", "--data.prompt.style=compact", f"--data.cache_dir={tmp_path / 'cache'}",
        f"--model.init_args.policy.model={tiny_model_dir}",
    ]  # fmt: skip
    main(args)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 8 and all("Item score" in line["completion"] for line in lines)
    stats = json.loads((tmp_path / "traces.jsonl.stats.json").read_text())
    completion, prompt = stats["tokens"]["completion"], stats["tokens"]["prompt"]
    assert completion["n"] == prompt["n"] == 8
    assert 0 < completion["p50"] <= completion["p95"] <= completion["p99"] <= completion["max"] < prompt["p50"]
