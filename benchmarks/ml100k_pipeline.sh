#!/usr/bin/env bash
# RecZero and RecOne on MovieLens-100K, end to end on the CPU, under the headline protocol
# (global time split; every method scored on the same seeded 1,000 test samples):
#   classical baselines -> RecOne cold-start traces (rule-based teacher) -> SFT -> GRPO (strict reward)
#   (each evaluated as soon as it exists) -> RecZero zero-shot, GRPO, evaluation -> report with intervals.
# Each stage is skipped when its output exists, so a stopped run resumes where it was (a stage cut
# short reruns; `fit` stages resume from their last checkpoint). Wall time per stage goes to
# $OUT/stages.jsonl. Usage: benchmarks/ml100k_pipeline.sh [path/to/ml-100k] (make ml100k).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/ml-100k}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/ml100k}
RUNS=checkpoints  # where configs/ml100k*.yaml write their runs
TRACES=${TRACES:-512}
BUDGET=128  # one token budget: rollouts, validation and test (configs/ml100k*.yaml), above the traces' p99
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

stage() {  # stage NAME DONE_FILE CMD...: run CMD unless DONE_FILE exists; log its wall time
  local name=$1 done=$2; shift 2
  if [[ -e $done ]]; then echo "== $name: done ($done)"; return; fi
  echo "== $name: $*"
  local start; start=$(date +%s)
  "$@"
  echo "{\"stage\": \"$name\", \"seconds\": $(( $(date +%s) - start )), \"finished\": \"$(date -u +%FT%TZ)\"}" >> "$OUT/stages.jsonl"
}

data=(--data.source.path="$DATA")
resume() { [[ -e $1/last.ckpt ]] && echo --ckpt_path=last || true; }
evaluate() {  # evaluate NAME CONFIG DECODING [--adapter DIR]
  local name=$1 config=$2 decoding=$3; shift 3
  stage "evaluate $name" "$OUT/$name.metrics.json" \
    $PY -m reczero evaluate --config "$config" "${data[@]}" --split test --decode.mode="$decoding" \
      --decode.max_new_tokens=$BUDGET --name "$name" --output "$OUT/$name.jsonl" --no-progress "$@"
}

stage baselines "$OUT/baselines.json" \
  $PY -m reczero baselines --config configs/ml100k-sft.yaml "${data[@]}" --output "$OUT/baselines.json"
stage coldstart "$RUNS/traces-ml100k.jsonl.done" bash -c "
  $PY -m reczero coldstart --config configs/ml100k-sft.yaml ${data[*]} --teacher template --num-traces $TRACES --tolerance 4 \
  && touch $RUNS/traces-ml100k.jsonl.done"
stage sft "$RUNS/sft-ml100k/adapter" \
  $PY -m reczero fit --config configs/ml100k-sft.yaml "${data[@]}" $(resume "$RUNS/sft-ml100k")
evaluate recone-sft-only configs/ml100k-recone.yaml expected --adapter "$RUNS/sft-ml100k/adapter"
stage recone-grpo "$RUNS/recone-ml100k/adapter" \
  $PY -m reczero fit --config configs/ml100k-recone.yaml "${data[@]}" $(resume "$RUNS/recone-ml100k")
evaluate recone configs/ml100k-recone.yaml expected --adapter "$RUNS/recone-ml100k/adapter"
evaluate reczero-zero-shot configs/ml100k.yaml greedy
stage reczero-grpo "$RUNS/grpo-ml100k/adapter" \
  $PY -m reczero fit --config configs/ml100k.yaml "${data[@]}" $(resume "$RUNS/grpo-ml100k")
evaluate reczero configs/ml100k.yaml greedy --adapter "$RUNS/grpo-ml100k/adapter"

$PY -m reczero report --out "$OUT/report" \
  --inputs "$OUT/baselines.json" "$OUT"/reczero-zero-shot.metrics.json "$OUT"/reczero.metrics.json \
    "$OUT"/recone-sft-only.metrics.json "$OUT"/recone.metrics.json \
  --runs "$RUNS/grpo-ml100k" "$RUNS/sft-ml100k" "$RUNS/recone-ml100k"
for run in grpo-ml100k sft-ml100k recone-ml100k; do $PY benchmarks/train_summary.py "$RUNS/$run"; done
echo "stage wall times: $OUT/stages.jsonl"
