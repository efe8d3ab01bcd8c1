"""The rollout engine's in-place KV cache: the same keys/values and the same samples as transformers'
concatenating cache."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from reczero.generation import SamplingConfig, generate
from reczero.kv_cache import PreallocatedLayer


def test_preallocated_layer_holds_what_a_dynamic_layer_holds():
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 3, 5, 4, generator=gen), torch.randn(2, 3, 5, 4, generator=gen)
    ref = DynamicLayer()
    ref.update(k.repeat_interleave(2, 0), v.repeat_interleave(2, 0))
    ours = PreallocatedLayer(k, v, capacity=7, repeats=2)  # 2 prompts x 2 samples, room for 2 more
    for step in range(4):  # the 3rd write overflows the capacity and must grow the buffer
        nk, nv = torch.randn(4, 3, 1, 4, generator=gen), torch.randn(4, 3, 1, 4, generator=gen)
        got, want = ours.update(nk, nv), ref.update(nk, nv)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert ours.get_seq_length() == ref.get_seq_length() == 6 + step
    keep = torch.tensor([0, 3])
    ours.batch_select_indices(keep)
    ref.batch_select_indices(keep)
    assert torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)
    ours.crop(-2)
    ref.crop(-2)
    assert torch.equal(ours.keys, ref.keys) and ours.get_seq_length() == 7


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("stop", [(), ("a", "e", "o")])  # vowels end rows early: finished rows leave the cache
def test_inplace_cache_samples_what_the_concatenating_cache_samples(tiny_tokenizer, tiny_policy, temperature, stop):
    prompts = ["<|im_start|>user\nRate the film<|im_end|>\n", "<|im_start|>user\nHi<|im_end|>\n"]
    enc = tiny_tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)  # left-padded
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=12, stop_strings=stop)
    model = tiny_policy.eval()
    outs = [
        generate(
            model,
            tiny_tokenizer,
            enc.input_ids,
            enc.attention_mask,
            3,
            sampling,
            torch.Generator().manual_seed(1),
            flag,
        )
        for flag in (True, False)
    ]
    assert torch.equal(outs[0].tokens, outs[1].tokens) and torch.equal(outs[0].lengths, outs[1].lengths)
    assert outs[0].texts == outs[1].texts
    if stop and temperature:
        assert len(set(outs[0].lengths.tolist())) > 1  # rows did end at different steps
