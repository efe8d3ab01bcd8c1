"""What bf16 costs in accuracy: token log-probs of the same completions in bf16 against fp32.

    python benchmarks/precision_drift.py --path ../shared/data/ml-100k [--prompts 4] [--adapter DIR]

Completions are sampled once, in fp32, on the `benchmarks/grpo_step.py` workload (G=8 per prompt,
<= 128 new tokens). Their token log-probs are then computed four ways: the fp32 training forward
(the reference), the bf16 training forward (bf16 base weights, float32 LoRA, what a bf16 GRPO step
differentiates), and the full model's forward inside `merged_lora` in each precision (the weights the
rollout samples from, LoRA folded in, so the bf16 one also rounds W + delta to bf16). `--adapter`
loads a trained LoRA; without it the fresh LoRA's B gets seeded noise so that the adapter matters.
Reports, per variant against the reference, the mean and largest |delta log-prob| per token, the
share of tokens beyond 0.01 / 0.1, the mean delta (a KL(fp32 || variant) estimate, since the tokens
were drawn from fp32), and the share of importance ratios exp(delta) outside GRPO's clip [0.8, 1.2].
Writes benchmarks/results/precision_drift.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from grpo_step import MAX_NEW, WORKLOADS, G, datamodule, stop_strings  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def policy(dtype: str, adapter: str | None):
    from reczero.policy.factory import PolicyConfig, build_policy

    torch.manual_seed(0)  # the same fresh LoRA A in both precisions
    model = build_policy(PolicyConfig(lora_r=16, lora_alpha=32, dtype=dtype, adapter_path=adapter))
    if adapter is None:  # a fresh LoRA computes the base model: give B seeded noise, the same in both
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 1e-3)
    return model


def teacher_forced(model, record) -> torch.Tensor:
    """[N, C] log-probs of the record's completions from the model's own full forward (no training path)."""
    from reczero.policy.logprobs import token_logprobs

    ids, mask = record.input_ids, record.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    width = record.completion_mask.shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=width + 1).logits
        return token_logprobs(logits[:, :-1], ids[:, -width:]) * record.completion_mask


def compare(reference: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> dict:
    delta = (other - reference)[mask].double()  # [tokens]
    ratio = delta.exp()
    return {
        "tokens": int(mask.sum()),
        "mean_abs_delta": float(delta.abs().mean()),
        "max_abs_delta": float(delta.abs().max()),
        "share_abs_delta_over_0.01": float((delta.abs() > 0.01).double().mean()),
        "share_abs_delta_over_0.1": float((delta.abs() > 0.1).double().mean()),
        "kl_estimate": float(-delta.mean()),
        "share_ratio_outside_clip": float(((ratio < 0.8) | (ratio > 1.2)).double().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="../shared/data/ml-100k")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--adapter", default=None, help="a trained LoRA adapter folder (peft format)")
    args = ap.parse_args()

    from reczero import rewards
    from reczero.policy.factory import PolicyConfig, load_tokenizer
    from reczero.policy.forward import shared_prefix_logprobs
    from reczero.rollout.merge import merged_lora
    from reczero.rollout.record import RolloutConfig, build_rollout

    tok = load_tokenizer(PolicyConfig())
    dm = datamodule(args.path)
    dm.set_tokenizer(tok)
    dm.setup()
    fp32, bf16 = policy("float32", args.adapter), policy("bfloat16", args.adapter)
    spec = rewards.RewardSpec(format_shaping=WORKLOADS["shaped"])
    sampling = RolloutConfig(
        group_size=G, max_new_tokens=MAX_NEW, temperature=1.0, stop_strings=tuple(stop_strings(spec))
    )
    loader, gen = iter(dm.train_dataloader()), torch.Generator().manual_seed(0)
    totals: dict[str, list[dict]] = {}
    for _ in range(args.prompts):
        record = build_rollout(
            fp32.eval(), tok, next(loader), sampling, spec, dm.scale, gen, dm.prompt.response_prefix
        )
        mask = record.completion_mask
        with torch.no_grad():
            reference = shared_prefix_logprobs(fp32.train(), record, slice(0, G), 1.0)
            variants = {"bf16 training forward": shared_prefix_logprobs(bf16.train(), record, slice(0, G), 1.0)}
            for name, model in (("fp32 sampling weights (merged)", fp32), ("bf16 sampling weights (merged)", bf16)):
                with merged_lora(model.eval()):
                    variants[name] = teacher_forced(model, record)
        for name, logp in variants.items():
            totals.setdefault(name, []).append(compare(reference, logp, mask))
    out = {"prompts": args.prompts, "group": G, "adapter": args.adapter, "variants": {}}
    for name, rows in totals.items():
        weight = [r["tokens"] for r in rows]
        merged = {k: sum(r[k] * w for r, w in zip(rows, weight)) / sum(weight) for k in rows[0] if k != "tokens"}
        merged["max_abs_delta"] = max(r["max_abs_delta"] for r in rows)
        merged["tokens"] = sum(weight)
        out["variants"][name] = merged
        print(f"{name:32s} " + ", ".join(f"{k} {v:.4g}" for k, v in merged.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "precision_drift.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'precision_drift.json'}")


if __name__ == "__main__":
    main()
