"""Our rollout engine vs a plain `model.generate` on the same batch (issue: performance, second table).

    python benchmarks/rollout_engine.py [--prompts 2] [--group 8] [--max-new-tokens 128] [--repeats 3]

Same model (the bundled SmolLM2-135M-Instruct with a fresh LoRA, fp32 on the CPU), the same
prompts (synthetic data, the default config's prompt settings), G samples per prompt, temperature
1.0, no stop strings (both stop at EOS only), alternating runs. `model.generate` receives each prompt
repeated G times, as a trainer without prefix sharing does. "reczero" is the rollout path (LoRA
folded into the weights while sampling, `rollout.merge.merged_lora`); "reczero, LoRA unmerged" is the same
engine on the unmerged adapter, as `model.generate` runs it. Prints a table and writes
benchmarks/results/rollout_engine.json with medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from reczero.data.batching import PromptCollator
from reczero.data.datamodule import RatingDataModule
from reczero.data.render import PromptConfig
from reczero.data.samples import SampleConfig
from reczero.policy.factory import PolicyConfig, build_policy, load_tokenizer
from reczero.rollout.engine import SamplingConfig, generate
from reczero.rollout.merge import merged_lora

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = PolicyConfig()
    tok = load_tokenizer(cfg)
    model = build_policy(cfg).eval()
    dm = RatingDataModule(
        samples=SampleConfig(user_history=6, item_history=6, max_samples={"validation": 16}),
        prompt=PromptConfig(
            max_prompt_tokens=512, review_chars=80, response_prefix="<analyze user>", answer_example=True
        ),
    )
    dm.set_tokenizer(tok)
    dm.setup()
    ds = dm.dataset("validation")
    batch = PromptCollator(tok.pad_token_id, dm.scale)([ds[i] for i in range(args.prompts)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, stop_strings=())
    times: dict[str, list[float]] = {"reczero": [], "reczero, LoRA unmerged": [], "generate": []}
    tokens: dict[str, list[int]] = {name: [] for name in times}
    for rep in range(args.repeats):
        for name in ("reczero", "reczero, LoRA unmerged"):  # the rollout path, then without the merge
            gen = torch.Generator().manual_seed(rep)
            start = time.perf_counter()
            with merged_lora(model) if name == "reczero" else contextlib.nullcontext():
                out = generate(model, tok, ids, mask, args.group, sampling, gen)
            times[name].append(time.perf_counter() - start)
            tokens[name].append(int(out.lengths.sum()))
        torch.manual_seed(rep)
        start = time.perf_counter()
        with torch.no_grad():
            seqs = model.generate(
                input_ids=ids.repeat_interleave(args.group, 0),
                attention_mask=mask.repeat_interleave(args.group, 0),
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
        times["generate"].append(time.perf_counter() - start)
        new = seqs[:, ids.shape[1] :]
        ended = (new == tok.eos_token_id).int().cumsum(-1)
        tokens["generate"].append(int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum()))
    rows = {}
    for name in times:
        rows[name] = {
            "median_seconds": statistics.median(times[name]),
            "median_tokens": statistics.median(tokens[name]),
            "tokens_per_s": statistics.median(t / s for t, s in zip(tokens[name], times[name])),
            "seconds": times[name],
            "tokens": tokens[name],
        }
    ratio = rows["reczero"]["tokens_per_s"] / rows["generate"]["tokens_per_s"]
    result = {
        "prompts": args.prompts,
        "group": args.group,
        "prompt_width": ids.shape[1],
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "rows": rows,
        "speedup_tokens_per_s": ratio,
    }
    print(
        f"{args.prompts} prompts x {args.group} samples, prompt width {ids.shape[1]}, <= {args.max_new_tokens} new tokens, median of {args.repeats}"
    )
    print("| engine | seconds | generated tokens | tokens/s |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_seconds']:.1f} | {row['median_tokens']:.0f} | {row['tokens_per_s']:.1f} |")
    print(f"reczero / model.generate tokens/s: {ratio:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout_engine.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS / 'rollout_engine.json'}")


if __name__ == "__main__":
    main()
