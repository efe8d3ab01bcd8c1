#!/bin/bash
# benchmarks/gpu_check.py on a lent GPU machine with no network (one NVIDIA H200, Python 3.12, torch 2.11
# built for CUDA 13.0, lightning and tokenizers installed), run from the repository root with the two
# folders benchmarks/gpu_prepare.sh fills carried along:
#     run(command="bash benchmarks/gpu_run.sh", carry=[".whl", ".gpu"], timeout_s=420)
# It installs the carried wheels into /tmp/site, in front of the machine's own packages, and measures
# random-weight models built on the SmolLM2 tokenizer, 1 warm-up and 2 measured steps each: SmolLM2-135M's
# shape in plain bf16 (with what `dtype: auto` picks and the bf16-vs-fp32 log-prob drift), the same in
# QLoRA, then Qwen2.5-1.5B's shape in QLoRA. No case starts after BUDGET seconds (default 240, counted
# once the script has imported), and a case running then stops after its first measured step; the
# whole script is killed at BUDGET + 150 s. Everything goes to $OUT: gpu_check.json (rewritten after
# each case, so it holds every finished case even if the run is cut short), gpu_check.log, nvidia-smi.txt.
# GPU_CHECK_ARGS adds arguments (a rehearsal without a GPU: GPU_CHECK_ARGS="--accelerator cpu" BUDGET=0).
set -o pipefail
: "${OUT:?OUT must name the folder whose files come back}"
BUDGET=${BUDGET:-240}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout $((BUDGET + 150)) python3 benchmarks/gpu_check.py --tokenizer .gpu/smollm2-135m --steps 2 --warmup 1 \
    --budget-s "$BUDGET" --out "$OUT/gpu_check.json" \
    --run smollm2-135m/bf16 smollm2-135m/qlora qwen2.5-1.5b/qlora ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUT/gpu_check.log"
