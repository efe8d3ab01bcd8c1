"""Batched sampling with a shared prompt prefill: the rollout engine.

GRPO samples G completions of every prompt. Instead of repeating each prompt G times, we prefill
every prompt ONCE and decode all B*G rows together (prompt-major: rows b*G .. b*G+G-1 belong to
prompt b). On the CPU the prompt's KV cache stays single and each step's attention reads it once per
prompt (`kv_cache.SharedPrefixLayer`); elsewhere it is repeated G times into an in-place buffer.
Logits are computed only for the last position, rows that have finished (EOS or a stop string such
as `</rate>`) are dropped from the batch, and decoding ends as soon as every row has ended. Sampling uses an explicit `torch.Generator` so a resumed run
draws the same numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from reczero.policy.forward import _CACHE_KWARG, _cache_of, causal_lm
from reczero.rollout.kv_cache import preallocate, share_prefix, shared_prefix_decoding


@dataclass
class SamplingConfig:
    """How completions are sampled. Used as `--model.rollout.<field>` on the CLI."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = ("</rate>",)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Watch:
    """Record the next-token distribution over `token_ids [K]` wherever the completion reaches `tag`.

    Expected-rating decoding needs the model's distribution at the rating block; reading it off the
    decoding step that is computed anyway saves a second forward over prompt + completion.
    """

    tag: str
    token_ids: torch.Tensor


