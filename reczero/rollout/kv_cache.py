"""A KV cache layer that decodes in place: the rollout engine's answer to DynamicLayer's `torch.cat`.

transformers' `DynamicLayer.update` concatenates every new key/value onto the whole cache, so each
decode step copies all cached positions of every layer, and a rollout's G rows share one long prompt
(the measured gain is in the README and `benchmarks/rollout_engine.py`).
`PreallocatedLayer` keeps keys and values in a buffer with room for the whole rollout and writes each
step into its slot; `keys` / `values` are views of the filled prefix, so the model and its masks see
exactly what a DynamicLayer would hold.

For decoding under `torch.no_grad()` only: the in-place writes would corrupt tensors saved for a
backward pass.
"""

from __future__ import annotations

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
