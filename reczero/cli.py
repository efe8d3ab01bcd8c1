"""The one entry point: `reczero <command>` (also `python -m reczero`), and the one config system.

  reczero fit|validate|test --config configs/grpo.yaml [--model.init_args.x=...] [--trainer.y=...]
  reczero evaluate  [--config FILE] [--adapter DIR | --ckpt FILE] [--split test] [--limit N] [--output F]
  reczero predict   --requests requests.jsonl [--config FILE] [--adapter DIR | --ckpt FILE] [--output F]
  reczero baselines [--config FILE] [--output baselines.json] [--methods a b]
  reczero coldstart --config configs/sft.yaml [--teacher ID] [--num_traces 1000] [--tries 4]
  reczero data stats|preview [--config FILE] [--tokens] [--count 3]
  reczero report    --inputs a.json b.json [--runs checkpoints/run ...] --out DIR

Every command is parsed by jsonargparse from typed signatures, and all but `report` take the same config:
`--config` takes a fit YAML (or a run's saved config.yaml); `data:` is the `RatingDataModule`,
`model:` the LightningModule (its `policy`, `reward` and `val_max_new_tokens` are what `evaluate`,
`predict` and `coldstart` use), and `trainer:` / `seed_everything` are read by `fit` only. The same
dotted overrides work everywhere (`--data.source.path=...`, `--model.init_args.policy.model=...`), and
`--print_config` prints the result. `data.prompt` is linked to `model.init_args.prompt` and
`model.init_args.policy.model` to `data.tokenizer`, so a config states each once. A command's own
options are its function's `options` dataclass, at the top level (`--limit`); dashes may stand for
underscores, a bare boolean flag means true, a list option takes several values, and `--format` /
`--path` are short for `--data.source.format` / `--data.source.path`.

A command that succeeds exits 0 and prints its table or summary; machine-readable results go to the
file `--output` names. A config error (an unknown key, a wrong type, a value a class refuses) and bad
input (a malformed data row) end the command with one line on stderr, naming the key, or the file, line
and field, and what was expected, and exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import json
import logging
import re
import sys
import typing
import warnings

LIGHTNING_COMMANDS = ("fit", "validate", "test")
COMMANDS = {  # `reczero <command>` -> "module:function", imported only when used
    "evaluate": "reczero.evaluation.evaluate:evaluate_command",
    "predict": "reczero.evaluation.predict:predict_command",
    "baselines": "reczero.evaluation.baselines:baselines_command",
    "coldstart": "reczero.recone.coldstart:coldstart_command",
    "data stats": "reczero.data.stats:stats_command",
    "data preview": "reczero.data.stats:preview_command",
    "report": "reczero.evaluation.report:report_command",
}
SHORTCUTS = {"--format": "--data.source.format", "--path": "--data.source.path"}
LINKS = (("data.prompt", "model.init_args.prompt"), ("model.init_args.policy.model", "data.tokenizer"))
EXTRAS = {"matplotlib": "plot", "deepspeed": "deepspeed", "trl": "bench"}  # module -> the extra installing it


class ConfigError(ValueError):
    """A command line or config the parser refuses; the message is one line."""


# -- the parsers ----------------------------------------------------------------------------------
def _shared_sections(parser, with_model: bool = True) -> None:
    """`data:` and `model:` as `fit` has them, plus fit's other top-level keys, so one YAML fits all."""
    from reczero.data.datamodule import RatingDataModule
    from reczero.modules.base import PolicyModule

    parser.add_class_arguments(RatingDataModule, "data")
    if with_model:
        parser.add_subclass_arguments(
            PolicyModule, "model", required=False, default={"class_path": "reczero.modules.GRPOModule"}
        )
        for source, target in LINKS:
            parser.link_arguments(source, target)
    parser.add_argument("--trainer", type=dict | None, default=None, help="read by `fit` only")
    parser.add_argument("--seed_everything", type=bool | int | None, default=None, help="`fit` only")
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="`fit` only")


