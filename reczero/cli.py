"""The one entry point: `reczero <command>` (also `python -m reczero`).

  reczero fit|validate|test --config configs/grpo.yaml [--model.x=...] [--trainer.y=...]   LightningCLI
  reczero data stats|preview [--config FILE] [--format F --path P ...]                       data checks
  reczero evaluate [--config FILE] [--adapter DIR | --ckpt FILE] [--split test] [--limit N]
                   [--decoding greedy|expected|self_consistency] [--output preds.jsonl]       LLM metrics
  reczero baselines [--config FILE] [--format F --path P] [--output baselines.json]           classical baselines
  reczero report --inputs a.json b.json [--runs checkpoints/run ...] --out DIR                markdown + plots
  reczero predict --requests requests.jsonl [--config FILE] [--adapter DIR | --ckpt FILE]     ratings as JSONL
  reczero coldstart --config configs/sft.yaml [--teacher ID] [--output traces.jsonl]
                    [--num-traces 1000] [--tries 4] [--tolerance 0.5] [--batch-size 4]       RecOne SFT traces

`--config` takes a fit YAML (or a run's saved config.yaml) and uses its `data:` section (evaluate and
predict also its `model.init_args.policy` / `reward` / `val_max_new_tokens`); `--data.*` etc. override it.

Heavy imports (lightning, transformers, peft) happen inside the commands that need them.
"""

from __future__ import annotations

import importlib
import logging
import sys

from reczero.data.arguments import parse_with_config

LIGHTNING_COMMANDS = ("fit", "validate", "test")
COMMANDS = {  # command -> "module:function(argv)", imported only when used
    "evaluate": "reczero.evaluation.evaluate:main",
    "baselines": "reczero.evaluation.baselines:baselines_main",
    "report": "reczero.evaluation.report:main",
    "predict": "reczero.evaluation.predict:main",
    "coldstart": "reczero.recone.coldstart:main",
}  # `predict` is reczero.evaluation.predict, not LightningCLI's


def lightning_cli(args: list[str] | None) -> None:
    """LightningCLI over every PolicyModule subclass and the RatingDataModule (None: read sys.argv)."""
    from lightning.pytorch.cli import LightningCLI

    from reczero.data.datamodule import RatingDataModule
    from reczero.modules.base import PolicyModule

    LightningCLI(
        PolicyModule,
        RatingDataModule,
        subclass_mode_model=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def _data_parser():
    from jsonargparse import ArgumentParser

    from reczero.data.datamodule import RatingDataModule

    parser = ArgumentParser(prog="reczero data", description="Inspect what a data configuration produces.")
    parser.add_argument("action", choices=["stats", "preview"])
    parser.add_argument("--config", type=str, default=None, help="a fit YAML (its `data:` section is used)")
    parser.add_argument("--format", type=str, default=None, help="shortcut for --data.source.format")
    parser.add_argument("--path", type=str, default=None, help="shortcut for --data.source.path")
    parser.add_argument("--tokenizer", type=str, default=None, help="model id/folder/'bundled' for prompt tokens")
    parser.add_argument("--split", type=str, default="train", help="preview: which split")
    parser.add_argument("--count", type=int, default=3, help="preview: how many prompts")
    parser.add_argument("--seed", type=int, default=0, help="preview: which prompts")
    parser.add_class_arguments(RatingDataModule, "data")
    return parser


def data_command(args: list[str]) -> None:
    parser = _data_parser()
    cfg = parse_with_config(parser, args)
    init = parser.instantiate_classes(cfg)
    dm = init.data
    from reczero.data.stats import data_stats, format_stats, preview

    tokenizer = _tokenizer(cfg.tokenizer) if cfg.tokenizer or cfg.action == "preview" else None
    if cfg.action == "stats":
        print(format_stats(data_stats(dm, tokenizer)))
    else:
        print("\n\n".join(preview(dm, tokenizer, cfg.split, cfg.count, cfg.seed)))


def _tokenizer(name: str | None):
    from reczero.policy.bundled import BUNDLED
    from reczero.policy.factory import PolicyConfig, load_tokenizer

    model = BUNDLED if name in (None, "bundled") else name
    return load_tokenizer(PolicyConfig(model=model))


USAGE = __doc__


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_handler() -> None:
    """reczero's INFO messages on stderr; Lightning and transformers keep their own handlers."""
    logger = logging.getLogger("reczero")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    _log_handler()
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command in LIGHTNING_COMMANDS:
        lightning_cli(None if argv is None else args)
    elif command == "data" or command in COMMANDS:
        try:
            if command == "data":
                data_command(rest)
            else:
                module, function = COMMANDS[command].split(":")
                getattr(importlib.import_module(module), function)(rest)
        except (ValueError, FileNotFoundError) as err:  # bad input: the message says what and where
            print(f"reczero {command}: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
