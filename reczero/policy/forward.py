"""The policy's forward passes: the training log-probs of a rollout's completions, and the cache argument.

`completion_logprobs` and `shared_prefix_logprobs` (the same numbers, each group's prompt run once)
compute the completion tokens' log-probs of rows of a rollout record (`rollout.record.RolloutRecord`:
its `input_ids`, `attention_mask`, `completion_mask`, `prompt_width` and `group_size` are read) for
the GRPO loss. Both run the decoder, keep the hidden states of the positions that predict a real
completion token (padding is dropped before the LM head), and turn them into log-probs with
`policy.logprobs.head_logprobs`, which never materialises the [tokens, vocabulary] logits of more than
one chunk.
`shared_prefix_logprobs` also packs the G completions of a group into a few rows ("lanes") that
attend to the prompt's KV cache, so right-padding costs no decoder work either (`pack_lanes`).
`cache_kwarg` / `cache_of` pass a KV cache into a transformers forward and read it back out across
transformers versions; the rollout engine uses them too.
"""

from __future__ import annotations

import inspect

import torch

from reczero.policy.logprobs import head_logprobs, token_logprobs

# config fields of models whose LM head is more than `hidden @ weight.T` (softcapping, scaling)
_SCALED_HEAD_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def cache_kwarg(module=None) -> str:
    """The KV-cache argument name of `module.forward` (default: transformers' causal LM): transformers
    5.2x renamed `past_key_values` to `cache`; both are supported."""
    if module is None:
        from transformers import LlamaForCausalLM

        forward = LlamaForCausalLM.forward
    else:
        forward = module.forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


CACHE_KWARG = cache_kwarg()


