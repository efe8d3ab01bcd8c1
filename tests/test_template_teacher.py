"""The rule-based RecOne teacher: its traces pass the reward's format check, say what the prompt
shows, reason to the rating they give, and `coldstart --teacher template` keeps only right ones."""

from __future__ import annotations

import json

import pytest

from reczero import rewards
from reczero.cli import main
from reczero.data.schema import SCALES
from reczero.prompts import HistoryLine, PromptInput, copy_sources, example_answer, genre_deviation
from reczero.recone.teacher import template_trace

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
    text, got = template_trace(make_input(**overrides), 3.5)
    example = example_answer("k", SCALE, 3.5, ("Comedy", "Drama", "Horror"))
    check = rewards.check_format(text, SCALE, copy_sources=copy_sources(SCALE, example))
    assert check.ok and check.rating == got == rating
    assert all(w in text for w in words), text


def test_half_star_scale_rounds_to_its_step():
    inp = make_input(scale=SCALES["0.5-5"], user_avg=3.3, item_avg=3.0, item_details=[])
    text, got = template_trace(inp, 3.5)  # 3.0 + (3.3 - 3.5) = 2.8 -> 3.0 on half stars
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
