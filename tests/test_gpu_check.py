"""`benchmarks/gpu_check.py`: it stops with a clear message without CUDA, and its measurement runs (here on
the CPU, with the tiny model and small settings, since this machine has no GPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_and_says_why():
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert "gpu_check.py needs a CUDA GPU" in done.stderr and "torch.cuda.is_available() is False" in done.stderr


def test_the_measurement_runs_on_the_cpu(tmp_path, tiny_model_dir):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    settings = {
        **gpu_check.SETTINGS,
        "model": str(tiny_model_dir),
        "load_in_4bit": False,
        "precision": "32-true",
        "prompts_per_step": 2,
        "group_size": 4,
        "micro_batch_size": 4,
        "max_new_tokens": 4,
    }
    result = gpu_check.measure(settings, steps=2, warmup=1, accelerator="cpu", cache_dir=str(tmp_path))
    assert len(result["steps"]) == 2
    assert result["generated_tokens_per_s"] > 0 and result["step_seconds"] >= result["generation_seconds"] > 0
