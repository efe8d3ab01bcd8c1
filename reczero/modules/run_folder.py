"""Where a training run writes: one folder per run, never the demo's.

A config in `configs/` names its run folder once, `trainer.default_root_dir` (its "home", e.g.
`checkpoints/grpo-synthetic`), and states every output path below it: the TensorBoard logger's
`save_dir`, the `ModelCheckpoint` `dirpath`, `model.init_args.adapter_dir` and `rollout_log`
(`OUTPUTS`). `place_run` moves all of them together, before Lightning builds anything:

- `--trainer.default_root_dir=DIR` on the command line: the run writes under DIR (the one option
  that moves everything a run writes);
- no DIR, but another data source than the config file's (`data.source.format` / `path` /
  `items_path`): the run writes under `<home's parent>/<run_name(...)>`, named after the config and
  the data (`checkpoints/grpo-amazon-2023-All_Beauty`), never into the config's own folder;
- neither: the config's own folder, as written (the demo's `make train-grpo`).

An output path the command line sets itself (it differs from the config file's) stays where it was put.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from reczero.data.sources import SourceConfig

ROOT = "trainer.default_root_dir"
# the data choices that make a run another run (a different dump, not a different sample of it)
SOURCE_KEYS = ("format", "path", "items_path")


def _at(obj: Any, key: str) -> Any:
    """`obj[key]` for dicts and jsonargparse Namespaces, None where there is no such key."""
    if obj is None or isinstance(obj, (str, bool, int, float, list)):
        return None
    try:
        return obj[key]
    except (KeyError, TypeError, AttributeError):
        return None


def _dotted(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = _at(obj, part)
    return obj


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def outputs(config: Any) -> dict[str, tuple[Any, str]]:
    """label -> (the object holding it, its key) for every output path `config` states (`OUTPUTS`)."""
    found: dict[str, tuple[Any, str]] = {}

    def add(label: str, parent: Any, key: str) -> None:
        if isinstance(_at(parent, key), (str, os.PathLike)):
            found[label] = (parent, key)

    trainer, model_args = _at(config, "trainer"), _dotted(config, "model.init_args")
    add(ROOT, trainer, "default_root_dir")
    for i, logger in enumerate(_as_list(_at(trainer, "logger"))):
        add(f"trainer.logger[{i}].init_args.save_dir", _at(logger, "init_args"), "save_dir")
    for i, callback in enumerate(_as_list(_at(trainer, "callbacks"))):
        add(f"trainer.callbacks[{i}].init_args.dirpath", _at(callback, "init_args"), "dirpath")
    for key in ("adapter_dir", "rollout_log"):
        add(f"model.init_args.{key}", model_args, key)
    return found


OUTPUTS = (  # what `outputs` finds, for the docs
    ROOT,
    "trainer.logger.init_args.save_dir",
    "trainer.callbacks[*].init_args.dirpath",
    "model.init_args.adapter_dir",
    "model.init_args.rollout_log",
)


def _source(config: Any) -> dict[str, Any]:
    """The data choices of `config` (`SOURCE_KEYS`), defaults filled in as `SourceConfig` has them."""
    source, default = _dotted(config, "data.source"), SourceConfig()
    values = {}
    for key in SOURCE_KEYS:
        value = _at(source, key)
        values[key] = str(value) if value is not None else getattr(default, key)
    return values


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "data"


def run_name(config_file: str | os.PathLike | None, source: dict[str, Any]) -> str:
    """`<config name>-<format>[-<data file or folder name>]`: `grpo-amazon-2023-All_Beauty`."""
    parts = [Path(config_file).stem] if config_file else []
    parts.append(source["format"])
    if source.get("path"):
        parts.append(Path(str(source["path"]).rstrip("/")).name.split(".")[0])
    return "-".join(_slug(p) for p in parts)


def _file_values(config_files: Iterable[str | os.PathLike]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """What the config files state, later files over earlier ones: (output label -> path, the data
    choices, the last file)."""
    stated: dict[str, Any] = {}
    source: dict[str, Any] = {}
    last = None
    for file in config_files:
        last = os.fspath(file) if isinstance(file, (str, os.PathLike)) else str(file)
        with open(last, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        stated.update({label: _at(parent, key) for label, (parent, key) in outputs(loaded).items()})
        source.update({k: v for k, v in (_dotted(loaded, "data.source") or {}).items() if k in SOURCE_KEYS})
    return stated, _source({"data": {"source": source}}), last


def _inside(path: str, folder: str) -> bool:
    p, f = Path(path), Path(folder)
    return p == f or f in p.parents


def place_run(config: Any, config_files: Iterable[str | os.PathLike] | None = None) -> str | None:
    """Move every output path of a parsed `fit` config (a jsonargparse Namespace or a dict) into the
    run's folder, in place, and return that folder (None when the config names none).

    `config_files`: the `--config` files, in order (default: the config's own `config` entry, as
    LightningCLI records it). See the module docstring for the rule.
    """
    files = list(config_files if config_files is not None else (_at(config, "config") or []))
    stated, file_source, last_file = _file_values(files)
    slots = outputs(config)
    home = stated.get(ROOT)
    if home is None or ROOT not in slots:
        parent, key = slots.get(ROOT, (None, None))
        return None if parent is None else str(_at(parent, key))
    parent, key = slots[ROOT]
    current = str(_at(parent, key))
    if current != str(home):  # the command line moved the run
        target = current
    elif _source(config) != file_source:  # another data set: a folder of its own, named after it
        target = str(Path(home).parent / run_name(last_file, _source(config)))
        if Path(target) == Path(home):
            target += "-run"
    else:
        return current
    for label, (obj, leaf) in slots.items():
        value = _at(obj, leaf)
        if label == ROOT:
            obj[leaf] = target
        elif value == stated.get(label) and _inside(str(value), str(home)):
            obj[leaf] = str(Path(target) / Path(value).relative_to(home))
    return target
