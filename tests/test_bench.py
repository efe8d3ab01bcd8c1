"""`benchmarks/grpo_step.py` (what `make bench` runs) still runs: one step of 4 tokens on the tiny model and
the synthetic set, reczero's side always and TRL's where the bench extra (trl) is installed.

Both engines stop where the reward template's answers end (`</rate>`), as reczero's GRPO module requires.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks" / "grpo_step.py"
HAS_TRL = importlib.util.find_spec("trl") is not None


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_model_dir) -> dict:
    """The bench's own command line, on the tiny model: one run, one step, no warm-up."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "grpo_step.json"
    cmd = [sys.executable, str(BENCH), "--path", "synthetic", "--model", str(tiny_model_dir)]
    cmd += ["--engines", "reczero,trl" if HAS_TRL else "reczero", "--runs", "1", "--steps", "1", "--warmup", "0"]
    cmd += ["--max-new-tokens", "4", "--max-prompt-tokens", "1024", "--precisions", "fp32", "--workloads", "shaped"]
    cmd += ["--out", str(out)]
    env = {**os.environ, "RECZERO_CACHE": str(tmp / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(out.read_text())


def test_bench_runs_reczero_side(bench_run):
    block = bench_run["results"]["shaped/fp32"]
    row = block["summary"]["reczero"]
    assert row["measured_steps"] == 1 and row["trained_tokens_per_s"] > 0 and row["peak_rss_gib"] > 0
    assert row["generated_tokens_per_s"] > 0
    assert bench_run["settings"]["max_new_tokens"] == 4


@pytest.mark.skipif(
    not HAS_TRL, reason="TRL's side not run: trl is not installed (the bench extra: pip install -e '.[bench]')"
)
def test_bench_runs_trl_side_and_compares(bench_run):
    block = bench_run["results"]["shaped/fp32"]
    assert block["summary"]["trl"]["measured_steps"] == 1 and block["summary"]["trl"]["trained_tokens_per_s"] > 0
    assert block["pooled_ratios"]["trained_tokens_per_s"] > 0 and len(block["per_run_ratios"]) == 1
