"""reczero: RecZero and RecOne ("Think before Recommendation") on PyTorch Lightning.

An LLM learns by reinforcement learning (GRPO) to analyse a user, analyse an item, match them
and only then rate. The pure method sits at the root (`scale`, `prompts`, `rationales`, `reasoning`,
`answers`, `rewards`, `grpo`, `metrics`: torch, numpy and the standard library only); one folder per
concern sits on top of it, each importing only from those below: `policy/`, `data/`, `rollout/`,
`modules/` (the Lightning glue that calls the method) and `recone/`, `evaluation/`; `cli`, the one
entry point, is on top (tests/test_layers.py holds the order).
"""

__version__ = "0.1.0"