def command_parser(name: str, function):
    """The parser of `reczero <name>`: `--config`, and the typed parameters of `function` (`data`,
    `model`, and its `options` dataclass at the top level)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    params = inspect.signature(function).parameters
    doc = inspect.getdoc(function) or ""
    parser = ArgumentParser(prog=f"reczero {name}", description=doc.split("\n\n")[0], exit_on_error=False)
    if "data" in params:
        parser.add_argument("--config", action=ActionConfigFile, help="a fit YAML or a run's saved config.yaml")
        _shared_sections(parser, with_model=True)
    if "options" in params:
        parser.add_class_arguments(typing.get_type_hints(function)["options"], None)
    return parser


def _flag_kinds(parser) -> tuple[set[str], set[str]]:
    """(boolean, list) top-level option names of `parser`, for the command-line conveniences."""
    flags, lists = set(), set()
    for action in parser._actions:
        kind = getattr(action, "_typehint", None)
        if kind is None or "." in action.dest:
            continue
        text = str(kind)
        if kind is bool or text in ("typing.Optional[bool]", "bool | None"):
            flags.add(action.dest)
        elif text.startswith(("list[", "typing.List[", "typing.Optional[list[", "list[str] | None")):
            lists.add(action.dest)
    return flags, lists


def normalize(args: list[str], parser=None) -> list[str]:
    """Shortcuts, dashes, bare boolean flags and multi-value lists, rewritten into jsonargparse's form."""
    flags, lists = _flag_kinds(parser) if parser is not None else (set(), set())
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        key, eq, value = arg.partition("=")
        key = SHORTCUTS.get(key, key)
        key = "--" + key[2:].replace("-", "_") if "." not in key else key
        name = key[2:]
        if not eq and name in flags and (i == len(args) or args[i].startswith("--")):
            out.append(f"{key}=true")
        elif not eq and name in lists:
            values = []
            while i < len(args) and not args[i].startswith("--"):
                values.append(args[i])
                i += 1
            out.append(f"{key}={json.dumps(values)}")
        else:
            out.append(f"{key}{eq}{value}")
    return out


def run_command(name: str, args: list[str]):
    """Parse `args` for `reczero <name>`, instantiate the classes and call the command's function."""
    module, function = COMMANDS[name].split(":")
    fn = getattr(importlib.import_module(module), function)
    parser = command_parser(name, fn)
    argv = normalize(args, parser)
    try:
        cfg = parser.parse_args(argv)
        init = parser.instantiate(cfg)
    except Exception as err:  # jsonargparse's ArgumentError, or a ValueError from a class or dataclass
        raise ConfigError(one_line(err, argv, _key_catalogue(parser))) from None
    params = inspect.signature(fn).parameters
    kwargs = {k: init[k] for k in ("data", "model") if k in params}
    if "options" in params:
        options_type = typing.get_type_hints(fn)["options"]
        kwargs["options"] = options_type(**{f.name: init[f.name] for f in dataclasses.fields(options_type)})
    return fn(**kwargs)


def lightning_cli(args: list[str], from_sys_argv: bool = False) -> None:
    """LightningCLI over every PolicyModule subclass and the RatingDataModule, with the shared links."""
    from lightning.pytorch.cli import LightningCLI

    from reczero.data.datamodule import RatingDataModule
    from reczero.modules.base import PolicyModule

    class CLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            for source, target in LINKS:
                parser.link_arguments(source, target)

        def before_instantiate_classes(self) -> None:
            from reczero.modules.run_folder import place_run  # noqa: PLC0415

            place_run(self.config[self.subcommand] if self.subcommand else self.config)

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as err:
                config = self.config.get(self.config.get("subcommand"), self.config)
                raise ConfigError(one_line(err, args, _key_catalogue(None, config))) from None

    try:
        CLI(
            PolicyModule,
            RatingDataModule,
            subclass_mode_model=True,
            args=None if from_sys_argv else args,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, **{c: {"exit_on_error": False} for c in LIGHTNING_COMMANDS}},
        )
    except ConfigError:
        raise
    except Exception as err:
        if type(err).__name__ != "ArgumentError":
            raise
        raise ConfigError(one_line(err, args, _key_catalogue(None))) from None


# -- one-line errors ------------------------------------------------------------------------------
_NOISE = re.compile(
    r"^(Problem with given class_path|Does not validate against|Subtypes:|Errors:|Given value|- Expected a <class 'NoneType'>|Expected a <class 'NoneType'>)"
)


