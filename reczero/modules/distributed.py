"""What the GRPO step and the checkpoints need from the other ranks; on one process every helper is a no-op.

- `all_sum`: a few numbers summed (or maximised) over the ranks in one all-reduce: the loss
  denominators, the rows kept, the non-finite flags (every rank then decides alike), the step's logs.
- `manual_gradient_sync` / `local_accumulation` / `sync_gradients`: under DDP the micro-batches'
  backward passes leave their gradients local and one all-reduce averages them at the end of the
  step. A rank that skipped some or all of its rows then still takes part, with zeros: DDP's own
  per-backward all-reduce would need every rank to run the same number of backward passes.
  Other multi-process strategies (FSDP, DeepSpeed) sync inside every backward; the step then runs
  every row on every rank, so the counts match.
- `gather_per_rank` / `own_entry`: one entry per rank in a checkpoint (only rank 0 writes it), and
  each rank's own entry back on resume.
- `from_rank_zero`: one decision (the policy's dtype) made on rank 0 and taken by every rank.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def _world(trainer) -> int:
    return getattr(trainer, "world_size", 1) if trainer is not None else 1


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_sum(trainer, values: list[float], device: torch.device | str = "cpu", op: str = "sum") -> list[float]:
    """`values` summed (`op="max"`: maximised) over the ranks in one all-reduce; as given on one process.
    NaN and inf propagate."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)  # [k]
    if _world(trainer) > 1:
        tensor = trainer.strategy.reduce(tensor, reduce_op=op)
    return tensor.tolist()


def manual_gradient_sync(trainer) -> bool:
    """True under DDP (several processes): the step accumulates locally and averages once (`sync_gradients`)."""
    from torch.nn.parallel import DistributedDataParallel

    return _world(trainer) > 1 and isinstance(getattr(trainer.strategy, "model", None), DistributedDataParallel)


@contextlib.contextmanager
def local_accumulation(trainer) -> Iterator[None]:
    """Backward passes inside leave their gradients on this rank (DDP's `no_sync`); elsewhere a no-op."""
    if manual_gradient_sync(trainer):
        with trainer.strategy.block_backward_sync():
            yield
    else:
        yield


def sync_gradients(trainer, params: list[torch.nn.Parameter]) -> None:
    """Give every parameter a gradient (0 where none was computed: a rank or a step with every row
    skipped, exactly what running those rows would have added), then, under DDP, average them over
    the ranks in one all-reduce per dtype."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not manual_gradient_sync(trainer):
        return
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])  # [sum of numel]
        torch.distributed.all_reduce(flat)
        flat /= trainer.world_size
        offset = 0
        for p in group:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()


def from_rank_zero(decide: Callable[[], T]) -> T:
    """`decide()` run on rank 0 only, its result (picklable) broadcast to every rank; run here where no
    process group is initialised. Call it on every rank: Lightning initialises the group before `setup`
    and `configure_model`."""
    if not _distributed() or torch.distributed.get_world_size() <= 1:
        return decide()
    box = [decide() if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_per_rank(trainer, obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] on one process. Call it on every rank.

    `obj` holds tensors, numbers, strings and lists / tuples / dicts of them; tensors travel as lists
    (pickling a tensor inside `all_gather_object` fails in torch 2.13) and come back as tensors.
    """
    if _world(trainer) <= 1 or not _distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, _plain(obj))
    return [_tensors(entry) for entry in out]


def _plain(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return {_TENSOR: obj.cpu().tolist(), "dtype": str(obj.dtype).removeprefix("torch.")}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _tensors(obj: Any) -> Any:
    if isinstance(obj, dict) and _TENSOR in obj:
        return torch.tensor(obj[_TENSOR], dtype=getattr(torch, obj["dtype"]))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    return obj


_TENSOR = "__tensor__"


def own_entry(entries: list[Any], trainer, what: str) -> Any:
    """This rank's entry of a `gather_per_rank` list read back from a checkpoint.

    A checkpoint of another world size cannot resume exactly: each rank then takes the entry of
    its own index when there is one (None otherwise), with a warning.
    """
    world, rank = _world(trainer), getattr(trainer, "global_rank", 0) if trainer is not None else 0
    if len(entries) != world:
        log.warning(
            "the checkpoint holds the %s of %d rank(s) and this run has %d: the resume is not exact",
            what,
            len(entries),
            world,
        )
    return entries[rank] if rank < len(entries) else None
