"""`reczero predict`: inline and id-based requests, consistency with training samples, bad lines named."""

from __future__ import annotations

import json

import pytest
import yaml

from reczero.cli import main
from reczero.data.datamodule import RatingDataModule
from reczero.data.render import PromptConfig, prompt_input
from reczero.data.samples import SampleConfig
from reczero.data.schema import DataFormatError
from reczero.data.sources import SourceConfig
from reczero.evaluation.predict import DatasetIndex, read_requests

INLINE = {
    "id": "r1",
    "scale": "1-5",
    "user_history": [
        {"title": "Heat (1995)", "rating": 4, "review": "tense", "genres": ["Crime", "Action"]},
        {"title": "Fargo (1996)", "rating": 5},
        {"title": "Twister (1996)", "rating": 2, "review": None},
    ],
    "item": {"title": "Ronin (1998)", "genres": ["Action"], "year": 1998, "description": "Heist in France."},
    "item_history": [{"rating": 5, "review": "great"}, {"rating": 3}],
}


def _dm(tmp_path, **samples) -> RatingDataModule:
    cfg = {"user_history": 3, "item_history": 3, "min_history": 2, **samples}
    return RatingDataModule(
        source=SourceConfig(format="synthetic", synthetic_users=30, synthetic_items=20, synthetic_ratings_per_user=8),
        samples=SampleConfig(**cfg),
        prompt=PromptConfig(max_prompt_tokens=2048),
        cache_dir=str(tmp_path / "cache"),
    )


def _read(tmp_path, objs, on_bad_row="error", **samples):
    lines = [o if isinstance(o, str) else json.dumps(o) for o in objs]
    return read_requests(lines, "req.jsonl", _dm(tmp_path, **samples), on_bad_row)


def test_inline_request_becomes_a_prompt_input(tmp_path):
    (req,), skipped = _read(tmp_path, [INLINE], user_history=2)
    assert skipped == 0 and req.id == "r1" and req.line == 1
    inp = req.inp
    assert [line.title for line in inp.user_history] == ["Fargo (1996)", "Twister (1996)"]  # the last 2, oldest first
    assert inp.user_avg == pytest.approx(11 / 3) and inp.user_count == 3  # the average over all given
    assert inp.item_avg == pytest.approx(4.0) and [line.rating for line in inp.item_history] == [5, 3]
    assert ("Genres", "Action") in inp.item_details and ("Year", "1998") in inp.item_details
    assert req.fallback == pytest.approx(11 / 3)
    # stated averages win; with no user history at all the item's average is the fallback
    (req,), _ = _read(tmp_path, [{"item": {"title": "X"}, "item_history": [{"rating": 2}], "user_avg": None}])
    assert req.inp.user_avg is None and req.fallback == 2.0
    (req,), _ = _read(tmp_path, [{"item": {"title": "X"}, "user_avg": 9.5, "scale": "1-10", "user_count": 4}])
    assert req.fallback == 9.5 and req.inp.user_count == 4 and req.inp.scale.high == 10


def test_id_request_shows_what_the_training_sample_shows(tmp_path):
    dm = _dm(tmp_path)
    dm.setup()
    index = DatasetIndex(dm.data)
    for pos in dm.positions("test")[:5] + dm.positions("train")[:5]:
        target = dm.data.interactions[dm.table.target[pos]]
        inp, fallback = index.prompt_input(target.user, target.item, target.timestamp, 3, 3)
        assert inp == prompt_input(dm.data, dm.table, pos)
        assert fallback == pytest.approx(dm.scale.clip(dm.table.user_avg[pos]))