def cache_of(out):
    """The KV cache a transformers forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


# the names `rollout/engine.py` imports today; they go when it imports `CACHE_KWARG` and `cache_of`
_CACHE_KWARG, _cache_of = CACHE_KWARG, cache_of


def causal_lm(model):
    """The transformers model inside a PEFT policy (or `model` itself)."""
    from reczero.policy.factory import unwrap_policy

    try:
        return unwrap_policy(model).get_base_model()
    except TypeError:
        return model


def fused_head(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, LM head) where log-probs may be computed from the decoder's hidden states with the
    head's weight; None where the model's own forward must make the logits (a trainable, LoRA'd,
    quantised or sharded head, or a head that scales or softcaps its logits)."""
    lm = causal_lm(model)
    get_decoder, get_head = getattr(lm, "get_decoder", None), getattr(lm, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    head = get_head()
    config = getattr(lm, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if type(head) is not torch.nn.Linear or head.weight.requires_grad or head.weight.dim() != 2:
        return None
    if head.weight.shape[1] != getattr(text_config, "hidden_size", -1) or type(head.weight) not in (
        torch.nn.Parameter,
        torch.Tensor,
    ):
        return None
    if any(getattr(text_config, name, None) not in (None, 1.0) for name in _SCALED_HEAD_FIELDS):
        return None
    try:
        decoder = get_decoder()
    except (AttributeError, ValueError):
        return None
    return decoder, head


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[n, C] float32 holding `values` [M] where `mask` [n, C] is True, 0 elsewhere (differentiably)."""
    return values.new_zeros(mask.shape).masked_scatter(mask, values)


def completion_logprobs(model, record, rows: slice | torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probs of the completion tokens of `rows`: [n, C], 0 after each completion's end.

    Each row runs whole (prompt + completion); only the positions that predict a real completion
    token reach the LM head.
    """
    ids = record.input_ids[rows]  # [n, P + C]
    mask = record.attention_mask[rows]  # [n, P + C]
    keep = record.completion_mask[rows]  # [n, C]
    width = keep.shape[1]  # C
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [n, P + C]
    targets = ids[:, -width:][keep]  # [M]
    parts = fused_head(model)
    if parts is None:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=width + 1).logits
        logits = logits[:, :-1, :][keep]  # [M, V]: position t predicts completion token t
        return _scatter(token_logprobs(logits[None], targets[None], temperature)[0], keep)
    decoder, head = parts
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state  # [n, P + C, H]
    hidden = hidden[:, -width - 1 : -1][keep]  # [M, H]
    return _scatter(head_logprobs(head, hidden, targets, temperature), keep)


def pack_lanes(lengths: list[int], lanes: int) -> list[list[int]]:
    """Split one group's completions (their input lengths) into `lanes` lists, longest first into the
    least filled lane, so the longest lane is short."""
    packed: list[list[int]] = [[] for _ in range(lanes)]
    fill = [0] * lanes
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        lane = min(range(lanes), key=lambda k: fill[k])
        packed[lane].append(i)
        fill[lane] += lengths[i]
    return [lane for lane in packed if lane] or [[]]


def _choose_lanes(groups: list[list[int]], prompt: int, per_token: float, per_pair: float) -> int:
    """Lanes per group that minimise the estimated decoder cost: every lane is padded to the longest,
    each lane token costs `per_token` (the linear layers) plus `per_pair` for each key it is scored
    against (the attention kernels score the whole masked rectangle)."""
    best, best_cost = 1, float("inf")
    for lanes in range(1, max(len(g) for g in groups) + 1):
        width = max(sum(g[i] for i in lane) for g in groups for lane in pack_lanes(g, lanes))
        cost = len(groups) * lanes * width * (per_token + per_pair * (prompt + width))
        if cost < best_cost:
            best, best_cost = lanes, cost
    return best


def _cost_weights(decoder) -> tuple[float, float]:
    """FLOPs per token of one decoder layer's weights, and per (query, key) pair of its attention."""
    config = decoder.config
    layers = getattr(decoder, "layers", None)
    if layers is not None and len(layers):
        per_layer = sum(p.numel() for p in layers[0].parameters())
    else:
        per_layer = 12 * config.hidden_size**2
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2.0 * per_layer, 4.0 * heads * head_dim


def shared_prefix_logprobs(
    model, record, rows: slice | torch.Tensor, temperature: float, lanes: int | None = None
) -> torch.Tensor:
    """Same result as `completion_logprobs`, running each group's shared prompt ONCE (with gradients).

    `rows` must cover whole groups. The prompt's KV cache is computed for the n / G distinct prompts,
    and the completions attend to it; the gradient reaching the prompt positions is the sum over
    the group, exactly as in the unshared computation. A group's completions are packed into lanes
    (`pack_lanes`: one row holding several completions, one after the other, each attending to the
    prompt and to its own earlier tokens through a 4-D mask) instead of one right-padded row each;
    the number of lanes per group minimises the estimated decoder cost (`_choose_lanes`) unless
    `lanes` is given (1: a whole group in one row; G: one completion per row, as without packing).
    """
    parts = fused_head(model)
    if parts is None:
        return completion_logprobs(model, record, rows, temperature)
    decoder, head = parts
    group, p = record.group_size, record.prompt_width  # G, P
    ids = record.input_ids[rows]  # [n, P + C]
    keep = record.completion_mask[rows]  # [n, C]
    n, device = ids.shape[0], ids.device
    if n % group:
        raise ValueError(f"shared_prefix_logprobs needs whole groups: {n} rows, group size {group}")
    prompt_ids, prompt_mask = ids[::group, :p], record.attention_mask[rows][::group, :p]  # [k, P]
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # [k, P]
    out = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos, use_cache=True)
    last = out.last_hidden_state[:, -1]  # [k, H]: predicts each completion's token 0
    cache = cache_of(out)

    # Each completion's inputs are its tokens but the last (which only is a target).
    lengths = keep.sum(-1).tolist()  # [n]
    inputs = [max(0, length - 1) for length in lengths]
    groups = [inputs[j : j + group] for j in range(0, n, group)]
    if lanes is None:
        lanes = _choose_lanes(groups, p, *_cost_weights(decoder))
    layout = [pack_lanes(g, lanes) for g in groups]  # per group, per lane: completion indices
    lane_rows = [(j, [j * group + i for i in lane]) for j, packed in enumerate(layout) for lane in packed]
    width = max(1, max(sum(inputs[r] for r in lane) for _, lane in lane_rows))  # T
    count = len(lane_rows)  # L lanes
    lane_ids = torch.full((count, width), int(ids[0, 0]), dtype=ids.dtype, device=device)  # [L, T]
    segment = torch.full((count, width), -1, dtype=torch.long, device=device)  # [L, T] completion index, -1 pad
    offset = torch.zeros((count, width), dtype=torch.long, device=device)  # [L, T] position within it
    where = [0] * n  # each completion's first input position, as an index into the flat [L * T] lanes
    for lane_index, (_, lane) in enumerate(lane_rows):
        at = 0
        for r in lane:
            end = at + inputs[r]
            lane_ids[lane_index, at:end] = ids[r, p : p + inputs[r]]
            segment[lane_index, at:end] = r
            offset[lane_index, at:end] = torch.arange(inputs[r], device=device)
            where[r] = lane_index * width + at
            at = end
    lane_group = torch.tensor([j for j, _ in lane_rows], device=device)  # [L]
    if count != len(layout):
        cache.batch_repeat_interleave(lanes)  # [k, ...] -> [L, ...], group-major like `lane_rows`
    start = prompt_pos[lane_group, -1:] + 1  # [L, 1]
    own = (segment[:, None, :] == segment[:, :, None]) & (segment[:, None, :] >= 0)  # [L, T, T]
    own &= torch.ones(width, width, dtype=torch.bool, device=device).tril()
    allowed = torch.cat([prompt_mask[lane_group, None, :].bool().expand(count, width, p), own], dim=-1)
    dtype = last.dtype
    attn = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    hidden = decoder(
        input_ids=lane_ids,
        attention_mask=attn[:, None],  # [L, 1, T, P + T]
        position_ids=start + offset,
        use_cache=True,
        **{cache_kwarg(decoder): cache},
    ).last_hidden_state  # [L, T, H]

    # gather, row by row, the hidden state that predicts each completion token
    flat = torch.cat([hidden.reshape(count * width, -1), last])  # [L * T + k, H]
    index = []
    for r in range(n):
        if lengths[r]:
            index.append(count * width + r // group)
            index.extend(range(where[r], where[r] + inputs[r]))
    index_t = torch.tensor(index, dtype=torch.long, device=device)  # [M]
    targets = ids[:, p:][keep]  # [M], row-major like `index`
    return _scatter(head_logprobs(head, flat[index_t], targets, temperature), keep)
