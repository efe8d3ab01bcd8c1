"""`benchmarks/gpu_check.py`: it stops with a clear message without CUDA; its architectures have the published
models' shapes; and the whole script, random-weight model to JSON, runs on the CPU (`--accelerator cpu`,
a tiny architecture, small settings: a rehearsal of the GPU run, not a measurement)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SMALL = ["prompts_per_step=2", "group_size=4", "micro_batch_size=4", "max_new_tokens=4"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_and_says_why():
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert "gpu_check.py needs a CUDA GPU" in done.stderr and "torch.cuda.is_available() is False" in done.stderr


def test_architectures_have_the_published_parameter_counts(gpu_check):
    from transformers import AutoConfig

    # the model cards' totals, with each model's own vocabulary (the script swaps in the tokenizer's)
    published = {"qwen2.5-1.5b": (151936, 1_543_714_304), "qwen2.5-7b": (152064, 7_615_616_512)}
    for arch, (vocab, total) in published.items():
        assert gpu_check.count_parameters(AutoConfig.for_model(**gpu_check.ARCHS[arch], vocab_size=vocab)) == total


def test_bad_runs_and_settings_are_refused(gpu_check, capsys):
    for argv in (["--run", "qwen9/qlora"], ["--run", "tiny-llama/fp8"], ["--set", "group=4"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            gpu_check.main([*argv, "--accelerator", "cpu"])
    assert "ARCH/CASE" in capsys.readouterr().err


def test_past_the_budget_nothing_starts_and_the_json_says_so(gpu_check, tmp_path):
    out = tmp_path / "r.json"
    gpu_check.main(["--run", "tiny-llama/bf16", "--accelerator", "cpu", "--budget-s", "0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["models"] == {} and saved["skipped"] == ["tiny-llama/bf16: not started, past --budget-s"]


def test_the_whole_script_runs_on_the_cpu(gpu_check, tmp_path, tiny_model_dir):
    from transformers import AutoConfig

    out = tmp_path / "gpu_check.json"
    runs = ["tiny-llama/qlora", "tiny-llama/bf16"]
    argv = ["--run", *runs, "--tokenizer", str(tiny_model_dir), "--accelerator", "cpu", "--steps", "2"]
    report = gpu_check.main([*argv, "--warmup", "1", "--set", *SMALL, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["auto"]["dtype_auto"] == "torch.float32" and report["skipped"] == []  # `dtype: auto` on a CPU
    model = report["models"]["tiny-llama"]
    assert model["vocab_size"] == 640  # the tokenizer's
    config = AutoConfig.for_model(**gpu_check.ARCHS["tiny-llama"], vocab_size=640)
    assert model["parameters"] == gpu_check.count_parameters(config)
    rows = 2 * 4
    for case in ("qlora", "bf16"):
        result = model["cases"][case]
        assert result["measured_steps"] == len(result["steps"]) == 2
        assert result["precision"] == "bf16-mixed" and result["shared_prefix"]
        for step in result["steps"]:
            assert 0 < step["generated_tokens"] <= rows * 4 and step["trained_tokens"] > step["generated_tokens"]
            assert step["wall_seconds"] > 0 and step["generation_seconds"] > 0 and step["optimization_seconds"] > 0
        assert result["step_seconds"] == result["generation_seconds"] + result["optimization_seconds"]
    assert "torch.uint8" in model["cases"]["qlora"]["parameter_dtypes"]  # the 4-bit packed base
    assert "torch.uint8" not in model["cases"]["bf16"]["parameter_dtypes"]
    drift = report["drift"]
    assert drift["arch"] == "tiny-llama" and drift["tokens"] > 0
    assert (
        math.isfinite(drift["max_abs_logprob_diff"])
        and 0 <= drift["mean_abs_logprob_diff"] <= drift["max_abs_logprob_diff"]
    )
