"""`reczero data stats|preview` through `reczero.cli.main`, on a small generic CSV and on MovieLens-100K.

Every run points `--data.cache_dir` (and `RECZERO_CACHE`) at tmp_path, so nothing is written to the
home cache. The MovieLens test reads /work/shared/data/ml-100k when it is there (without a
tokenizer, so it stays fast) and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from reczero.cli import main

ML100K = Path(os.environ.get("RECZERO_SHARED_DATA", "/work/shared/data")) / "ml-100k"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RECZERO_CACHE", str(tmp_path / "env-cache"))


def write_csv(path: Path, header: str = "user,item,rating,timestamp,review") -> Path:
    """10 users x 6 ratings over 12 items, generic CSV with its own header."""
    lines = [header]
    for u in range(10):
        for k in range(6):
            item = (u * 5 + k * 7) % 12
            lines.append(f"{u},{item},{1 + (u * k) % 5},{1_700_000_000 + u * 11 + k * 3600},nice item {item}")
    path.write_text("\n".join(lines) + "\n")
    return path


def stats_lines(text: str) -> dict[str, str]:
    """The `key  value` lines of `data stats` as a dict."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)\s{2,}(.*)$", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def split_sizes(value: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+): (\d+)", value)}


def test_data_stats_on_a_generic_csv(tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "ratings.csv")
    cache = tmp_path / "cache"
    main(["data", "stats", "--format", "csv", "--path", str(path), "--data.cache_dir", str(cache)])
    out = capsys.readouterr().out
    stats = stats_lines(out)
    assert stats["interactions"] == "60"
    assert stats["duplicates"] == "rule: latest, pairs: 0, repeated: 0, exact: 0, dropped: 0"
    assert stats["same_time_share"] == "0.0" and "WARNING" not in out  # distinct times: every prompt has history
    assert stats["users"] == "10"
    assert stats["items"] == "12"
    assert stats["reviews"] == "60"
    assert stats["scale"] == "1-5"
    samples = split_sizes(stats["samples"])
    assert set(samples) == {"train", "validation", "test"}
    assert sum(samples.values()) + int(stats["dropped_short_history"]) == 60
    assert samples["validation"] > 0 and samples["test"] > 0
    assert "prompt_tokens" not in stats  # no tokenizer asked for
    assert any(cache.iterdir()) and not (tmp_path / "env-cache").exists()


def test_data_stats_with_a_column_mapping_and_sample_options(tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "ratings.csv", header="uid,mid,stars,when,text")
    columns = {"user": "uid", "item": "mid", "rating": "stars", "timestamp": "when", "review": "text"}
    main(
        [
            "data",
            "stats",
            "--data.source.format=csv",
            f"--data.source.path={path}",
            f"--data.source.columns={json.dumps(columns)}",
            "--data.samples.min_history=0",
            f"--data.cache_dir={tmp_path / 'cache'}",
        ]
    )
    stats = stats_lines(capsys.readouterr().out)
    assert (stats["interactions"], stats["users"], stats["items"]) == ("60", "10", "12")
    assert split_sizes(stats["samples"]) == {"train": 40, "validation": 10, "test": 10}  # leave_last, nothing dropped
    assert stats["dropped_short_history"] == "0"


def test_data_preview_prints_prompts(tmp_path, capsys, tiny_model_dir) -> None:
    path = write_csv(tmp_path / "ratings.csv")
    args = [
        "data",
        "preview",
        "--format",
        "csv",
        "--path",
        str(path),
        f"--model.init_args.policy.model={tiny_model_dir}",
    ]
    args += ["--data.cache_dir", str(tmp_path / "cache"), "--data.samples.min_history=1", "--count", "2"]
    main(args)
    out = capsys.readouterr().out
    headers = re.findall(r"^=== sample \d+ \(train, \S+\): true rating \d, \d+ tokens.*===$", out, flags=re.M)
    assert len(headers) == 2
    assert out.count("<|im_start|>system\n") == 2 and out.count("<|im_start|>assistant\n") == 2
    assert "Predict how this user will rate the target item on a scale from 1 to 5." in out
    assert "<analyze user>" in out and "</rate>" in out


