"""`reczero report`: the table from evaluate / baselines JSON, baselines on the LLM's samples, the PNGs."""

from __future__ import annotations

import json
import sys

import pytest
from torch.utils.tensorboard import SummaryWriter

from reczero.cli import main
from reczero.data.schema import SCALES
from reczero.evaluation.evaluate import EvalResult, SampleResult, summarize, write_outputs
from reczero.evaluation.report import comparisons, read_scalars, reference, table_rows
from reczero.rollout.decoding import Decoded

PNG = b"\x89PNG\r\n\x1a\n"


def _llm_json(tmp_path):
    def row(key, target, pred, fallback):
        decoded = Decoded(pred, ["<rate>x</rate>"], [pred], [pred is not None], [True])
        return SampleResult(key, "u", "i", target, fallback, 6, 3, decoded)

    rows = [row("k1", 4.0, 4.0, 3.0), row("k3", 2.0, None, 3.5)]  # 2 of the 4 test samples
    result = EvalResult(rows, 4, 2.0, SCALES["1-5"])
    summary = summarize(result, name="zero-shot", split="test", decoding={"mode": "greedy"}, data={"name": "syn"})
    return write_outputs(result, summary, tmp_path / "llm" / "preds.jsonl")


def _baselines_json(tmp_path):
    data = {
        "kind": "baselines",
        "split": "a small synthetic split",
        "samples": {
            "validation": {"keys": ["v1", "v2"], "truth": [3.0, 4.0]},
            "test": {"keys": ["k1", "k2", "k3", "k4"], "truth": [4.0, 5.0, 2.0, 3.0]},
        },
        "results": [
            {
                "name": "global_mean",
                "valid_mae": 0.5, "valid_rmse": 0.5, "test_mae": 1.0, "test_rmse": 1.118, "n_valid": 2, "n_test": 4,
                "valid_pred": [3.5, 3.5], "test_pred": [3.5, 3.5, 3.5, 3.5],
            },
            {
                "name": "bias_baseline",
                "valid_mae": 0.2, "valid_rmse": 0.2, "test_mae": 0.5, "test_rmse": 0.5, "n_valid": 2, "n_test": 4,
                "valid_pred": [3.2, 3.8], "test_pred": [4.5, 4.5, 2.5, 3.5],
            },
        ],
    }  # fmt: skip
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps(data))
    return path


def _run(tmp_path, name="run1"):
    run = tmp_path / name
    with SummaryWriter(str(run / "tb")) as writer:
        for step in range(30):
            writer.add_scalar("train/reward", -1 + step / 20, step)
            writer.add_scalar("train/format_rate", min(1.0, step / 25), step)
        for step in (10, 20, 29):
            writer.add_scalar("val/mae", 1.2 - step / 100, step)
            writer.add_scalar("val/format_rate", step / 30, step)
    return run


def test_rows_put_every_method_on_the_llm_samples(tmp_path):
    inputs = [json.loads(_llm_json(tmp_path).read_text()), json.loads(_baselines_json(tmp_path).read_text())]
    rows = table_rows(inputs)
    assert [(r.method, r.n) for r in rows] == [("zero-shot", 2), ("global_mean", 2), ("bias_baseline", 2)]
    llm = rows[0]
    assert llm.mae == pytest.approx((0 + 1.5) / 2) and llm.parse_rate == 0.5 and "2 of 4" in llm.note
    assert llm.errors == [0.0, 1.5]  # k1 right; k3 unparsed, scored with its fallback 3.5 against 2
    same = {r.method: r for r in rows[1:]}
    assert same["global_mean"].mae == pytest.approx((0.5 + 1.5) / 2)  # k1: |3.5-4|, k3: |3.5-2|
    assert same["bias_baseline"].rmse == pytest.approx(((0.25 + 0.25) / 2) ** 0.5)
    assert "same 2 samples" in same["bias_baseline"].note


def test_every_pair_gets_a_paired_interval_and_the_best_baseline_is_the_reference(tmp_path):
    inputs = [json.loads(_llm_json(tmp_path).read_text()), json.loads(_baselines_json(tmp_path).read_text())]
    rows = table_rows(inputs)
    pairs = comparisons(rows, n_boot=200)
    assert [(a.method, b.method) for a, b, _ in pairs] == [
        ("zero-shot", "global_mean"),
        ("zero-shot", "bias_baseline"),
        ("global_mean", "bias_baseline"),
    ]
    d = pairs[0][2]  # errors [0, 1.5] vs [0.5, 1.5]: differences -0.5 and 0
    assert d.diff == pytest.approx(-0.25) and d.low == pytest.approx(-0.5) and d.high == pytest.approx(0.0)
    assert reference(rows).method == "bias_baseline"


def test_samples_not_shared_by_every_evaluation_are_left_out(tmp_path):
    first = json.loads(_llm_json(tmp_path).read_text())
    second = dict(first, name="other", sample_keys=["k1", "k4"], targets=[4.0, 3.0], scored=[5.0, 3.0])
    rows = table_rows([first, second, json.loads(_baselines_json(tmp_path).read_text())])
    assert {r.n for r in rows} == {1}  # only k1 is in both evaluations
    assert [r.mae for r in rows if r.kind == "llm"] == [0.0, 1.0]


def test_report_writes_the_table_and_the_plots(tmp_path, capsys):
    llm, base = _llm_json(tmp_path), _baselines_json(tmp_path)
    runs = [_run(tmp_path, "run1"), _run(tmp_path, "run2")]
    written = main(
        ["report", "--inputs", str(llm), str(base), "--runs", *map(str, runs), "--out", str(tmp_path / "out")]
    )
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| zero-shot | test | 0.7500 |" in md and "| bias_baseline | test | 0.5000 |" in md  # on k1, k3
    assert "(best baseline)" in md and "## Paired MAE differences" in md and "| zero-shot | global_mean | test |" in md
    assert "1 fallbacks" in md and "user's average" in md and "a small synthetic split" in md
    assert "| run1 | 29 |" in md and "![mae](mae.png)" in md and "![training](training.png)" in md
    for name in ("mae", "pairs", "training"):
        assert written[name].read_bytes()[:8] == PNG
    assert "wrote" in capsys.readouterr().out


def test_read_scalars_merges_event_files_of_a_resumed_run(tmp_path):
    run = tmp_path / "run"
    with SummaryWriter(str(run / "tb" / "a")) as writer:
        for step in range(5):
            writer.add_scalar("train/reward", 0.0, step)
    with SummaryWriter(str(run / "tb" / "b")) as writer:  # resumed from step 3: its values win
        for step in range(3, 8):
            writer.add_scalar("train/reward", 1.0, step)
        writer.add_scalar("train/other", 5.0, 0)
    curves = read_scalars(run)
    steps, values = curves["train/reward"]
    assert steps == list(range(8)) and values == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert "train/other" not in curves


def test_report_rejects_other_json(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--inputs", str(tmp_path / "x.json"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "not an evaluate or baselines JSON" in capsys.readouterr().err


def test_report_without_the_plot_extra_names_it(tmp_path, capsys, monkeypatch):
    llm = _llm_json(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--inputs", str(llm), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "install the plot extra (pip install 'reczero[plot]')" in err
