#!/usr/bin/env bash
# One session on one CUDA GPU, for what the 2-core CPU cannot show:
#  1. the embedded defaults, `make train-grpo` (configs/grpo.yaml) and `make train-recone` (coldstart with
#     the rule-based teacher, configs/sft.yaml, configs/recone.yaml), with --trainer.accelerator=gpu and
#     float32 weights: everything else (precision 32-true, seeds, data) as on the CPU;
#  2. GRPO throughput of the bundled model with the QLoRA recipe's settings (NF4 4-bit base, bf16
#     compute, bf16-mixed, LoRA r=32, 8 prompts x G=8, up to 256 new tokens, micro-batches of 8) and
#     the same in plain bf16 without 4-bit: 6 steps each, step times from TensorBoard, peak device
#     memory sampled by nvidia-smi.
# Stage times go to $OUT/stages.txt; logs, TensorBoard events, rollout logs and summaries
# (benchmarks/train_summary.py) to $OUT/runs.tgz. Run from the repository root with reczero's
# dependencies importable:  OUT=/tmp/gpu benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
STAGE_LIMIT=${STAGE_LIMIT:-150}  # seconds a stage may take before it is stopped
LOGS=checkpoints/gpu-logs
mkdir -p "$OUT" "$LOGS"
fp32=(--trainer.accelerator=gpu --model.init_args.policy.dtype=float32)
pack() { tar czf "$OUT/runs.tgz" "$LOGS" benchmarks/results/train_gpu_* checkpoints/*/tb checkpoints/*/rollouts.jsonl 2>/dev/null; }
run() {  # run NAME CMD...: one stage, timed, its log kept; a failing stage never stops the script
  local name=$1 start; shift
  start=$(date +%s)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$LOGS/$name.memory" &
  local smi=$!
  timeout "$STAGE_LIMIT" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  kill $smi
  echo "$name: exit $rc in $(( $(date +%s) - start )) s, peak device memory $(sort -n "$LOGS/$name.memory" | tail -1) MiB" \
    | tee -a "$OUT/stages.txt"
  pack
}
summary() { $PY benchmarks/train_summary.py "checkpoints/$1" --name "gpu_$1" >> "$OUT/stages.txt" 2>&1; pack; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/stages.txt"
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/stages.txt"

run train-grpo $PY -m reczero fit --config configs/grpo.yaml "${fp32[@]}"
summary grpo-synthetic
run coldstart $PY -m reczero coldstart --config configs/sft.yaml --teacher template --num-traces 128
run train-sft $PY -m reczero fit --config configs/sft.yaml "${fp32[@]}"
summary sft-synthetic
run train-recone $PY -m reczero fit --config configs/recone.yaml "${fp32[@]}"
summary recone-synthetic

throughput=(
  --config configs/grpo.yaml --trainer.accelerator=gpu --trainer.precision=bf16-mixed --trainer.max_steps=6
  --trainer.limit_val_batches=0 --trainer.num_sanity_val_steps=0 --trainer.enable_checkpointing=false
  --trainer.callbacks=null --data.batch_size=8 --model.init_args.rollout.max_new_tokens=256
  --model.init_args.micro_batch_size=8 --model.init_args.policy.lora_r=32 --model.init_args.policy.lora_alpha=64
  --model.init_args.learning_rate=2e-5 --model.init_args.adapter_dir=null
)
run qlora-bf16 $PY -m reczero fit "${throughput[@]}" --trainer.default_root_dir=checkpoints/gpu-qlora \
  --trainer.logger.init_args.save_dir=checkpoints/gpu-qlora --model.init_args.rollout_log=checkpoints/gpu-qlora/rollouts.jsonl \
  --model.init_args.policy.load_in_4bit=true --model.init_args.policy.bnb_compute_dtype=bfloat16
summary gpu-qlora
run lora-bf16 $PY -m reczero fit "${throughput[@]}" --trainer.default_root_dir=checkpoints/gpu-bf16 \
  --trainer.logger.init_args.save_dir=checkpoints/gpu-bf16 --model.init_args.rollout_log=checkpoints/gpu-bf16/rollouts.jsonl \
  --model.init_args.policy.dtype=bfloat16
summary gpu-bf16
