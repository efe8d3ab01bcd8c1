"""Where reczero's GRPO step holds its memory, on the `benchmarks/grpo_step.py` workload.

    python benchmarks/memory.py --path ../shared/data/ml-100k [--precisions fp32,bf16] [--steps 2]

One process builds the bench's policy and data, then runs `--steps` GRPO steps by hand (the rollout,
then the shared-prefix forward, the loss and the backward, then AdamW), recording:
- resident memory (RSS) after each phase and its peak inside each phase (sampled every 2 ms);
- what the phases hold: the weights, the merged-LoRA copies used while sampling, the KV cache, the
  tensors autograd keeps for the backward pass (grouped by the operation that saved them; the
  frozen weights they point to are counted once, under weights), the gradients and AdamW's state.
Each precision runs in its own process (bf16 by default only where the CPU has native bf16).
Writes benchmarks/results/memory_<precision>.json and prints the phases.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import subprocess
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from grpo_step import LR, MAX_NEW, WORKLOADS, G, datamodule, stop_strings  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GIB = 2**30
# autograd nodes -> what their saved tensors are, in this model
SAVED_KINDS = {
    "MmBackward0": "linear-layer inputs (kept for the LoRA gradients)",
    "MulBackward0": "elementwise products (SiLU(gate) * up, RMSNorm, rotary)",
    "SiluBackward0": "MLP gate pre-activations",
    "ScaledDotProductFlashAttentionForCpuBackward0": "attention (queries, keys, values, outputs)",
    "ScaledDotProductEfficientAttentionBackward0": "attention (queries, keys, values, outputs)",
    "_LinearTokenLogprobsBackward": "LM head (one [H] gradient per token)",
}


def rss() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / GIB


class PeakSampler:
    """Highest RSS seen inside a `with` block (a thread samples /proc/self/statm every 2 ms)."""

    def __enter__(self):
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def saved_for_backward(root: torch.Tensor, skip: set[int]) -> dict[str, int]:
    """Bytes autograd keeps for the backward of `root`, by kind of operation; storages in `skip`
    (the parameters) and storages seen before are not counted."""
    by_kind: collections.Counter = collections.Counter()
    seen, stack, visited = set(skip), [root.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        kind = SAVED_KINDS.get(type(node).__name__, "other")
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except Exception:  # some saved fields cannot be read back once used
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor) and t.numel():
                    key = t.untyped_storage().data_ptr()
                    if key not in seen:
                        seen.add(key)
                        by_kind[kind] += t.untyped_storage().nbytes()
        if type(node).__name__ == "_LinearTokenLogprobsBackward":
            by_kind[SAVED_KINDS["_LinearTokenLogprobsBackward"]] += nbytes(node.saved_tensors)
        stack.extend(n for n, _ in node.next_functions)
    return dict(by_kind)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="../shared/data/ml-100k")
    ap.add_argument("--precisions", default=None, help="comma-separated; default fp32, plus bf16 where native")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="(internal) measure one")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    if args.precision is None:
        from reczero.policy.precision import cpu_bf16_flags

        for precision in (args.precisions or ("fp32,bf16" if cpu_bf16_flags() else "fp32")).split(","):
            print(f"--- {precision}", flush=True)
            cmd = [sys.executable, __file__, "--path", args.path, "--precision", precision, "--steps", str(args.steps)]
            subprocess.run(cmd, check=True)
        return

    from reczero import grpo, rewards
    from reczero.policy.factory import PolicyConfig, build_policy, load_tokenizer
    from reczero.policy.forward import shared_prefix_logprobs
    from reczero.rollout import record as rollout_module
    from reczero.rollout.record import RolloutConfig, build_rollout

    phases: list[dict] = []

    def record(name: str, peak: float, **held) -> None:
        phases.append({"phase": name, "rss_after_gib": rss(), "rss_peak_gib": peak, **held})
        print(
            f"{name:28s} RSS {rss():5.2f} GiB, peak {peak:5.2f}  " + ", ".join(f"{k} {v:.3f}" for k, v in held.items())
        )

    start = rss()
    record("imports", start)
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.precision]
    cfg = PolicyConfig(lora_r=16, lora_alpha=32, dtype=dtype)
    with PeakSampler() as peak:
        tok = load_tokenizer(cfg)
        dm = datamodule(args.path)
        dm.set_tokenizer(tok)
        dm.setup()
    record("data", peak.peak)
    with PeakSampler() as peak:
        model = build_policy(cfg)
    params = list(model.parameters())
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    record("model", peak.peak, weights_gib=nbytes(params) / GIB)
    spec = rewards.RewardSpec(format_shaping=WORKLOADS["shaped"])
    rollout = RolloutConfig(
        group_size=G, max_new_tokens=MAX_NEW, temperature=1.0, stop_strings=tuple(stop_strings(spec))
    )
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=LR)
    loader, gen = iter(dm.train_dataloader()), torch.Generator().manual_seed(0)
    held: dict[str, float] = {}

    original_generate = rollout_module.generate
    config = model.get_base_model().config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim  # keys + values
    element = torch.finfo(torch.float32 if dtype == "float32" else torch.bfloat16).bits // 8

    def measured_generate(model, tokenizer, input_ids, *a, **kw):  # inside merged_lora: the copies exist
        copies = [p.data for p in params if p.untyped_storage().data_ptr() not in param_storages]
        held["merged_copies_gib"] = nbytes(copies) / GIB
        # the prompt's keys and values once, plus an in-place buffer for every sampled row's tokens
        positions = input_ids.shape[0] * input_ids.shape[1] + input_ids.shape[0] * G * MAX_NEW
        held["kv_cache_gib"] = positions * per_position * element / GIB
        return original_generate(model, tokenizer, input_ids, *a, **kw)

    rollout_module.generate = measured_generate

    for step in range(args.steps):
        batch = next(loader)
        model.eval()
        held.clear()
        with PeakSampler() as peak:
            record_ = build_rollout(model, tok, batch, rollout, spec, dm.scale, gen, dm.prompt.response_prefix)
        record(f"step {step}: rollout", peak.peak, **held)
        model.train()
        with PeakSampler() as peak:
            logp = shared_prefix_logprobs(model, record_, slice(0, G), 1.0)
            loss, _ = grpo.grpo_loss(
                logp, record_.completion_mask, record_.advantages, max_completion_length=logp.shape[1]
            )
        saved = {f"saved: {k}": v / GIB for k, v in saved_for_backward(loss, param_storages).items()}
        record(f"step {step}: forward", peak.peak, **saved)
        with PeakSampler() as peak:
            loss.backward()
            del loss, logp
        grads = nbytes([p.grad for p in params if p.grad is not None]) / GIB
        record(f"step {step}: backward", peak.peak, gradients_gib=grads)
        with PeakSampler() as peak:
            opt.step()
            opt.zero_grad(set_to_none=True)
        state = nbytes([t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]) / GIB
        record(f"step {step}: optimizer", peak.peak, adamw_state_gib=state)
        print(
            f"  prompt {record_.prompt_width} tokens, {int(record_.completion_mask.sum())} generated "
            f"(longest {record_.completion_mask.shape[1]})"
        )
    out = {
        "precision": args.precision,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(),
        "phases": phases,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"memory_{args.precision}.json"
    target.write_text(json.dumps(out, indent=2))
    print(f"peak RSS {out['peak_rss_gib']:.2f} GiB; wrote {target}")


if __name__ == "__main__":
    main()
