"""What the fixed numerics rules rest on: fp32 against bf16, and the two sampling-weight layouts, timed.

    nice -n 10 python benchmarks/dtype_rule.py [--threads N] [--rounds 9] [--out FILE]

`dtype: auto` on the CPU (`reczero.policy.precision`) and the layout of the merged sampling weights
(`reczero.rollout.merge`) are fixed rules over the hardware; nothing in `reczero/` times anything to
choose them. This script measures, on this machine and at the run's thread count, what those rules
trade:

- a decode step's matmuls: 8 rows against every linear weight of the bundled SmolLM2-135M (30 layers
  and the 49,152 x 576 LM head, random values: more than a last-level cache holds, so the weights
  stream from memory as they do while sampling), in fp32 and bf16, each in the usual [out, in]
  layout and stored transposed ([in, out] contiguous, used through its `.t()` view);
- a training GEMM: the bundled model's MLP up-projection over 1,024 tokens, forward and input-gradient
  product, in fp32 and bf16.

Each measurement alternates its variants round by round (the order flips every round, the first round
only warms up) and keeps the median and the fastest round: other jobs on a shared machine only ever add
time. Prints a table and writes `benchmarks/results/dtype_rule/<cpu kind>.json`, where the kind
(amx, avx512_bf16, avx2, other) comes from `/proc/cpuinfo` as the rule reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from reczero.policy import precision

RESULTS = Path(__file__).parent / "results" / "dtype_rule"
HIDDEN, INTERMEDIATE, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152  # SmolLM2-135M
LAYER_SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN)]  # q, k, v, o: [out, in]
LAYER_SHAPES += [(INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]  # gate, up, down
DECODE_ROWS, TRAIN_TOKENS = 8, 1024


def timed(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, float]]:
    """Seconds per call of each run: median and fastest over `rounds - 1` alternating rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for round_ in range(rounds):
            for name in sorted(runs, reverse=bool(round_ % 2)):
                start = time.perf_counter()
                runs[name]()
                if round_:
                    seconds[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(s), "best_s": min(s)} for name, s in seconds.items()}


def decode_weights(dtype: torch.dtype) -> dict[str, list[torch.Tensor]]:
    """The bundled model's linear weights [out, in], random, in `dtype`: the layers' and the LM head."""
    gen = torch.Generator().manual_seed(0)
    layers = [torch.randn(shape, generator=gen).to(dtype) for _ in range(LAYERS) for shape in LAYER_SHAPES]
    return {"layers": layers, "head": [torch.randn(VOCAB, HIDDEN, generator=gen).to(dtype)]}


def decode_runs(rounds: int) -> dict[str, dict[str, float]]:
    """One decode step's matmuls per (dtype, layout, weight group)."""
    runs = {}
    keep = []  # the weights stay alive for the whole measurement
    for dtype in (torch.float32, torch.bfloat16):
        for group, weights in decode_weights(dtype).items():
            transposed = [w.t().contiguous().t() for w in weights]
            keep += [weights, transposed]
            for layout, ws in (("usual", weights), ("transposed", transposed)):
                xs = [torch.randn(DECODE_ROWS, w.shape[1]).to(dtype) for w in ws]
                name = f"{_short(dtype)}/{layout}/{group}"
                runs[name] = lambda ws=ws, xs=xs: [torch.nn.functional.linear(x, w) for x, w in zip(xs, ws)]
    return timed(runs, rounds)


def train_runs(rounds: int) -> dict[str, dict[str, float]]:
    """The MLP up-projection's forward and input-gradient GEMMs over `TRAIN_TOKENS` tokens, per dtype."""
    runs = {}
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(INTERMEDIATE, HIDDEN, generator=gen).to(dtype)  # [out, in]
        x = torch.randn(TRAIN_TOKENS, HIDDEN, generator=gen).to(dtype)  # [T, in]
        g = torch.randn(TRAIN_TOKENS, INTERMEDIATE, generator=gen).to(dtype)  # [T, out]
        runs[_short(dtype)] = lambda w=w, x=x, g=g: (torch.nn.functional.linear(x, w), g @ w)
    return timed(runs, rounds)


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(decode: dict, train: dict) -> dict[str, float]:
    """The ratios the rules rest on (> 1: the second-named variant is faster), from the fastest rounds."""

    def best(name: str) -> float:
        return decode[name]["best_s"]

    out = {}
    for dtype in ("fp32", "bf16"):
        out[f"{dtype}_decode_step_ms"] = 1e3 * (best(f"{dtype}/usual/layers") + best(f"{dtype}/usual/head"))
        out[f"{dtype}_train_gemm_ms"] = 1e3 * train[dtype]["best_s"]
        for group in ("layers", "head"):
            usual, transposed = best(f"{dtype}/usual/{group}"), best(f"{dtype}/transposed/{group}")
            out[f"{dtype}_{group}_transposed_speedup"] = usual / transposed
    out["bf16_decode_speedup"] = out["fp32_decode_step_ms"] / out["bf16_decode_step_ms"]
    out["bf16_train_speedup"] = out["fp32_train_gemm_ms"] / out["bf16_train_gemm_ms"]
    return out


def table(summary: dict[str, float]) -> str:
    lines = [
        "| | fp32 | bf16 | bf16 speed / fp32's |",
        "|---|---:|---:|---:|",
        f"| decode step (8 rows, all weights), ms | {summary['fp32_decode_step_ms']:.1f} | "
        f"{summary['bf16_decode_step_ms']:.1f} | {summary['bf16_decode_speedup']:.2f}x |",
        f"| training GEMM (1,024 tokens, fwd + input grad), ms | {summary['fp32_train_gemm_ms']:.2f} | "
        f"{summary['bf16_train_gemm_ms']:.2f} | {summary['bf16_train_speedup']:.2f}x |",
        "",
        "| transposed layout's speed / the usual's | fp32 | bf16 |",
        "|---|---:|---:|",
    ]
    for group in ("layers", "head"):
        lines.append(
            f"| decode, {group} | {summary[f'fp32_{group}_transposed_speedup']:.2f}x | "
            f"{summary[f'bf16_{group}_transposed_speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per measurement, 1 warm-up")
    parser.add_argument("--out", type=Path, default=None, help="default: results/dtype_rule/<cpu kind>.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = precision.cpu_flags()
    kind = precision.cpu_kind(flags)
    load_before = os.getloadavg()
    started = time.perf_counter()
    decode, train = decode_runs(args.rounds), train_runs(args.rounds)
    summary = summarise(decode, train)
    rule = precision.cpu_rule(flags)
    result = {
        "cpu": cpu_model(),
        "cpu_kind": kind,
        "bf16_flags": [f for f in precision.NATIVE_BF16_FLAGS if f in flags],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "seconds": time.perf_counter() - started,
        "rule": {"dtype": str(rule.dtype).removeprefix("torch."), "reason": rule.reason},
        "summary": summary,
        "decode": decode,
        "train": train,
    }
    out = args.out or RESULTS / f"{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']} ({kind}), {result['threads']} threads, load {load_before[0]:.2f}")
    print(table(summary))
    print(f"rule: dtype auto -> {result['rule']['dtype']} ({rule.reason})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
