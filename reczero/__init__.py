"""reczero: RecZero and RecOne ("Think before Recommendation") on PyTorch Lightning.

An LLM learns by reinforcement learning (GRPO) to analyse a user, analyse an item, match them
and only then rate. The pure method sits at the root (`prompts`, `rewards`, `grpo`, `metrics`,
`scale`: torch and the standard library only); one folder per concern sits on top of it: `data/`,
`policy/`, `rollout/`, `modules/` (the Lightning glue that calls the method), `recone/` and
`evaluation/`. `cli` is the one entry point.
"""

__version__ = "0.1.0"
