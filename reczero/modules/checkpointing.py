"""Checkpoint safety: atomic writes, and the RNG states an exact resume needs.

`AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder, flushes it to
disk and renames it over the target, so a crash or a full disk during a save leaves the previous
checkpoint whole and loadable; remote paths (`s3://`, `memory://`, ...) go through Lightning's fsspec
writer. Loading uses `weights_only=True`: a checkpoint holds tensors and plain containers, never
pickled code. Use it with `--trainer.plugins=reczero.modules.checkpointing.AtomicCheckpointIO` (the
configs in `configs/` do). Keep-last-N is Lightning's own: `ModelCheckpoint(monitor="step", mode="max",
save_top_k=N)`. `capture_rng` / `restore_rng` hold one process's RNG states; the modules keep one
per rank (`distributed.gather_per_rank`).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are all-or-nothing and whose loads never unpickle code.

    Local paths get the temporary file, fsync and rename; remote ones (`s3://`, `gs://`, `memory://`,
    any fsspec URL) go through Lightning's own fsspec writer, whose object stores publish a file whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(fsspec.core.url_to_fs(str(path))[1])  # a `file://` URL becomes its path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(
        self, path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, as plain tensors and lists."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].copy()),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