def test_id_request_default_time_is_after_everything(tmp_path):
    dm = _dm(tmp_path)
    dm.setup()
    user = dm.data.interactions[0].user
    rated = [r for r in dm.data.interactions if r.user == user]
    (req,), _ = read_requests([json.dumps({"user": user, "item": rated[0].item})], "r", dm)
    assert req.inp.user_count == len(rated)
    assert req.inp.user_avg == pytest.approx(sum(r.rating for r in rated) / len(rated))


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ('{"item": {"title": "X"}', None),  # not JSON
        ("[1, 2]", None),
        ({"user_history": []}, "item"),
        ({"item": {"title": ""}}, "item.title"),
        ({"item": {"title": "X", "colour": "red"}}, "item.colour"),
        ({"item": {"title": "X"}, "user_history": [{"title": "A", "rating": 7}]}, "user_history[0].rating"),
        ({"item": {"title": "X"}, "user_history": [{"rating": 3}]}, "user_history[0].title"),
        ({"item": {"title": "X"}, "item_history": [{"rating": "4"}]}, "item_history[0].rating"),
        ({"item": {"title": "X"}, "user_histroy": []}, "user_histroy"),
        ({"item": {"title": "X"}, "scale": "1-5 stars"}, "scale"),
        ({"item": {"title": "X", "year": "1998"}}, "item.year"),
        ({"user": "no-such-user", "item": "1"}, "user"),
        ({"user": "1", "item": "no-such-item"}, "item"),
        ({"user": "1", "item": "1", "timestamp": "yesterday"}, "timestamp"),
        ({"user": ["1"], "item": "1"}, "user"),
        ({"item": "242"}, "user"),
    ],
)
def test_bad_lines_are_named_with_line_and_field(tmp_path, obj, field):
    good = json.dumps({"item": {"title": "fine"}})
    with pytest.raises(DataFormatError) as err:
        _read(tmp_path, [good, "", obj])
    assert err.value.line == 3 and err.value.field == field
    assert str(err.value).startswith("req.jsonl, line 3: ")


def test_skip_mode_counts_bad_lines(tmp_path, capsys):
    requests, skipped = _read(tmp_path, [INLINE, "{oops", {"item": {}}, INLINE], on_bad_row="skip")
    assert [r.line for r in requests] == [1, 4] and skipped == 2
    assert capsys.readouterr().err.count("skipped: req.jsonl, line") == 2


def test_predict_command_streams_one_line_per_request(tmp_path, tiny_model_dir, capsys):
    dm = _dm(tmp_path)
    dm.setup()
    user, item = dm.data.interactions[3].user, dm.data.interactions[3].item
    requests = tmp_path / "req.jsonl"
    lines = [json.dumps(INLINE), "not json", json.dumps({"id": 7, "user": user, "item": item, "timestamp": 10**12})]
    requests.write_text("\n".join(lines) + "\n")
    config = {
        "model": {"init_args": {"policy": {"model": str(tiny_model_dir)}}},
        "data": {
            "source": {
                "format": "synthetic",
                "synthetic_users": 30,
                "synthetic_items": 20,
                "synthetic_ratings_per_user": 8,
            },
            "samples": {"user_history": 3, "item_history": 3, "min_history": 2},
            "prompt": {"max_prompt_tokens": 2048},
            "cache_dir": str(tmp_path / "cache"),
        },
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    args = [
        "predict",
        "--config",
        str(tmp_path / "fit.yaml"),
        "--requests",
        str(requests),
        "--decode.max_new_tokens=4",
    ]
    with pytest.raises(SystemExit):  # a bad line stops the run before the model loads, naming it
        main(args)
    assert "req.jsonl, line 2" in capsys.readouterr().err
    assert main([*args, "--on-bad-row", "skip", "--batch-size", "1"]) == 2
    captured = capsys.readouterr()
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert [(o["line"], o["id"]) for o in out] == [(1, "r1"), (3, 7)]
    for o in out:
        assert {"rating", "fallback", "fallback_used", "prediction", "completion", "format_ok"} <= set(o)
        assert o["fallback_used"] == (o["rating"] is None)
        assert o["prediction"] == (o["fallback"] if o["rating"] is None else o["rating"])
    assert out[0]["fallback"] == pytest.approx(11 / 3)
    assert "rated 2 requests; skipped 1 bad lines" in captured.err
