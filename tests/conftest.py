"""Shared fixtures: a tiny tokenizer, a tiny Llama and a tiny LoRA policy, built in-process (no downloads).

Fixtures (see `tests/tiny.py` for what each object is made of):

- `tiny_tokenizer`: byte-level BPE, ChatML template (system/user/assistant, `add_generation_prompt`),
  bos `<s>`, eos `<|im_end|>`, pad `<pad>`, left padding. A fresh object per test (building one
  from the session's trained tokenizer takes ~1 ms), so a test may change it freely.
- `tiny_tokenizer_no_system`: same vocabulary; the template raises on a system message and on
  roles that do not alternate (Gemma-like). For tests of merging the system prompt into the user turn.
- `tiny_model`: a fresh seeded 2-layer Llama (hidden 64, fp32, eval mode, tied embeddings).
- `tiny_policy_config`: `PolicyConfig(lora_r=4, lora_alpha=8)`; `model` is unused with injection.
- `tiny_policy`: `build_policy(tiny_policy_config, base_model=tiny_model)`: a PeftModel whose
  LoRA B is zero (it still computes the base model's function; `tiny.perturb_lora` changes that).
- `tiny_model_dir`: a folder (once per session) holding the tiny tokenizer and model as a normal
  Hugging Face checkpoint, for `PolicyConfig(model=str(tiny_model_dir))`. Treat it as read-only.

Example::

    def test_something(tiny_tokenizer, tiny_policy):
        batch = tiny_tokenizer(["<rate>4</rate>"], return_tensors="pt")
        logits = tiny_policy(**batch).logits  # [1, L, V]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from tiny import ...` in test modules

from tiny import make_tiny_llama, make_tiny_tokenizer, save_tiny_checkpoint  # noqa: E402


def pytest_configure(config):
    # `dtype: auto` on the CPU follows the CPU's flags (`reczero.policy.precision`): bf16 on AMX. The
    # tests check fp32 numbers on every CPU, so the pin goes into the environment for the whole session,
    # before any fixture runs: every subprocess a test starts inherits it. A test of the rule itself
    # unsets it with monkeypatch (restored after that test).
    from reczero.policy.precision import PIN_VARIABLE

    os.environ[PIN_VARIABLE] = "float32"
    # peft 0.21 calls a transformers 5 property that is deprecated; harmless, and noisy in every test.
    config.addinivalue_line("filterwarnings", "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture
def tiny_tokenizer():
    """A fresh tiny ChatML tokenizer (left padding, distinct pad/eos)."""
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_tokenizer_no_system():
    """A fresh tiny tokenizer whose chat template rejects the system role (like Gemma's)."""
    return make_tiny_tokenizer(system_role=False)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A fresh seeded 2-layer Llama matching `tiny_tokenizer`'s vocabulary."""
    return make_tiny_llama(tiny_tokenizer)


@pytest.fixture
def tiny_policy_config():
    """The PolicyConfig the tiny policy is built with (LoRA r=4 on all linear layers)."""
    from reczero.policy.factory import PolicyConfig

    return PolicyConfig(lora_r=4, lora_alpha=8)


@pytest.fixture
def tiny_policy(tiny_model, tiny_policy_config):
    """A LoRA policy (PeftModel) around `tiny_model`, built by `reczero.policy.factory.build_policy`."""
    from reczero.policy.factory import build_policy

    return build_policy(tiny_policy_config, base_model=tiny_model)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A read-only folder with the tiny tokenizer + model saved as a Hugging Face checkpoint."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))