def test_data_stats_with_a_tokenizer_counts_prompt_tokens(tmp_path, capsys, tiny_model_dir) -> None:
    path = write_csv(tmp_path / "ratings.csv")
    main(
        [
            "data",
            "stats",
            "--format=csv",
            f"--path={path}",
            "--tokens",
            f"--model.init_args.policy.model={tiny_model_dir}",  # the policy's tokenizer (data.tokenizer)
            f"--data.cache_dir={tmp_path / 'cache'}",
            "--data.samples.min_history=1",
        ]
    )
    stats = stats_lines(capsys.readouterr().out)
    samples = split_sizes(stats["samples"])
    assert stats["prompts_rendered"] == str(sum(samples.values()))
    assert stats["prompt_tokens"].startswith("mean ")
    assert stats["max_prompt_tokens"] == "1024"


def write_tied_csv(path: Path) -> Path:
    """Day-resolution times: each of 8 users rates 5 items on one day; two rows repeat (one exact copy)."""
    lines = ["user,item,rating,timestamp"]
    for u in range(8):
        lines += [f"u{u},i{(u + k) % 9},{1 + (u + k) % 5},{(17_000 + u) * 86_400}" for k in range(5)]
    lines += [f"u0,i0,4,{17_000 * 86_400}", f"u1,i1,2,{17_001 * 86_400}"]  # a re-rating (was 1), an exact copy
    path.write_text("\n".join(lines) + "\n")
    return path


def test_data_stats_reports_duplicates_and_warns_when_prompts_lack_user_history(tmp_path, capsys) -> None:
    path = write_tied_csv(tmp_path / "tied.csv")
    args = ["data", "stats", "--format=csv", f"--path={path}", "--data.samples.min_history=0"]
    main(args + [f"--data.cache_dir={tmp_path / 'cache'}"])
    out = capsys.readouterr().out
    stats = stats_lines(out)
    assert stats["interactions"] == "40"
    assert stats["duplicates"] == "rule: latest, pairs: 2, repeated: 2, exact: 1, dropped: 2"
    assert stats["same_time_share"] == "1.0"  # every interaction shares its day with another of its user
    assert stats["no_user_history_share"] == "train: 1.0, validation: 1.0, test: 1.0"
    warnings = [line for line in out.splitlines() if line.startswith("WARNING: ")]
    assert [w.split(" samples")[0] for w in warnings] == [
        "WARNING: 100.0% of the train",
        "WARNING: 100.0% of the validation",
        "WARNING: 100.0% of the test",
    ]
    assert all("no user history" in w and "coarse timestamps or ties" in w for w in warnings)

    main(args + ["--data.source.duplicates=keep", f"--data.cache_dir={tmp_path / 'cache'}"])
    out = capsys.readouterr().out
    assert stats_lines(out)["interactions"] == "42"
    assert stats_lines(out)["duplicates"] == "rule: keep, pairs: 2, repeated: 2, exact: 1, dropped: 0"
    assert "WARNING: 2 repeated (user, item) interactions kept (--data.source.duplicates=keep)" in out


def test_data_stats_under_a_declared_timestamp_unit(tmp_path, capsys) -> None:
    path = tmp_path / "ms.csv"
    path.write_text(
        "user,item,rating,timestamp\n"
        + "".join(f"u{k % 3},i{k},3,{1_588_687_728_000 + k * 60_000}\n" for k in range(12))
    )
    args = ["data", "stats", "--format=csv", f"--path={path}", "--data.samples.min_history=0"]
    main(args + ["--data.source.timestamp_unit=ms", f"--data.cache_dir={tmp_path / 'cache'}"])
    stats = stats_lines(capsys.readouterr().out)
    assert stats["interactions"] == "12" and stats["same_time_share"] == "0.0"
    assert split_sizes(stats["samples"]) == {"train": 6, "validation": 3, "test": 3}
    with pytest.raises(SystemExit):  # the default unit: the CLI prints the file, line, field and the fix
        main(args + [f"--data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert f"{path}, line 2: field 'timestamp'" in err and "--data.source.timestamp_unit=ms" in err


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason=f"{ML100K} is not available")
def test_data_stats_on_movielens_100k(tmp_path, capsys) -> None:
    main(["data", "stats", "--format", "movielens-100k", "--path", str(ML100K), "--data.cache_dir", str(tmp_path)])
    stats = stats_lines(capsys.readouterr().out)
    assert stats["interactions"] == "100000"
    assert stats["users"] == "943"
    assert stats["items"] == "1682"
    assert split_sizes(stats["samples"]) == {"train": 97892, "validation": 943, "test": 943}
    assert stats["dropped_short_history"] == "222"
    assert stats["duplicates"] == "rule: latest, pairs: 0, repeated: 0, exact: 0, dropped: 0"
    assert stats["same_time_share"] == "0.7577"
    assert stats["no_user_history_share"] == "train: 0.0206, validation: 0.0, test: 0.0"
