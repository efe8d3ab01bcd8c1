"""Which dtype `dtype: auto` means on this machine: a fixed rule over the hardware, never a timing.

- CUDA: bfloat16 where the GPU supports it, else float16.
- CPU, from the flags in `/proc/cpuinfo`:
  - `amx_bf16` (AMX tiles): bfloat16. AMX runs bf16 matmuls natively, well ahead of fp32.
  - `avx512_bf16` without AMX: float32. bf16 is native there, but measured against fp32 it was not a
    stable win (it varied with the matmul's shape and with what else loaded the machine), and bf16
    costs log-prob accuracy (`benchmarks/results/precision_drift.json`).
  - neither (AVX2 and older, and CPUs without `/proc/cpuinfo`): float32. bf16 would be emulated.
- `RECZERO_CPU_DTYPE=float32|bfloat16` overrides the CPU rule (the tests pin float32 with it).

The figures behind the rule: `benchmarks/results/dtype_rule/` (`benchmarks/dtype_rule.py`). One log
line says what `auto` resolved to and by which rule. The LightningModules resolve it once, on rank 0,
hand rank 0's choice to every rank, and record it in the hyper-parameters and checkpoints so that a
resume computes in the same dtype (`reczero.modules.base`). Under bf16 the frozen base weights are
bf16; the LoRA weights, their optimizer state and the log-softmax stay float32.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 matmul instructions
PIN_VARIABLE = "RECZERO_CPU_DTYPE"
_CACHE_INFO = Path("/sys/devices/system/cpu/cpu0/cache")


@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype `auto` resolved to, and the rule (or override) that chose it."""

    dtype: torch.dtype
    reason: str
    flags: tuple[str, ...] = ()  # the native-bf16 flags the CPU reports


def cpu_flags(cpuinfo: str | Path | None = None) -> frozenset[str]:
    """Every flag of the `flags` lines of /proc/cpuinfo (Linux); empty where there is none."""
    try:
        text = Path(cpuinfo or CPUINFO).read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)


def cpu_bf16_flags(cpuinfo: str | Path | None = None) -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports, in `NATIVE_BF16_FLAGS` order."""
    flags = cpu_flags(cpuinfo)
    return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)


def cpu_kind(flags: Iterable[str]) -> str:
    """amx | avx512_bf16 | avx2 | other: the kinds of CPU whose bf16 behaves differently."""
    flags = set(flags)
    for kind, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "other"


def cpu_rule(flags: Iterable[str]) -> PrecisionChoice:
    """bf16 on AMX, fp32 everywhere else (the module docstring says why)."""
    flags = frozenset(flags)
    native = tuple(f for f in NATIVE_BF16_FLAGS if f in flags)
    kind = cpu_kind(flags)
    if kind == "amx":
        return PrecisionChoice(torch.bfloat16, "rule: amx_bf16 in /proc/cpuinfo, AMX runs bf16 matmuls", native)
    if kind == "avx512_bf16":
        reason = "rule: avx512_bf16 without AMX, bf16 is no stable win over fp32 there and costs accuracy"
        return PrecisionChoice(torch.float32, reason, native)
    return PrecisionChoice(torch.float32, "rule: no amx_bf16 or avx512_bf16 in /proc/cpuinfo, bf16 would be emulated")


def cpu_choice(cpuinfo: str | Path | None = None) -> PrecisionChoice:
    """`RECZERO_CPU_DTYPE` where set, else `cpu_rule` over this CPU's flags."""
    flags = cpu_flags(cpuinfo)
    pinned = os.environ.get(PIN_VARIABLE)
    if pinned:
        if pinned not in ("float32", "bfloat16"):
            raise ValueError(f"{PIN_VARIABLE}={pinned!r}: expected float32 or bfloat16")
        native = tuple(f for f in NATIVE_BF16_FLAGS if f in flags)
        return PrecisionChoice(getattr(torch, pinned), f"pinned by {PIN_VARIABLE}={pinned}", native)
    return cpu_rule(flags)


_LOGGED: set[PrecisionChoice] = set()


def auto_choice() -> PrecisionChoice:
    """What `dtype: auto` means on this machine (CUDA first, else the CPU's rule); logged once per choice."""
    if torch.cuda.is_available():
        supported = torch.cuda.is_bf16_supported()
        reason = f"rule: the GPU {'supports' if supported else 'does not support'} bf16"
        choice = PrecisionChoice(torch.bfloat16 if supported else torch.float16, reason)
    else:
        choice = cpu_choice()
    if choice not in _LOGGED:
        _LOGGED.add(choice)
        log.info("dtype auto -> %s (%s)", dtype_name(choice.dtype), choice.reason)
    return choice


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16": the form configs and checkpoints hold."""
    return str(dtype).removeprefix("torch.")


def check_runnable(name: str) -> str | None:
    """Whether this machine can compute in the recorded dtype `name`: None where it runs as usual, a
    warning where it runs but slowly (bf16 without AMX, fp16 on a CPU); ValueError where it cannot
    (bf16 on a GPU without bf16)."""
    if torch.cuda.is_available():
        if name == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bfloat16")
        return None
    if name == "bfloat16" and cpu_kind(cpu_flags()) != "amx":
        return "this CPU has no AMX: bfloat16 runs, slower than float32"
    if name == "float16":
        return "float16 on the CPU runs, slower than float32"
    return None


def last_level_cache_bytes(cache_info: str | Path = _CACHE_INFO) -> int:
    """Size of the CPU's largest cache (Linux sysfs), for benchmark records; 0 where it cannot be read."""
    sizes = []
    for size in Path(cache_info).glob("index*/size"):
        text = size.read_text().strip().upper()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        try:
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except ValueError:
            continue
    return max(sizes, default=0)
