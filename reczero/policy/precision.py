"""Which dtype `dtype: auto` means on this machine: bf16 only where it is native AND measured faster.

On CUDA, `auto` is bf16 where the GPU supports it (else fp16). On the CPU it depends on the chip:
without AVX512-BF16 or AMX, bf16 matmuls are emulated and many times slower than fp32; with AMX they
are usually much faster; with AVX512-BF16 alone it varies with the kind of matmul and the thread
count. So `cpu_choice()` reads the CPU flags and, where bf16 is native, times the two kinds of matmul
a GRPO step is made of, in both dtypes, at the threads the run uses: a decode step's (8 rows against
weights streamed from memory, more than the last-level cache holds) and a training GEMM's. bf16 is
chosen only if it wins both by `MARGIN` (it costs accuracy, and a shared machine's timings are noisy:
repeated probes here spread by tens of percent); the choice is made once per process and logged with
its reasons.
`RECZERO_CPU_DTYPE=float32|bfloat16` pins it instead (the tests do; so should a run that must resume
bit for bit on a machine where the probe could land either way). Under bf16 the frozen base weights
are stored in bf16; the LoRA weights, their optimizer state and the log-softmax stay float32 (peft
keeps adapters in float32 by default)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 matmul instructions
PIN_VARIABLE = "RECZERO_CPU_DTYPE"
MARGIN = 1.25  # bf16 must run both probes this many times faster than fp32
_PROBE_BYTES = (64 * 2**20, 512 * 2**20)  # float32 weights a decode probe streams: at least, at most
_CACHE_INFO = Path("/sys/devices/system/cpu/cpu0/cache")


@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype `auto` resolved to on the CPU, and why."""

    dtype: torch.dtype
    reason: str
    flags: tuple[str, ...] = ()
    decode_speedup: float | None = None  # fp32 time / bf16 time of the decode probe
    train_speedup: float | None = None  # same, for the training GEMM probe


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports (Linux); () where there is no /proc/cpuinfo."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)


def _alternating_speedup(runs: dict[str, callable], rounds: int = 9) -> float:
    """float32 seconds / bfloat16 seconds, each dtype's fastest round (other jobs on the machine only
    ever add time); the order alternates each round and the first round only warms up."""
    best = {name: float("inf") for name in runs}
    for round_ in range(rounds):
        for name in sorted(runs, reverse=bool(round_ % 2)):
            start = time.perf_counter()
            runs[name]()
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best["float32"] / best["bfloat16"]


def last_level_cache_bytes(cache_info: str | Path = _CACHE_INFO) -> int:
    """Size of the CPU's largest cache (Linux sysfs); 0 where it cannot be read."""
    sizes = []
    for size in Path(cache_info).glob("index*/size"):
        text = size.read_text().strip().upper()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        try:
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except ValueError:
            continue
    return max(sizes, default=0)


def probe_bf16_speedups() -> tuple[float, float]:
    """(decode, train) speed of bf16 relative to fp32 matmuls on this CPU, at the current threads.

    The decode probe streams more float32 weights than the last-level cache holds (as a model's
    weights are streamed at every decode step), within `_PROBE_BYTES`."""
    low, high = _PROBE_BYTES
    nbytes = min(high, max(low, 3 * last_level_cache_bytes() // 2))
    gen = torch.Generator().manual_seed(0)
    weights32 = [torch.full((1024, 1024), 0.5) for _ in range(nbytes // (1024 * 1024 * 4))]
    x32 = torch.randn(8, 1024, generator=gen)
    a32, b32 = torch.randn(256, 1024, generator=gen), torch.randn(1024, 1024, generator=gen)
    weights16 = [w.bfloat16() for w in weights32]
    x16, a16, b16 = x32.bfloat16(), a32.bfloat16(), b32.bfloat16()

    def decode(x, weights):
        return lambda: [torch.nn.functional.linear(x, w) for w in weights]

    def train(a, b):
        return lambda: a @ b

    with torch.no_grad():
        dec = _alternating_speedup({"float32": decode(x32, weights32), "bfloat16": decode(x16, weights16)})
        tr = _alternating_speedup({"float32": train(a32, b32), "bfloat16": train(a16, b16)})
    return dec, tr


_CHOICE: PrecisionChoice | None = None


def cpu_choice() -> PrecisionChoice:
    """bf16 where the CPU has native bf16 and it beats fp32 by `MARGIN` in both probes; fp32 otherwise.
    Decided once per process (the first `dtype: auto` on the CPU) and logged."""
    global _CHOICE
    if _CHOICE is not None:
        return _CHOICE
    flags = cpu_bf16_flags()
    pinned = os.environ.get(PIN_VARIABLE)
    if pinned:
        if pinned not in ("float32", "bfloat16"):
            raise ValueError(f"{PIN_VARIABLE}={pinned!r}: expected float32 or bfloat16")
        choice = PrecisionChoice(getattr(torch, pinned), f"pinned by {PIN_VARIABLE}={pinned}", flags)
    elif not flags:
        choice = PrecisionChoice(torch.float32, "no AMX or AVX512-BF16 in /proc/cpuinfo: bf16 would be emulated")
    else:
        dec, tr = probe_bf16_speedups()
        faster = dec >= MARGIN and tr >= MARGIN
        verdict = "bf16 wins both" if faster else f"bf16 does not win both by {MARGIN - 1:.0%}"
        reason = (
            f"{', '.join(flags)} present; bf16 runs decode matmuls at {dec:.2f}x and training GEMMs at "
            f"{tr:.2f}x fp32's speed ({torch.get_num_threads()} threads): {verdict}"
        )
        choice = PrecisionChoice(torch.bfloat16 if faster else torch.float32, reason, flags, dec, tr)
    log.info("dtype auto on the CPU -> %s: %s", str(choice.dtype).removeprefix("torch."), choice.reason)
    _CHOICE = choice
    return choice
