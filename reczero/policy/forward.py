"""The policy's forward passes: the training log-probs of a rollout's completions, and the cache argument.

`completion_logprobs` and `shared_prefix_logprobs` (the same numbers, each group's prompt run once)
compute the completion tokens' log-probs of rows of a rollout record (`rollout.record.RolloutRecord`:
its `input_ids`, `attention_mask`, `completion_mask`, `prompt_width` and `group_size` are read) for
the GRPO loss; logits are computed for completion positions only. `_CACHE_KWARG` / `_cache_of` pass
a KV cache into a transformers forward and read it back out across transformers versions; the
rollout engine uses them too.
"""

from __future__ import annotations

import torch

from reczero import grpo


def _cache_kwarg() -> str:
    """transformers 5.2x renamed `past_key_values` to `cache`; support both."""
    import inspect

    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


_CACHE_KWARG = _cache_kwarg()


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def completion_logprobs(model, record, rows: slice, temperature: float) -> torch.Tensor:
    """Log-probs of the completion tokens of `rows`: [n, C]. Logits only at the C positions that predict them."""
    ids = record.input_ids[rows]  # [n, P + C]
    mask = record.attention_mask[rows]  # [n, P + C]
    width = record.completion_mask.shape[1]  # C
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [n, P + C]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=width + 1).logits
    logits = logits[:, :-1, :]  # [n, C, V]: position t predicts completion token t
    return grpo.token_logprobs(logits, ids[:, -width:], temperature)


def shared_prefix_logprobs(model, record, rows: slice, temperature: float) -> torch.Tensor:
    """Same result as `completion_logprobs`, running each group's shared prompt ONCE (with gradients).

    `rows` must cover whole groups. The prompt's KV cache is computed for the n / G distinct prompts,
    repeated G times (differentiably), and the completions attend to it; the gradient reaching the
    prompt positions is the sum over the group, exactly as in the unshared computation.
    """
    group, width = record.group_size, record.completion_mask.shape[1]  # G, C
    p = record.prompt_width
    ids = record.input_ids[rows]  # [n, P + C]
    mask = record.attention_mask[rows]  # [n, P + C]
    prompt_ids, prompt_mask = ids[::group, :p], mask[::group, :p]  # [n / G, P]
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # [n / G, P]
    out = model(
        input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos, use_cache=True, logits_to_keep=1
    )
    first = out.logits[:, -1, :].repeat_interleave(group, dim=0)  # [n, V]: predicts completion token 0
    cache = _cache_of(out)
    cache.batch_repeat_interleave(group)  # [n / G, ...] -> [n, ...], prompt-major like the rollout
    start = prompt_pos[:, -1:].repeat_interleave(group, dim=0) + 1  # [n, 1]
    steps = torch.arange(width, device=ids.device)[None, :]  # [1, C]
    out = model(
        input_ids=ids[:, p:], attention_mask=mask, position_ids=start + steps, use_cache=True, **{_CACHE_KWARG: cache}
    )
    # log-probs of token 0 and of tokens 1..C-1 apart: concatenating the logits would copy [n, C, V]
    head = grpo.token_logprobs(first[:, None, :], ids[:, p : p + 1], temperature)  # [n, 1]
    if width == 1:
        return head
    rest = grpo.token_logprobs(out.logits[:, :-1, :], ids[:, p + 1 :], temperature)  # [n, C - 1]
    return torch.cat([head, rest], dim=1)
