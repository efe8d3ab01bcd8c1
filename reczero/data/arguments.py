"""The data arguments every command shares, and `--config`: a fit YAML's sections as a command's defaults.

`reczero evaluate`, `predict`, `baselines` and `coldstart` build their parsers with
`add_data_arguments` (`--config`, `--format`, `--path` and the RatingDataModule's `--data.*`), and
they and `reczero data` parse with `parse_with_config`, so one fit YAML configures every command.
Kept below the commands (not in `cli.py`) so that they depend on it, never on the entry point.
"""

from __future__ import annotations


def add_data_arguments(parser) -> None:
    """`--config`, `--format`, `--path` and `--data.*` (the RatingDataModule's arguments) on `parser`."""
    from reczero.data.datamodule import RatingDataModule

    parser.add_argument("--config", type=str, default=None, help="a fit YAML (its `data:` section is used)")
    parser.add_argument("--format", type=str, default=None, help="shortcut for --data.source.format")
    parser.add_argument("--path", type=str, default=None, help="shortcut for --data.source.path")
    parser.add_class_arguments(RatingDataModule, "data")


def parse_with_config(parser, args: list[str], sections: tuple[tuple[str, str], ...] = (("data", "data"),)):
    """Parse `args`; with `--config FILE`, sections of that fit YAML become defaults first.

    `sections` maps a dotted YAML path to a parser key, e.g. ("model.init_args.policy", "policy"): a
    mapping there becomes `policy.<field>` defaults, a plain value the default of the key itself.
    Missing sections are skipped. `--format` / `--path` then override `data.source.*`.
    """
    import yaml

    args = list(args)
    path = None
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            path, args = args[i + 1], args[:i] + args[i + 2 :]
            break
        if arg.startswith("--config="):
            path, args = arg.split("=", 1)[1], args[:i] + args[i + 1 :]
            break
    if path is not None:
        with open(path) as fh:
            full = yaml.safe_load(fh) or {}
        defaults = {}
        for dotted, key in sections:
            value = full
            for part in dotted.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, dict):
                defaults.update({f"{key}.{k}": v for k, v in _flatten(value).items()})
            elif value is not None:
                defaults[key] = value
        parser.set_defaults(defaults)
    cfg = parser.parse_args(args)
    if getattr(cfg, "format", None):
        cfg.data.source.format = cfg.format
    if getattr(cfg, "path", None):
        cfg.data.source.path = cfg.path
    return cfg


def _flatten(section: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in section.items():
        if isinstance(value, dict) and key in ("source", "samples") and "class_path" not in value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
