"""The one config system (`reczero.cli`): every config parses for every command, config errors are
one line with exit code 2, the command-line conveniences, and the quiet console."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest

from reczero.cli import command_parser, main, normalize, setup_console
from reczero.evaluation.evaluate import evaluate_command
from reczero.modules.console import StepProgressBar, format_table

CONFIGS = sorted(str(p) for p in Path("configs").glob("*.yaml"))


def test_the_config_folder_is_found():
    assert len(CONFIGS) >= 9 and "configs/grpo.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("command", ["fit", "evaluate", "coldstart", "data stats"])
def test_every_config_parses_for_every_command(config, command, capsys):
    """One YAML configures every command: each parses it against the typed signatures (nothing is built)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "data:" in printed and "source:" in printed
    if command != "data stats":
        assert "class_path: reczero.modules." in printed


ERRORS = [
    (
        "fit --config configs/grpo.yaml --model.init_args.rollout.group_sise=8",
        "reczero fit: error: unknown key model.init_args.rollout.group_sise "
        "(did you mean model.init_args.rollout.group_size?)",
    ),
    (
        "fit --config configs/grpo.yaml --model.init_args.rollout.group_size=1",
        "reczero fit: error: model.init_args: rollout.group_size must be >= 2 (GRPO compares samples of a group), got 1",
    ),
    (
        "fit --config configs/grpo.yaml --model.init_args.learning_rate=fast",
        "reczero fit: error: model.init_args.learning_rate: expected a number (got 'fast')",
    ),
    (
        "fit --config configs/grpo.yaml --trainer.max_stepz=3",
        "reczero fit: error: unknown key trainer.max_stepz (did you mean trainer.max_steps?)",
    ),
    ("evaluate --limt 3", "reczero evaluate: error: unknown key limt (did you mean limit?)"),
    ("evaluate --split train", "reczero evaluate: error: split: expected one of 'validation', 'test' (got train)"),
    (
        "data stats --data.sourc.format=csv",
        "reczero data: error: unknown key data.sourc.format (did you mean data.source.format?)",
    ),
    ("baselines --methods svd", "reczero baselines: error: methods: unknown method(s) ['svd']"),
    ("evalute --limit 3", "reczero evalute: error: unknown command 'evalute' (did you mean evaluate?)"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_config_errors_are_one_line_with_exit_code_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args.split())
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err and "usage:" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(message), err
    assert err.rstrip().splitlines()[-1] == errors[0]


def test_command_line_conveniences():
    parser = command_parser("evaluate", evaluate_command)
    args = ["--format", "csv", "--path=r.csv", "--no-progress", "--batch-size", "4", "--decode.mode=expected"]
    assert normalize(args, parser) == [
        "--data.source.format",
        "csv",
        "--data.source.path=r.csv",
        "--no_progress=true",
        "--batch_size",
        "4",
        "--decode.mode=expected",
    ]
    cfg = parser.parse_args(normalize(args, parser))
    assert (cfg.data.source.format, cfg.no_progress, cfg.batch_size, cfg.decode.mode) == ("csv", True, 4, "expected")
    from reczero.evaluation.baselines import baselines_command

    baselines = command_parser("baselines", baselines_command)
    listed = normalize(["--methods", "item_mean", "bias_baseline", "--seed", "3"], baselines)
    assert listed == ['--methods=["item_mean", "bias_baseline"]', "--seed", "3"]
    assert baselines.parse_args(listed).methods == ["item_mean", "bias_baseline"]


def test_links_state_the_prompt_and_the_tokenizer_once():
    cfg = command_parser("evaluate", evaluate_command).parse_args(["--config", "configs/grpo.yaml"])
    assert cfg.model.init_args.prompt == cfg.data.prompt and cfg.data.prompt.response_prefix == "<analyze user>"
    assert cfg.data.tokenizer == cfg.model.init_args.policy.model == "bundled:smollm2-135m-instruct"


def test_known_harmless_messages_are_silenced(caplog):
    setup_console()
    with caplog.at_level(logging.INFO):
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'."
        )
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("a real bitsandbytes problem")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("Tip: try installing litlogger")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a real bitsandbytes problem"]


def test_progress_bar_counts_steps_when_max_steps_bounds_the_run(tmp_path):
    bar = StepProgressBar()
    trainer = L.Trainer(max_steps=40, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    bar._trainer = trainer  # what Lightning's setup hook sets
    trainer.fit_loop.max_epochs = -1  # what `fit` sets when max_steps bounds the run: "Epoch 0/-2" before
    assert bar._get_train_description(0).strip() == "Step 0/40"
    epochs = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    bar._trainer = epochs
    assert bar._get_train_description(1).strip() == "Epoch 1/1"


def test_validation_table_by_hand():
    first = (0, {"val/reward": -0.42, "val/mae": 0.9375, "val/format_rate": 0.0})
    last = (40, {"val/reward": 1.5725, "val/mae": 0.857, "val/format_rate": 1.0})
    assert format_table(first, last).splitlines() == [
        "validation          step 0   step 40",
        "reward              -0.420     1.573",
        "format pass rate     0.000     1.000",
        "MAE                  0.938     0.857",
    ]
    assert format_table(None, None) == ""
