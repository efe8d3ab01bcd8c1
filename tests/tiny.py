"""Tiny, download-free stand-ins for the real tokenizer and policy, built in-process for tests.

Everything here is deterministic and takes milliseconds (the tokenizer) to ~0.1 s (the model):

- `make_tiny_tokenizer()`: a byte-level BPE tokenizer (any text round-trips through encode/decode
  exactly, so reward parsing sees what the model wrote) trained on a small corpus holding the
  RecZero tags (`<analyze user>` ... `</rate>`), digits and common English. ChatML chat template
  with system/user/assistant roles and `add_generation_prompt`. Special tokens: bos `<s>`,
  eos `<|im_end|>` (the end-of-turn token, as in SmolLM2), pad `<pad>` (distinct from eos, so a
  pad/eos mix-up shows in tests), plus `<|im_start|>`. Padding side is left, as for generation.
- `make_tiny_tokenizer(system_role=False)`: same vocabulary, but the chat template raises on a
  system message and on roles that do not alternate user/assistant (like Gemma's): use it to
  test that the system prompt is merged into the first user turn.
- `make_tiny_llama(tokenizer)`: a seeded 2-layer Llama (hidden 64, 4 heads, 2 KV heads) whose
  vocabulary matches the tokenizer; embeddings tied to the LM head like SmolLM2.
- `save_tiny_checkpoint(dir)`: writes both to a folder, so `PolicyConfig(model=str(dir))` can load
  them the way it loads a hub model (used for the 4-bit and path-loading tests).
- `save_tiny_qwen2(dir)`: the same with a random 2-layer Qwen2 (the Qwen2.5 recipes' architecture:
  q/k/v biases, untied head, a 32k context), for rehearsing the GPU configs on the CPU.
- `bitsandbytes_cpu_usable()`: whether bitsandbytes' 4-bit runs on this CPU.
- `synthetic_data(model_dir, prompt, cache_dir)`: a DataModule over a small synthetic set.
- `perturb_lora(model)`: LoRA B starts at zero, so a fresh adapter changes nothing; this fills the
  adapter with small random values so adapter-on and adapter-off outputs differ.
- `prompt_batch(tokenizer, prompts, targets)` / `scripted_generation(tokenizer, texts, finished)`: a
  prompt batch as the DataModule serves it and a `Generation` of given texts, so the real rollout
  record path (`rollout.record.record_from_generation`) scores chosen completions.

The pytest fixtures over these live in `tests/conftest.py`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

BOS, EOS, PAD, IM_START = "<s>", "<|im_end|>", "<pad>", "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START]
VOCAB_SIZE = 640

TAGS = [
    "<analyze user>",
    "</analyze user>",
    "<analyze item>",
    "</analyze item>",
    "<match>",
    "</match>",
    "<rate>",
    "</rate>",
]

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Gemma-like: no system role, strict user/assistant alternation starting with the user.
NO_SYSTEM_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ raise_exception('System role not supported') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _corpus() -> list[str]:
    """A few hundred lines of the text the project's prompts and completions are made of."""
    english = (
        "You are a helpful assistant that predicts how a user will rate a movie. "
        "The user has rated the following movies. Think about the user, the item and how well they match, "
        "then give a rating between 1 and 5. The user likes action, comedy, drama, romance and thriller films; "
        "the item is a classic from the year 1995 with a strong story and good actors. "
        "Rating history: Toy Story (1995): 5. GoldenEye (1995): 3. Four Rooms (1995): 4. Get Shorty (1995): 3. "
        "The average rating of this user is 3.6 and of this item is 4.1. Answer in the required format. "
        "I think this user would enjoy it because of the genre, but the pace is slow. "
        "Hello world! What is the weather today? It is a sunny day, isn't it?"
    )
    tagged = (
        "<analyze user> The user enjoys comedies and dislikes horror. </analyze user> "
        "<analyze item> A light comedy with a famous cast. </analyze item> "
        "<match> The item fits the user's taste well. </match> <rate> 4 </rate>"
    )
    lines = [english, tagged, " ".join(TAGS)]
    lines += [f"<rate>{r}</rate> <rate> {r} </rate> rating {r}.{d} {r}{d}" for r in range(1, 6) for d in range(10)]
    lines += [" ".join(str(i) for i in range(start, start + 50)) for start in range(0, 2000, 50)]
    return lines * 4


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the byte-level BPE once per process; wrappers are then built from this JSON in ~1 ms."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def make_tiny_tokenizer(system_role: bool = True) -> PreTrainedTokenizerFast:
    """A fresh tiny tokenizer (safe to mutate); `system_role=False` gives the Gemma-like template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        padding_side="left",
        model_max_length=2048,
    )
    tokenizer.chat_template = CHATML_TEMPLATE if system_role else NO_SYSTEM_TEMPLATE
    return tokenizer


def _tiny_shape(tokenizer: PreTrainedTokenizerFast) -> dict:
    """2 layers, hidden 64, 4 heads (2 KV), on the tokenizer's vocabulary and special tokens."""
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast, **overrides) -> LlamaConfig:
    """The tiny Llama's config; `overrides` replace any field (e.g. `tie_word_embeddings=False`)."""
    kwargs = dict(_tiny_shape(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def make_tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A seeded fp32 tiny Llama in eval mode; the global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(tokenizer, **overrides))
    return model.eval()


def save_tiny_checkpoint(path: str | Path, seed: int = 0, system_role: bool = True, **overrides) -> Path:
    """Write a tiny tokenizer + tiny Llama (safetensors) to `path`, loadable like any hub checkpoint."""
    path = Path(path)
    tokenizer = make_tiny_tokenizer(system_role=system_role)
    make_tiny_llama(tokenizer, seed=seed, **overrides).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_qwen2(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny tokenizer + a seeded random 2-layer Qwen2 (hidden 64) to `path`."""
    path = Path(path)
    tokenizer = make_tiny_tokenizer()
    config = Qwen2Config(**_tiny_shape(tokenizer), max_position_embeddings=32768, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bitsandbytes_cpu_usable() -> bool:
    """Whether bitsandbytes' 4-bit NF4 round trip runs on this CPU (tests of 4-bit loading skip otherwise)."""
    try:
        import bitsandbytes.functional as F

        packed, state = F.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
        return F.dequantize_4bit(packed, state).shape == (64, 64)
    except Exception:
        return False


def synthetic_data(
    model_dir: str | Path, prompt, cache_dir: str | Path, users: int = 20, validation: int = 2, **kwargs
):
    """A `RatingDataModule` over a small synthetic set (3 history records a side), rendering with the
    tokenizer in `model_dir`, one prompt a batch unless `kwargs` say otherwise."""
    from reczero.data.datamodule import RatingDataModule
    from reczero.data.samples import SampleConfig
    from reczero.data.sources import SourceConfig

    return RatingDataModule(
        source=SourceConfig(
            format="synthetic", synthetic_users=users, synthetic_items=20, synthetic_ratings_per_user=8
        ),
        samples=SampleConfig(user_history=3, item_history=3, min_history=2, max_samples={"validation": validation}),
        prompt=prompt,
        tokenizer=str(model_dir),
        cache_dir=str(cache_dir),
        **{"batch_size": 1, **kwargs},
    )


@torch.no_grad()
def perturb_lora(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Fill every LoRA A/B matrix with seeded noise (in place), so the adapter changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            noise = torch.randn(param.shape, generator=gen) * scale
            param.copy_(noise.to(param.device, param.dtype))
    return model


def prompt_batch(tokenizer: PreTrainedTokenizerFast, prompts: list[str], targets: list[float]) -> dict:
    """A left-padded prompt batch with the DataModule's keys (sample ids 0..B-1)."""
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    n = len(prompts)
    return {
        "input_ids": enc["input_ids"],  # [B, P]
        "attention_mask": enc["attention_mask"],  # [B, P]
        "target": torch.tensor(targets, dtype=torch.float32),  # [B]
        "fallback": torch.full((n,), 3.5),  # [B]
        "sample_id": torch.arange(n),  # [B]
        "history_len": torch.full((n,), 5),  # [B]
    }


def scripted_generation(tokenizer: PreTrainedTokenizerFast, texts: list[str], finished: list[bool]):
    """A `Generation` holding `texts` (each + EOS) as if sampled; `finished` False marks a truncated one."""
    from reczero.rollout.engine import Generation

    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(i) for i in ids)
    tokens = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)  # [N, C]
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = torch.tensor(seq)
    lengths = torch.tensor([len(i) for i in ids])  # [N]
    return Generation(tokens, lengths, torch.tensor(finished), texts)
