"""KV cache layers for the rollout engine: decoding in place, and a group's prompt held once.

transformers' `DynamicLayer.update` concatenates every new key/value onto the whole cache, so each
decode step copies all cached positions of every layer, and a rollout's G rows share one long prompt
(the measured gain is in the README and `benchmarks/rollout_engine.py`).
`PreallocatedLayer` keeps keys and values in a buffer with room for the whole rollout and writes each
step into its slot; `keys` / `values` are views of the filled prefix, so the model and its masks see
exactly what a DynamicLayer would hold.

`SharedPrefixLayer` goes further for GRPO's groups: the G samples of a prompt share its KV, so the
layer keeps each prompt's keys and values ONCE and only the sampled tokens per row, and
`shared_prefix_attention` (a transformers attention function, switched on by `shared_prefix_decoding`)
scores every row's query against its prompt's keys in one matmul per prompt instead of reading G
repeated copies. Softmax runs over prompt and sampled keys together, so the result is the same
attention.

For decoding under `torch.no_grad()` only: the in-place writes would corrupt tensors saved for a
backward pass.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer over a `[B, H, capacity, D]` buffer, filled up to `length`; grows by doubling
    if a write would overflow it."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int, repeats: int = 1) -> None:
        """Start from `keys` / `values` `[b, H, L, D]`, each batch row repeated `repeats` times
        (prompt-major, like `batch_repeat_interleave`), with room for `capacity` positions."""
        super().__init__()
        b, heads, length, dim = keys.shape
        capacity = max(capacity, length)
        self._k = keys.new_empty(b * repeats, heads, capacity, dim)
        self._v = values.new_empty(b * repeats, heads, capacity, values.shape[-1])
        # [b, repeats, H, L, D] views of the buffers: the broadcast copy repeats without a temporary
        self._k.view(b, repeats, heads, capacity, dim)[:, :, :, :length] = keys[:, None]
        self._v.view(b, repeats, heads, capacity, values.shape[-1])[:, :, :, :length] = values[:, None]
        self.length = length
        self.device = keys.device
        self.is_initialized = True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[-2]:
            self._resize(max(end, 2 * self._k.shape[-2]))
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _resize(self, capacity: int) -> None:
        k, v = self._k, self._v
        self._k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
        self._v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
        self._k[:, :, : self.length] = k[:, :, : self.length]
        self._v[:, :, : self.length] = v[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        self._expose()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        self.length = max(0, self.length + tokens_to_remove)
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._k = self._k.repeat_interleave(repeats, dim=0)
        self._v = self._v.repeat_interleave(repeats, dim=0)
        self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k = self._k[indices]
        self._v = self._v[indices]
        self._expose()


def preallocate(cache, capacity: int, repeats: int = 1) -> int:
    """Replace `cache`'s plain DynamicLayers (a prefilled DynamicCache) by PreallocatedLayers with
    room for `capacity` positions, each row repeated `repeats` times; other layer types (sliding
    window, quantised) are only repeated. Returns how many layers were replaced."""
    replaced = 0
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.get_seq_length() > 0:
            cache.layers[i] = PreallocatedLayer(layer.keys, layer.values, capacity, repeats)
            replaced += 1
        elif repeats > 1:
            layer.batch_repeat_interleave(repeats)
    return replaced


class SharedPrefixLayer(PreallocatedLayer):
    """Prompt keys / values `[k, H, P, D]` held once, plus a `[N, H, capacity, D]` in-place buffer
    of the sampled tokens' keys / values (N = k * repeats rows, prompt-major, as the engine lays
    them out): a PreallocatedLayer of the sampled part, which `keys` / `values` expose; `attend`
    adds the prompt part."""

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, prompt_mask: torch.Tensor, capacity: int, repeats: int
    ) -> None:
        """`keys` / `values` `[k, H, P, D]` from the prefill, `prompt_mask` [k, P] (1 on real tokens)."""
        DynamicLayer.__init__(self)  # the buffers below start empty, not from `keys`
        k, heads, _, dim = keys.shape
        self.prefix_keys_t = keys.transpose(-1, -2).contiguous()  # [k, H, D, P]: ready for q @ k.T
        self.prefix_values = values
        # additive [k, P] bias: 0 on real prompt tokens, the dtype's minimum on left padding
        self.prefix_bias = torch.zeros(prompt_mask.shape, dtype=keys.dtype, device=keys.device).masked_fill_(
            prompt_mask == 0, torch.finfo(keys.dtype).min
        )
        self._k = keys.new_empty(k * repeats, heads, max(capacity, 1), dim)
        self._v = values.new_empty(k * repeats, heads, max(capacity, 1), values.shape[-1])
        self.row_prompt = torch.arange(k, device=keys.device).repeat_interleave(repeats)  # [N]
        self._split()
        self.length = 0
        self.device = keys.device
        self.is_initialized = True
        self._expose()

    def _split(self) -> None:
        """(prompt, first row, end row) for each prompt with rows left; rows stay prompt-major."""
        counts = torch.bincount(self.row_prompt, minlength=self.prefix_values.shape[0]).tolist()
        self.spans, start = [], 0
        for prompt, count in enumerate(counts):
            if count:
                self.spans.append((prompt, start, start + count))
                start += count

    def get_seq_length(self) -> int:
        return self.prefix_values.shape[2] + self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.row_prompt = self.row_prompt.repeat_interleave(repeats)
        self._split()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.row_prompt = self.row_prompt[indices]
        self._split()

    def attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of one new token per row: query [A, Hq, 1, D] over its prompt's keys and its own
        sampled `keys` / `values` [A, H, t, D] -> [A, 1, Hq, D]. Query head h reads key head h // (Hq / H).

        One softmax over both parts, taken by hand (max, exp, sum) so the prompt part never has to be
        concatenated to the row's own; scores and sums in float32.
        """
        rows, q_heads, _, dim = query.shape
        heads, dtype = keys.shape[1], query.dtype
        q = query.reshape(rows, heads, q_heads // heads, dim) * scaling  # [A, H, g, D]
        own = (q @ keys.transpose(-1, -2)).float()  # [A, H, g, t]
        top = own.amax(dim=-1)  # [A, H, g]
        prompt = []  # per prompt: scores [H, a * g, P]
        for index, start, end in self.spans:
            qp = q[start:end].transpose(0, 1).reshape(heads, -1, dim)  # [H, a * g, D]
            scores = torch.baddbmm(self.prefix_bias[index], qp, self.prefix_keys_t[index]).float()
            prompt.append(scores)
            top[start:end] = torch.maximum(
                top[start:end], scores.amax(-1).reshape(heads, end - start, -1).transpose(0, 1)
            )
        weights = (own - top[..., None]).exp_()  # [A, H, g, t]
        total = weights.sum(dim=-1)  # [A, H, g]
        out = (weights.to(dtype) @ values).float()  # [A, H, g, D]
        for (index, start, end), scores in zip(self.spans, prompt):
            shift = top[start:end].transpose(0, 1).reshape(heads, -1, 1)  # [H, a * g, 1]
            weights = (scores - shift).exp_()  # [H, a * g, P]
            total[start:end] += weights.sum(-1).reshape(heads, end - start, -1).transpose(0, 1)
            part = (weights.to(dtype) @ self.prefix_values[index]).float()  # [H, a * g, D]
            out[start:end] += part.reshape(heads, end - start, -1, dim).transpose(0, 1)
        out = (out / total[..., None]).to(dtype)  # [A, H, g, D]
        return out.reshape(rows, q_heads, 1, dim).transpose(1, 2)  # [A, 1, Hq, D]


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("reczero_shared_prefix_cache", default=None)
ATTENTION_NAME = "reczero_shared_prefix"


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function for decoding over `SharedPrefixLayer`s (one query token)."""
    cache = _ACTIVE.get()
    if cache is None or query.shape[2] != 1:
        raise RuntimeError("shared_prefix_attention runs only inside shared_prefix_decoding, one token at a time")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return cache.layers[module.layer_idx].attend(query, key, value, scale), None


def share_prefix(cache, prompt_mask: torch.Tensor, capacity: int, repeats: int) -> bool:
    """Replace a prefilled DynamicCache's layers by SharedPrefixLayers; False, changing nothing,
    unless every layer is a plain, filled DynamicLayer."""
    layers = cache.layers
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return False
    for i, layer in enumerate(layers):
        layers[i] = SharedPrefixLayer(layer.keys, layer.values, prompt_mask, capacity, repeats)
    return True


@contextlib.contextmanager
def shared_prefix_decoding(config, cache) -> Iterator[None]:
    """Run the model's attention through `shared_prefix_attention` over `cache` inside the block."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)
    previous = config._attn_implementation
    token = _ACTIVE.set(cache)
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = previous
        _ACTIVE.reset(token)
