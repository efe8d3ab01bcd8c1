"""The rollout engine's decoding shortcuts give the same samples: one copy of each prompt's KV cache
(`kv_cache.SharedPrefixLayer`) and merged LoRA weights (`merge.merged_lora`), whose layout is fixed."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_llama, perturb_lora
from transformers.cache_utils import DynamicLayer

from reczero.policy.factory import PolicyConfig, build_policy
from reczero.rollout import merge
from reczero.rollout.engine import SamplingConfig, generate
from reczero.rollout.kv_cache import SharedPrefixLayer, share_prefix

PROMPTS = ["a short prompt", "a somewhat longer prompt about films and more"]  # left-padded together


def _policy(tokenizer, dtype: torch.dtype, attention: str):
    base = make_tiny_llama(tokenizer).to(dtype)
    base.config._attn_implementation = attention
    policy = build_policy(PolicyConfig(lora_r=4, lora_alpha=8), base_model=base)
    return perturb_lora(policy, scale=0.05).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefix_decoding_samples_what_the_repeated_cache_samples(tiny_tokenizer, dtype, attention, temperature):
    policy = _policy(tiny_tokenizer, dtype, attention)
    enc = tiny_tokenizer(PROMPTS, padding=True, return_tensors="pt")
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=20, stop_strings=("</rate>",))
    runs = [
        generate(policy, tiny_tokenizer, enc.input_ids, enc.attention_mask, 4, sampling, torch.Generator().manual_seed(3), shared_prefix=shared)
        for shared in (True, False)
    ]  # fmt: skip
    assert torch.equal(runs[0].tokens, runs[1].tokens) and runs[0].texts == runs[1].texts
    if temperature:
        assert runs[0].lengths.min() < runs[0].lengths.max(), "some rows should end early and leave the batch"


def test_shared_prefix_attention_equals_attention_over_the_repeated_keys():
    """Two prompts (one left-padded), 3 rows each, one row of each dropped: every remaining row
    attends to its own prompt's real keys and its own sampled keys, as sdpa over the full keys does."""
    gen = torch.Generator().manual_seed(0)
    heads, q_heads, dim, width, steps = 2, 4, 8, 5, 3
    keys, values = (torch.randn(2, heads, width, dim, generator=gen) for _ in range(2))  # [k, H, P, D]
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    layer = SharedPrefixLayer(keys, values, prompt_mask, capacity=2, repeats=3)
    own_k, own_v = [], []
    for _ in range(steps):  # capacity 2 < 3 steps: the buffer grows once
        k, v = (torch.randn(6, heads, 1, dim, generator=gen) for _ in range(2))
        layer.update(k, v)
        own_k.append(k)
        own_v.append(v)
    keep = torch.tensor([0, 2, 3, 4])  # rows 1 (prompt 0) and 5 (prompt 1) finished
    layer.batch_select_indices(keep)
    assert layer.spans == [(0, 0, 2), (1, 2, 4)] and layer.get_seq_length() == width + steps
    query = torch.randn(4, q_heads, 1, dim, generator=gen)
    got = layer.attend(query, layer.keys, layer.values, scaling=0.3)  # [A, 1, Hq, D]
    prompt_of = torch.tensor([0, 0, 1, 1])
    full_k = torch.cat([keys[prompt_of], torch.cat(own_k, 2)[keep]], 2)
    full_v = torch.cat([values[prompt_of], torch.cat(own_v, 2)[keep]], 2)
    allowed = torch.cat([prompt_mask[prompt_of].bool(), torch.ones(4, steps, dtype=torch.bool)], 1)  # [A, P + t]
    expected = torch.nn.functional.scaled_dot_product_attention(
        query,
        full_k.repeat_interleave(q_heads // heads, dim=1),
        full_v.repeat_interleave(q_heads // heads, dim=1),
        attn_mask=allowed[:, None, None, :],
        scale=0.3,
    )  # [A, Hq, 1, D]
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_share_prefix_leaves_other_cache_layers_alone():
    class Cache:
        layers = [DynamicLayer()]  # never filled: not a prefilled plain layer

    cache = Cache()
    assert not share_prefix(cache, torch.ones(1, 3), capacity=4, repeats=2)
    assert type(cache.layers[0]) is DynamicLayer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_merged_weights_compute_the_adapter_in_a_fixed_layout_and_put_the_originals_back(tiny_tokenizer, dtype):
    policy = _policy(tiny_tokenizer, dtype, "sdpa")
    ids = tiny_tokenizer(["rate this film"], return_tensors="pt").input_ids
    tensors = {n: p.data for n, p in policy.named_parameters()}
    values = {n: p.detach().clone() for n, p in policy.named_parameters()}
    head = policy.get_base_model().lm_head.weight.data_ptr()
    with torch.no_grad():
        want = policy(input_ids=ids).logits.float()
        with merge.merged_lora(policy) as merged:
            got = policy(input_ids=ids).logits.float()
            weights = [p for n, p in policy.named_parameters() if "base_layer" in n]
            assert weights and all(w.is_contiguous() and w.dtype == dtype for w in weights), "[out, in], W's dtype"
            assert policy.get_base_model().lm_head.weight.data_ptr() == head, "the LM head has no LoRA: no copy"
    assert merged
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    for name, param in policy.named_parameters():
        assert param.data is tensors[name] or param.data.data_ptr() == tensors[name].data_ptr(), name
        assert torch.equal(param, values[name]), name