@dataclass
class Generation:
    """Sampled completions, prompt-major.

    tokens:   [N, C] completion token ids, `pad_id` after each row's end (N = B * num_samples)
    lengths:  [N] tokens per completion, the EOS or stop-string tokens included
    finished: [N] True where the row ended by EOS or a stop string, False where it hit max_new_tokens
    texts:    N decoded completions (special tokens removed)
    watched:  [N, K] float64 next-token probabilities of `Watch.token_ids` at the LAST point where the
              completion so far ended with `Watch.tag` (plus any whitespace); NaN where it never did
    watched_at: [N] completion tokens before that point (-1 where never)
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    texts: list[str]
    watched: torch.Tensor | None = None
    watched_at: torch.Tensor | None = None

    @property
    def completion_mask(self) -> torch.Tensor:
        """[N, C] True on the tokens each completion really generated."""
        steps = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return steps[None, :] < self.lengths[:, None]


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """logits [A, V] -> next tokens [A]; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [A, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [A, V]
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return sample_categorical(logits.softmax(dim=-1), generator)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """probs [A, V] -> one index per row [A], by inverting the CDF with one uniform draw per row.

    `torch.multinomial` draws an exponential for every vocabulary entry, per row and step; this draws
    A numbers. The CDF is summed in float64 so rounding cannot shift probability mass between tokens
    measurably.
    """
    cdf = probs.double().cumsum(dim=-1)  # [A, V]
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)  # [A, 1]
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first entry whose CDF exceeds u
    return index.squeeze(-1).clamp(max=probs.shape[-1] - 1)


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """EOS ids from the tokenizer and the model's generation config (chat models often have several)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    return ids


@torch.no_grad()
def generate(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_samples: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    inplace_cache: bool = True,
    watch: Watch | None = None,
    shared_prefix: bool | None = None,
) -> Generation:
    """Sample `num_samples` completions of each left-padded prompt (`input_ids [B, P]`).

    The model must be in eval mode (the caller owns train/eval switching). `inplace_cache` decodes
    into a preallocated KV cache (`kv_cache.PreallocatedLayer`) instead of transformers' concatenating
    one; False is kept for benchmarks and equality tests. `watch` records rating distributions
    (`Watch`, `Generation.watched`). `shared_prefix` keeps each prompt's KV once
    (`kv_cache.SharedPrefixLayer`); None means on the CPU, with more than one sample per prompt, for
    sdpa / eager attention and plain caches (it falls back to the repeated cache otherwise).
    """
    device = input_ids.device
    batch, width = input_ids.shape
    n = batch * num_samples
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = torch.tensor(sorted(stop_token_ids(tokenizer, model)), device=device)
    stop_strings = tuple(sampling.stop_strings or ())
    tails_of = [*stop_strings, *([watch.tag] if watch else [])]
    tail_tokens = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in tails_of), default=0) + 2

    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = _cache_of(out)
    logits = out.logits[:, -1, :]  # [B, V]
    config = getattr(causal_lm(model), "config", None)  # None: not a transformers model (a test's stand-in)
    if shared_prefix is None:  # one sample per prompt shares nothing, and would pay a loop over the prompts
        attention = getattr(config, "_attn_implementation", None)
        shared_prefix = device.type == "cpu" and num_samples > 1 and attention in ("sdpa", "eager")
    shared = (
        inplace_cache
        and shared_prefix
        and config is not None
        and share_prefix(cache, attention_mask, sampling.max_new_tokens, num_samples)
    )
    # otherwise share the prefill by repeating each prompt's cache G times, prompt-major
    if not shared and inplace_cache:
        preallocate(cache, capacity=width + sampling.max_new_tokens, repeats=num_samples)
    elif not shared and num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
    if num_samples > 1:
        logits = logits.repeat_interleave(num_samples, dim=0)  # [N, V]
    mask = attention_mask.repeat_interleave(num_samples, dim=0)  # [N, P]
    next_pos = positions[:, -1:].repeat_interleave(num_samples, dim=0) + 1  # [N, 1]

    tokens = torch.full((n, sampling.max_new_tokens), pad_id, dtype=torch.long, device=device)  # [N, C]
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    active = torch.arange(n, device=device)  # rows of `tokens` still decoding, in cache order
    if watch is not None:
        watch_ids = watch.token_ids.to(device)
        watched = torch.full((n, len(watch_ids)), float("nan"), dtype=torch.float64, device=device)  # [N, K]
        watched_at = torch.full((n,), -1, dtype=torch.long, device=device)
    for step in range(sampling.max_new_tokens):
        new = sample_next(logits, sampling.temperature, sampling.top_p, sampling.top_k, generator)  # [A]
        tokens[active, step] = new
        lengths[active] = step + 1
        done = torch.isin(new, eos_ids)
        if tails_of:
            start = max(0, step + 1 - tail_tokens)
            tails = tokenizer.batch_decode(tokens[active, start : step + 1], skip_special_tokens=True)
        if stop_strings:
            hit = torch.tensor([any(s in t for s in stop_strings) for t in tails], device=device)
            done = done | hit
        if watch is not None:  # rows whose next token is the rating: record the coming logits
            at_tag = torch.tensor([t.rstrip().endswith(watch.tag) for t in tails], device=device)  # [A]
        finished[active[done]] = True
        if step + 1 == sampling.max_new_tokens or bool(done.all()):
            break
        keep = (~done).nonzero(as_tuple=True)[0]  # [A'] positions within the active batch
        if keep.numel() < active.numel():
            cache.batch_select_indices(keep)
            mask, next_pos, new, active = mask[keep], next_pos[keep], new[keep], active[keep]
            if watch is not None:
                at_tag = at_tag[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # [A, P + step + 1]
        # the shared-prefix attention needs no mask: its layers hold the prompts' padding
        with shared_prefix_decoding(config, cache) if shared else contextlib.nullcontext():
            out = model(
                input_ids=new[:, None],
                attention_mask=None if shared else mask,
                position_ids=next_pos,
                use_cache=True,
                **{_CACHE_KWARG: cache},
            )
        cache = _cache_of(out)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
        if watch is not None and bool(at_tag.any()):
            rows = active[at_tag]
            watched[rows] = logits[at_tag].double().softmax(dim=-1)[:, watch_ids]
            watched_at[rows] = step + 1
    used = int(lengths.max().item()) if n else 0
    tokens = tokens[:, : max(used, 1)]
    texts = [tokenizer.decode(tokens[i, : lengths[i]].tolist(), skip_special_tokens=True) for i in range(n)]
    if watch is None:
        return Generation(tokens=tokens, lengths=lengths, finished=finished, texts=texts)
    return Generation(tokens, lengths, finished, texts, watched, watched_at)
