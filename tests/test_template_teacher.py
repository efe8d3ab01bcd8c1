"""The rule-based RecOne teacher: its traces pass the reward's format check, say what the prompt
shows, reason to the rating they give, and `coldstart --teacher template` keeps only right ones."""

from __future__ import annotations

import json

import pytest

from reczero import rewards
from reczero.data.schema import SCALES
from reczero.prompts import HistoryLine, PromptInput, example_answer
from reczero.recone import coldstart
from reczero.recone.teacher import genre_deviation, template_trace

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
        ({}, 4.0, ["Comedy", "rates highly", "3.5 on average over 10", "3.0 on average over 2"]),  # 3.25 + 0.75
        ({"item_details": [("Genres", "Horror")]}, 2.0, ["Horror", "rates low"]),  # 3.25 - 1.25
        ({"item_details": []}, 3.0, ["genre is not given", "Nothing in the history"]),  # 3.25
        ({"item_avg": None, "item_count": 0, "item_history": []}, 4.0, ["Nobody has rated it"]),  # 3.5 + 0.75
        ({"user_history": [], "user_avg": None, "user_count": 0}, 3.0, ["No earlier ratings"]),  # item avg only
    ],
)
def test_trace_passes_the_format_check_and_reasons_to_its_rating(overrides, rating, words):
    text, got = template_trace(make_input(**overrides))
    check = rewards.check_format(text, SCALE)
    assert check.ok and check.rating == got == rating
    assert all(w in text for w in words), text
    assert not coldstart.copies_example(text, example_answer(SCALE))


def test_half_star_scale_rounds_to_its_step():
    text, got = template_trace(make_input(scale=SCALES["0.5-5"], user_avg=3.3, item_avg=3.0, item_details=[]))
    assert got == 3.0 and rewards.check_format(text, SCALES["0.5-5"]).rating == 3.0  # 3.15 -> 3.0 on half stars


def test_coldstart_cli_with_the_template_teacher_keeps_only_right_ratings(tmp_path):
    out = tmp_path / "traces.jsonl"
    args = ["--config", "configs/sft.yaml", "--output", str(out), "--teacher", "template", "--num-traces", "12"]
    stats = coldstart.main(args)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 12 == stats["kept_direct"] and stats["kept_hint"] == 0 and stats["hint_rejects"] == {}
    assert all(line["rating"] == line["target"] and line["source"] == "direct" for line in lines)
    assert stats["dropped"] == stats["drop_reasons"]["wrong_rating"] > 0  # the rule is wrong often enough
    again = coldstart.main(args)  # resumes: the output already holds 12, nothing is added
    assert again == stats and len(out.read_text().splitlines()) == 12
