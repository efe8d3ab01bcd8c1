"""reczero: RecZero and RecOne ("Think before Recommendation") on PyTorch Lightning.

An LLM learns by reinforcement learning (GRPO) to analyse a user, analyse an item, match them
and only then rate. Pure parts (`prompts`, `rewards`, `grpo`, `metrics`) import only torch and
the standard library; Lightning glue lives in the modules and callbacks that call them.
"""

__version__ = "0.1.0"
