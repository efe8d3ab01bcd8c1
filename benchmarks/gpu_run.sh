#!/bin/bash
# benchmarks/gpu_check.py on a lent GPU machine with no network (one NVIDIA H200, Python 3.12, torch 2.11
# built for CUDA 13.0, lightning and tokenizers installed), run from the repository root with the two
# folders benchmarks/gpu_prepare.sh fills carried along:
#     run(command="bash benchmarks/gpu_run.sh", carry=[".whl", ".gpu"], timeout_s=420)
# It installs the carried wheels into /tmp/site, in front of the machine's own packages, and measures
# random-weight models built on the SmolLM2 tokenizer: SmolLM2-135M's shape in QLoRA and in bf16 (with
# the bf16-vs-fp32 log-prob drift), then Qwen2.5-1.5B's and Qwen2.5-7B's shapes in QLoRA while the budget
# lasts. Everything it writes goes to $OUT: gpu_check.json (rewritten after each case), gpu_check.log and
# nvidia-smi.txt. The JSON is complete up to the last finished case even if the run is cut short.
set -o pipefail
: "${OUT:?OUT must name the folder whose files come back}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 360 python3 benchmarks/gpu_check.py --tokenizer .gpu/smollm2-135m --budget-s 270 --out "$OUT/gpu_check.json" \
    --run smollm2-135m/qlora smollm2-135m/bf16 qwen2.5-1.5b/qlora qwen2.5-7b/qlora 2>&1 | tee "$OUT/gpu_check.log"
