"""The installed `reczero` console script, run as a user runs it: every command exits 0 on success and prints
a bounded table or summary (machine-readable results go to `--output`); bad input exits 2 with one line
naming the file, line and field.

The commands run on the synthetic data source and the tiny random model (nothing downloads), in parallel
where they do not depend on each other (`report` reads what `baselines` and `evaluate` wrote).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MAX_OUTPUT = 20_000  # bytes of stdout + stderr: a table or a summary, never a result dumped to the terminal


def console_script() -> str:
    """The `reczero` script `pip install` put beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "reczero"
    found = str(beside) if beside.exists() else shutil.which("reczero")
    assert found, "the reczero console script is not installed: run `make install`"
    return found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> Path:
    """A fit config over the synthetic set and the tiny model, a requests file, and a malformed CSV."""
    root = tmp_path_factory.mktemp("console")
    config = {
        "model": {
            "class_path": "reczero.modules.GRPOModule",
            "init_args": {
                "policy": {"model": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8},
                "rollout": {"group_size": 2, "max_new_tokens": 4},
                "micro_batch_size": 2,
                "val_max_new_tokens": 4,
                "adapter_dir": str(root / "adapter"),
                "rollout_log": str(root / "rollouts.jsonl"),
            },
        },
        "data": {
            "source": {"format": "synthetic", "synthetic_users": 30, "synthetic_items": 20},
            "samples": {"user_history": 3, "item_history": 3, "min_history": 2, "max_samples": {"validation": 4}},
            "prompt": {"max_prompt_tokens": 1536},
            "eval_batch_size": 2,
            "cache_dir": str(root / "cache"),
        },
        "trainer": {"default_root_dir": str(root / "run"), "logger": False, "enable_checkpointing": False},
    }
    (root / "fit.yaml").write_text(yaml.safe_dump(config))
    request = {
        "id": "r1",
        "scale": "1-5",
        "user_history": [{"title": "Heat (1995)", "rating": 4}],
        "item": {"title": "Ronin"},
    }
    (root / "requests.jsonl").write_text(json.dumps(request) + "\n")
    (root / "bad.csv").write_text("user,item,rating,timestamp\nu1,i1,4,100\nu2,i2,five,200\n")
    return root


def commands(root: Path) -> dict[str, list[str]]:
    fit = ["--config", str(root / "fit.yaml")]
    return {
        "data stats": ["data", "stats", *fit],
        "data preview": ["data", "preview", *fit, "--count", "1"],
        "baselines": ["baselines", *fit, "--methods", "global_mean", "user_mean", "--output", str(root / "b.json")],
        "evaluate": ["evaluate", *fit, "--limit", "2", "--no-progress", "--output", str(root / "ev" / "preds.jsonl")],
        "coldstart": [
            "coldstart",
            *fit,
            "--teacher",
            "template",
            "--num-traces",
            "2",
            "--output",
            str(root / "t.jsonl"),
        ],
        "predict": ["predict", *fit, "--requests", str(root / "requests.jsonl"), "--output", str(root / "p.jsonl")],
        "fit": ["fit", *fit, "--trainer.fast_dev_run=true"],
        "report": ["report", "--inputs", str(root / "b.json"), str(root / "ev" / "preds.metrics.json")]
        + ["--out", str(root / "report")],
        "bad input": ["data", "stats", "--format", "csv", "--path", str(root / "bad.csv")]
        + ["--data.cache_dir", str(root / "bad-cache")],
    }


@pytest.fixture(scope="module")
def ran(workspace) -> dict[str, subprocess.CompletedProcess]:
    """Every command's exit code and output; all but `report` start at once, `report` after its inputs."""
    script, env = console_script(), {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    todo = commands(workspace)

    def start(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [script, *args], cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
        out, err = proc.communicate(timeout=3600)  # generous: a CPU shared with other jobs
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())

    procs = {name: start(args) for name, args in todo.items() if name != "report"}
    try:
        done = {name: finish(proc) for name, proc in procs.items()}
        procs["report"] = start(todo["report"])
        done["report"] = finish(procs["report"])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


@pytest.mark.parametrize(
    "command", ["data stats", "data preview", "baselines", "evaluate", "coldstart", "predict", "fit", "report"]
)
def test_each_command_exits_0_with_a_bounded_summary(ran, command):
    done = ran[command]
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
    size = len(done.stdout.encode()) + len(done.stderr.encode())
    assert size < MAX_OUTPUT, f"{size} bytes on the terminal:\n{done.stdout[:2000]}\n{done.stderr[:2000]}"
    assert "Traceback" not in done.stderr


def test_machine_readable_results_go_to_the_output_files(ran, workspace):
    assert "| global_mean |" in ran["baselines"].stdout and "[" not in ran["baselines"].stderr
    assert json.loads((workspace / "b.json").read_text())["kind"] == "baselines"
    assert "MAE" in ran["evaluate"].stdout and len((workspace / "ev" / "preds.jsonl").read_text().splitlines()) == 2
    assert ran["predict"].stdout == "" and "rated 1 requests" in ran["predict"].stderr
    assert json.loads((workspace / "p.jsonl").read_text())["id"] == "r1"
    assert len((workspace / "t.jsonl").read_text().splitlines()) == 2
    assert "| method |" in ran["report"].stdout and "Paired MAE differences" not in ran["report"].stdout
    assert (workspace / "report" / "report.md").exists()


def test_bad_input_exits_2_with_one_line_naming_file_line_and_field(ran, workspace):
    done = ran["bad input"]
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"reczero data: error: {workspace / 'bad.csv'}, line 3: field 'rating': expected a number (got 'five')"
    ]
