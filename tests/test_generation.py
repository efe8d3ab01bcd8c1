"""The rollout engine's in-place KV cache: the same keys/values and the same samples as transformers'
concatenating cache."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from reczero.rollout.engine import SamplingConfig, generate
from reczero.rollout.kv_cache import PreallocatedLayer


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


def test_sample_categorical_follows_the_distribution_and_skips_zero_mass():
    from reczero.rollout.engine import sample_categorical

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_categorical(probs, gen) for _ in range(20000)])  # [20000, 2]
    freq = torch.bincount(draws[:, 0], minlength=4).float() / len(draws)
    assert torch.allclose(freq, probs[0], atol=0.015) and freq[1] == 0
    assert bool((draws[:, 1] == 3).all())


def test_merged_lora_computes_the_same_function_and_restores_the_exact_weights(tiny_tokenizer, tiny_policy):
    from tiny import perturb_lora

    from reczero.rollout.merge import merged_lora

    perturb_lora(tiny_policy)  # a fresh LoRA's B is zero: make the adapter change the function
    model = tiny_policy.eval()
    ids = tiny_tokenizer(["rate this film"], return_tensors="pt").input_ids
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        with merged_lora(model) as merged:
            got = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert merged and not torch.allclose(want, base, atol=1e-4)  # the adapter matters here
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, want)  # adapter back on, weights restored bit for bit
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_merged_lora_modes(tiny_policy):
    from reczero.rollout.merge import merged_lora
    from reczero.rollout.record import RolloutConfig

    with torch.no_grad():
        with merged_lora(tiny_policy, "never") as never, merged_lora(tiny_policy, "always") as always:
            assert not never and always
        with merged_lora(tiny_policy) as auto:  # "auto": merged on the CPU only
            assert auto
    with pytest.raises(ValueError, match="merge_lora must be one of"):
        RolloutConfig(merge_lora="sometimes")


def test_merged_lora_is_left_alone_when_a_weight_is_not_the_full_matrix(tiny_policy):
    from peft.tuners.lora import LoraLayer

    from reczero.rollout.merge import merged_lora

    layers = [m for m in tiny_policy.modules() if isinstance(m, LoraLayer)]
    first, last = layers[0].get_base_layer(), layers[-1].get_base_layer()
    full = last.weight
    last.weight = torch.nn.Parameter(full.detach().flatten()[:10], requires_grad=False)  # like an FSDP shard
    keep = first.weight.detach().clone()
    with torch.no_grad(), merged_lora(tiny_policy) as merged:
        assert not merged and torch.equal(first.weight, keep)  # the partial merge was undone
    last.weight = full
