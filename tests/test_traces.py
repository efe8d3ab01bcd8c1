"""The trace JSONL format (validation, error messages, skip counts), matching traces to train samples,
and the hint-leak filter on hand-written rationales."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reczero.data.datamodule import RatingDataModule
from reczero.data.samples import SampleConfig
from reczero.data.schema import SCALES
from reczero.data.sources import SourceConfig
from reczero.data.traces import TraceError, load_traces, match_traces
from reczero.prompts import format_completion
from reczero.recone.hints import leaks_hint

SCALE = SCALES["1-5"]


def good(rating: float = 4, user: str = "Likes quiet dramas.", match: str = "It fits well.") -> str:
    return format_completion(user, "A slow, thoughtful drama.", match, rating, SCALE)


def write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_good_lines_in_every_naming_form(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        [
            {"key": "u1|i1|100", "completion": good(4), "rating": 4},
            "",
            {"user": "u2", "item": "i2", "completion": good(2), "rating": 2.0, "source": "hint"},
            {"user": "u3", "item": 7, "timestamp": 300, "completion": good(5), "rating": 5},
        ],
    )
    traces, skipped = load_traces(path, SCALE)
    assert skipped == 0
    assert [t.name for t in traces] == ["u1|i1|100", "u2|i2|?", "u3|7|300"]
    assert [t.line for t in traces] == [1, 3, 4]
    assert traces[1].extra == {"source": "hint"} and traces[1].rating == 2.0


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"completion": good(), "rating": 4}, "no sample"),
    ({"key": "u1-i1", "completion": good(), "rating": 4}, "user|item|timestamp"),
    ({"key": "u|i|1", "rating": 4}, "`completion` must be"),
    ({"key": "u|i|1", "completion": good(), "rating": "4"}, "`rating` must be a finite number"),
    ({"key": "u|i|1", "completion": good(), "rating": 3}, "differs from the completion's rating block (4)"),
    ({"key": "u|i|1", "completion": "<rate>4</rate>", "rating": 4}, "format check (missing_tag:analyze user)"),
    ({"key": "u|i|1", "completion": good(7), "rating": 7}, "format check (rating_out_of_scale)"),
    ({"key": "u|i|1", "completion": good() + " and more", "rating": 4}, "format check (trailing_text)"),
]


@pytest.mark.parametrize("row,reason", BAD_LINES)
def test_a_bad_line_names_file_line_and_reason(tmp_path, row, reason):
    path = write(tmp_path / "t.jsonl", [{"key": "ok|ok|1", "completion": good(), "rating": 4}, row])
    with pytest.raises(TraceError) as err:
        load_traces(path, SCALE)
    assert str(err.value).startswith(f"{path}:2: ")
    assert reason in str(err.value)


def test_skip_mode_counts_bad_lines_and_duplicates(tmp_path):
    rows = [{"key": "a|b|1", "completion": good(), "rating": 4}, "{oops"] + [row for row, _ in BAD_LINES[2:]]
    rows.append({"user": "a", "item": "b", "timestamp": 1, "completion": good(), "rating": 4})  # same sample
    path = write(tmp_path / "t.jsonl", rows)
    traces, skipped = load_traces(path, SCALE, on_bad_row="skip")
    assert [t.name for t in traces] == ["a|b|1"]
    assert skipped == len(rows) - 1
    with pytest.raises(TraceError, match=r"d.jsonl:2: sample 'a\|b\|1' already has a trace \(line 1\)"):
        load_traces(write(tmp_path / "d.jsonl", [rows[0], rows[-1]]), SCALE)


def test_missing_file_says_how_to_build_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="reczero coldstart"):
        load_traces(tmp_path / "none.jsonl", SCALE)
    with pytest.raises(ValueError, match="on_bad_row"):
        load_traces(tmp_path / "none.jsonl", SCALE, on_bad_row="ignore")


@pytest.fixture(scope="module")
def dm(tmp_path_factory) -> RatingDataModule:
    source = SourceConfig(format="synthetic", synthetic_users=30, synthetic_items=20, synthetic_ratings_per_user=8)
    data = RatingDataModule(
        source=source, samples=SampleConfig(min_history=2), cache_dir=str(tmp_path_factory.mktemp("c"))
    )
    data.setup()
    return data


def _row(dm, pos):
    return dm.data.interactions[dm.table.target[pos]]


def test_match_by_key_and_by_user_item(tmp_path, dm):
    train = dm.positions("train")
    a, b = train[0], train[5]
    rb = _row(dm, b)
    path = write(
        tmp_path / "t.jsonl",
        [
            {"key": dm.sample_key(a), "completion": good(4), "rating": 4},
            {"user": rb.user, "item": rb.item, "timestamp": rb.timestamp, "completion": good(2), "rating": 2},
        ],
    )
    completions, unmatched = match_traces(load_traces(path, SCALE)[0], dm)
    assert completions == {a: good(4), b: good(2)} and unmatched == 0


def test_unmatched_traces_are_named_or_counted(tmp_path, dm):
    test_pos = dm.positions("test")[0]
    rows = [
        {"key": dm.sample_key(dm.positions("train")[0]), "completion": good(), "rating": 4},
        {"key": dm.sample_key(test_pos), "completion": good(), "rating": 4},  # not train: would leak
        {"key": "nobody|nothing|0", "completion": good(), "rating": 4},
    ]
    traces, _ = load_traces(write(tmp_path / "t.jsonl", rows), SCALE)
    with pytest.raises(TraceError, match=r"2 of 3 traces match no train sample: .*line 2: not a train sample"):
        match_traces(traces, dm)
    completions, unmatched = match_traces(traces, dm, on_missing="skip")
    assert len(completions) == 1 and unmatched == 2


# -- the hint-leak filter --------------------------------------------------------------------------
CLEAN = [
    (4, "She loves slow dramas and quiet endings.", "The film's pacing suits her; fits well."),
    (4, "He liked 3.4 hours of epics in 1994 and 14 sequels.", "Version 4.5 of his taste: a 4th viewing."),
    (3.5, "She is lukewarm about three-act thrillers.", "Three of her favourites share its director."),
    (1, "No one in her history enjoys gore; one of the worst fits.", "A poor match on every count."),
    (5, "Starring roles matter to him; he prefers short films.", "The soundtrack suits him; a fine fit."),
]
LEAKS = [
    (4, "He will like it.", "I would give it a 4.", "number:4"),
    (4, "Expect 4.0 from this user.", "Fits.", "number:4.0"),
    (4, "A 4-star kind of film for him.", "Fits.", "number:4"),
    (4, "Four out of five for sure.", "Fits.", "word:four"),
    (3.5, "Three and a half, roughly.", "Fits.", "word:three and a half"),
    (3.5, "About 3.5 overall.", "Fits.", "number:3.5"),
    (2, "Her ratings of dramas are low.", "Fits.", "talk:ratings"),
    (2, "She rated similar films poorly.", "Fits.", "talk:rated"),
    (2, "I would rate it low.", "Fits.", "talk:rate it"),
    (2, "Only a couple of stars.", "Fits.", "talk:stars"),
    (2, "Its score is middling.", "Fits.", "talk:score"),
    (2, "Roughly a 3/5 film.", "Fits.", "talk:/5"),
    (2, "Maybe three out of 5.", "Fits.", "talk:out of 5"),
]


@pytest.mark.parametrize("rating,user,match", CLEAN)
def test_clean_rationales_pass(rating, user, match):
    assert leaks_hint(good(rating, user, match), rating, SCALE) is None


@pytest.mark.parametrize("rating,user,match,reason", LEAKS)
def test_leaking_rationales_are_caught(rating, user, match, reason):
    assert leaks_hint(good(rating, user, match), rating, SCALE) == reason


def test_only_the_reasoning_is_checked_and_the_scale_top_is_used():
    assert leaks_hint(good(4), 4, SCALE) is None  # the rating block itself may hold the rating
    ten = format_completion("Loves it.", "A film.", "Maybe 7/10.", 8, SCALES["1-10"])
    assert leaks_hint(ten, 8, SCALES["1-10"]) == "talk:/10"
    assert leaks_hint("no tags, 4 stars", 4, SCALE) == "number:4"  # no <rate>: the whole text is reasoning