def _key_catalogue(parser, config=None) -> list[str]:
    """Every dotted key a config may hold: `parser`'s own, `fit`'s sections, each module's init_args."""
    from jsonargparse import ArgumentParser

    from reczero.modules import GRPOModule, SFTModule

    catalogue = ArgumentParser(exit_on_error=False)
    _shared_sections(catalogue, with_model=False)
    for cls in (GRPOModule, SFTModule):
        catalogue.add_class_arguments(cls, f"model.init_args.{cls.__name__}", fail_untyped=False)
    keys = set()
    for p in (parser, catalogue):
        for action in getattr(p, "_actions", []):
            dest = action.dest.replace(".GRPOModule", "").replace(".SFTModule", "")
            if dest not in ("help", "config", "print_config"):
                keys.add(dest)
    if parser is None:  # `fit`: the trainer's own arguments
        try:
            from lightning.pytorch import Trainer

            keys.update(f"trainer.{k}" for k in inspect.signature(Trainer.__init__).parameters if k != "self")
        except ImportError:  # pragma: no cover - lightning is a dependency
            pass
    return sorted(keys)


def _suggest(key: str, keys: list[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _full_key(fragment: str, argv: list[str]) -> str:
    """The command-line key that ends with `fragment` (jsonargparse names keys relative to a subclass)."""
    fragment = fragment.lstrip("-").split("=")[0]
    for arg in argv:
        key = arg.lstrip("-").split("=")[0]
        if arg.startswith("--") and (key == fragment or key.endswith("." + fragment)):
            return key
    return fragment


def one_line(err: BaseException, argv: list[str], keys: list[str]) -> str:
    """jsonargparse's (multi-line) message, or a class's own, as one line naming the key."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    unknown = re.search(r"unrecognized arguments: (\S+)", text) or re.search(r"does not accept option '([^']+)'", text)
    if unknown:
        fragment = unknown.group(1)
        group = re.search(r"Group '([^']+)' does not accept", text)
        key = f"{group.group(1)}.{fragment}" if group else _full_key(fragment, argv)
        return f"unknown key {key}{_suggest(key, keys)}"
    option = re.search(r"Option '([^']+)' is not accepted", text)
    if option:
        key = _full_key(option.group(1), argv)
        if "." not in key:
            parent = re.search(r"Parser key \"([^\"]+)\"", text)
            key = f"{parent.group(1)}.init_args.{key}" if parent else key
        return f"unknown key {key}{_suggest(key, keys)}"
    parser_key = re.match(r'Parser key "([^"]+)"', text)
    section = parser_key.group(1) if parser_key else None
    if section is None and "PolicyModule" in text or section == "model":
        section = "model.init_args"
    given = re.search(r"Given value: (.*)", text) or re.search(r"Got value: (.*)", text)
    expected = [m.group(1) for m in re.finditer(r"Expected an? (.*?)(?:\. Got value.*)?$", text, re.MULTILINE)]
    expected = [_type_name(e) for e in expected if "NoneType" not in e] or [_type_name(e) for e in expected]
    own = [
        line[2:] if line.startswith("- ") else line
        for line in lines
        if not _NOISE.match(line) and not re.match(r"(- )?(Expected|Problem with|Parser key|Does not validate)", line)
    ]
    where = f"{section}: " if section else ""
    if own:  # a class or dataclass refused the value: its own message says which and why
        return where + own[-1]
    if expected:
        got = given.group(1).strip() if given else ""
        nested = re.fullmatch(r"NestedArg\(key='([^']+)', val=(.*)\)", got)
        if nested:  # a subclass's own key: name it in full
            where, got = f"{section}.{nested.group(1)}: " if section else f"{nested.group(1)}: ", nested.group(2)
        got = f" (got {got[:80]})" if got else ""
        return f"{where}expected {' or '.join(dict.fromkeys(expected))}{got}"
    return " ".join(lines)[:300]


def _type_name(text: str) -> str:
    text = text.strip()
    match = re.fullmatch(r"<class '(?:builtins\.)?([\w.]+)'>", text)
    if match:
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
            match.group(1), match.group(1)
        )
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if literal:
        return "one of " + literal.group(1)
    return text


# -- the console ----------------------------------------------------------------------------------
# Known-harmless warnings, each silenced for its reason.
QUIET_WARNINGS = (
    # Lightning, at the start of training: from_pretrained loads the policy in eval mode and training
    # keeps it so (no dropout: the default LoRA dropout is 0 and these models have none), which is what
    # GRPO's log-probs assume: the training forward scores tokens as the sampler did.
    r"Found \d+ module\(s\) in eval mode",
    # Lightning's ModelCheckpoint under manual optimisation (GRPO steps its optimizer itself): it warns,
    # with a page of example code, that a checkpoint holds the weights after the step, which is what a
    # resume needs (the step counter counts finished steps).
    r"Using ModelCheckpoint with manual optimization",
    # LightningCLI, when `main(argv)` is called from Python (tests, scripts) with an argv of its own:
    # the command line it is given is the one meant
    r"LightningCLI's args parameter is intended to run from within Python",
    # peft asks transformers 5 a property it deprecated; peft's call, nothing a user can change
    r"`is_gradient_checkpointing` is deprecated",
    # Lightning's own batch-transfer code uses a torch API torch deprecated; nothing a user can change
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
# Known-harmless log records: logger -> texts its noise contains.
_LIGHTNING_NOISE = (
    # a tip to install its cloud logger; the configs log to TensorBoard
    "litlogger",
    # the modules' step-counting progress bar replaces Lightning's default one, as intended
    "will override existing callbacks passed to Trainer: RichProgressBar",
)
QUIET_LOGS = {
    # bitsandbytes, at import: the optional `kernels` package for its CPU 4-bit matmul is not installed;
    # it falls back to its own kernel, and only 4-bit runs use it at all.
    "bitsandbytes.backends.cpu.ops": ("kernels-community",),
    "lightning.pytorch.utilities.rank_zero": _LIGHTNING_NOISE,
    "lightning.fabric.utilities.rank_zero": _LIGHTNING_NOISE,
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Drop(logging.Filter):
    """Drops the records whose message contains one of `texts`."""

    def __init__(self, texts: tuple[str, ...]):
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


def setup_console() -> None:
    """reczero's INFO messages on stderr; the known-harmless warnings and log records above silenced."""
    logger = logging.getLogger("reczero")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, texts in QUIET_LOGS.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in target.filters):
            target.addFilter(_Drop(texts))


# -- main -----------------------------------------------------------------------------------------
def _command_name(args: list[str]) -> tuple[str, list[str]]:
    if args[0] == "data":
        if len(args) < 2 or args[1] not in ("stats", "preview"):
            raise ConfigError("reczero data takes an action: stats or preview")
        return f"data {args[1]}", args[2:]
    return args[0], args[1:]


def console() -> int:
    """The `reczero` console script and `python -m reczero`: exit status 0 when the command succeeds, 2 on bad
    input (`main` prints one line and raises SystemExit(2)); the command's result stays in Python."""
    main()
    return 0


def main(argv: list[str] | None = None):
    """Run `reczero <command>` on `argv` (default: the command line) and return the command's result, for
    callers in Python (tests, scripts); the console script is `console`."""
    args = list(sys.argv[1:] if argv is None else argv)
    setup_console()
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return None
    command = args[0]
    try:
        if command in LIGHTNING_COMMANDS:
            return lightning_cli(args, from_sys_argv=argv is None)
        name, rest = _command_name(args)
        if name not in COMMANDS:
            raise ConfigError(
                f"unknown command {command!r}{_suggest(command, [*LIGHTNING_COMMANDS, 'data', *COMMANDS])}"
            )
        return run_command(name, rest)
    except ModuleNotFoundError as err:
        if err.name not in EXTRAS:
            raise
        extra = EXTRAS[err.name]
        message = f"{err.name} is not installed: install the {extra} extra (pip install 'reczero[{extra}]')"
    except (ValueError, FileNotFoundError) as err:  # bad input: the message says what and where
        message = " ".join(str(err).split())
    print(f"reczero {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
