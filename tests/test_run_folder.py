"""A run's outputs land in its own folder: `place_run` moves every output path of a fit config together."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from reczero.modules.run_folder import outputs, place_run, run_name

ROOT = Path(__file__).resolve().parent.parent
DEMO = "checkpoints/grpo-synthetic"


def demo_config() -> dict:
    """The output keys of configs/grpo.yaml, as a parsed config holds them."""
    return {
        "trainer": {
            "default_root_dir": DEMO,
            "logger": {"class_path": "TensorBoardLogger", "init_args": {"save_dir": DEMO, "name": "tb"}},
            "callbacks": [{"class_path": "ModelCheckpoint", "init_args": {"dirpath": DEMO}}],
        },
        "model": {"init_args": {"adapter_dir": f"{DEMO}/adapter", "rollout_log": f"{DEMO}/rollouts.jsonl"}},
        "data": {"source": {"format": "synthetic"}},
    }


@pytest.fixture()
def config_file(tmp_path) -> Path:
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(demo_config()))
    return path


def paths(config: dict) -> dict[str, str]:
    return {label: str(obj[key]) for label, (obj, key) in outputs(config).items()}


def test_the_demo_config_as_written_stays_in_its_folder(config_file):
    config = demo_config()
    assert place_run(config, [config_file]) == DEMO
    assert paths(config) == paths(demo_config())


def test_another_data_source_gets_a_folder_named_after_it(config_file):
    config = demo_config()
    config["data"]["source"] = {"format": "amazon-2023", "path": "/data/All_Beauty.jsonl.gz"}
    folder = place_run(config, [config_file])
    assert folder == "checkpoints/grpo-amazon-2023-All_Beauty"
    assert paths(config) == {
        "trainer.default_root_dir": folder,
        "trainer.logger[0].init_args.save_dir": folder,
        "trainer.callbacks[0].init_args.dirpath": folder,
        "model.init_args.adapter_dir": f"{folder}/adapter",
        "model.init_args.rollout_log": f"{folder}/rollouts.jsonl",
    }
    assert not any(p.startswith(DEMO) for p in paths(config).values())


def test_default_root_dir_moves_everything_and_an_explicit_output_stays(config_file):
    config = demo_config()
    config["trainer"]["default_root_dir"] = "runs/mine"
    config["model"]["init_args"]["adapter_dir"] = "exports/adapter"  # set on the command line: kept
    assert place_run(config, [config_file]) == "runs/mine"
    got = paths(config)
    assert got["trainer.logger[0].init_args.save_dir"] == got["trainer.callbacks[0].init_args.dirpath"] == "runs/mine"
    assert got["model.init_args.rollout_log"] == "runs/mine/rollouts.jsonl"
    assert got["model.init_args.adapter_dir"] == "exports/adapter"


def test_a_config_without_a_run_folder_is_left_alone(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": {"format": "synthetic"}}}))
    config = {"trainer": {"logger": False}, "data": {"source": {"format": "amazon-2023", "path": "x.jsonl"}}}
    assert place_run(config, [path]) is None
    assert config["trainer"] == {"logger": False}


def test_run_name():
    assert (
        run_name("configs/grpo.yaml", {"format": "movielens-1m", "path": "data/ml-1m/"}) == "grpo-movielens-1m-ml-1m"
    )
    assert run_name(None, {"format": "jsonl", "path": "my ratings.jsonl"}) == "jsonl-my-ratings"


def test_fit_on_another_source_writes_nothing_under_the_demo_folder(tmp_path, monkeypatch):
    """configs/grpo.yaml parsed by LightningCLI as `reczero fit` parses it, with an Amazon 2023 source:
    the trainer, logger, checkpoint callback and module all point into the run's own folder."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    from reczero.cli import LINKS
    from reczero.data.datamodule import RatingDataModule
    from reczero.modules.base import PolicyModule

    reviews = tmp_path / "All_Beauty.jsonl"
    row = {"user_id": "u1", "parent_asin": "i1", "rating": 5.0, "timestamp": 1_600_000_000_000, "text": "ok"}
    reviews.write_text(json.dumps(row) + "\n")
    monkeypatch.chdir(tmp_path)

    class CLI(LightningCLI):  # `reczero.cli.lightning_cli`'s parser, with the call the lead wires into it
        def add_arguments_to_parser(self, parser) -> None:
            for source, target in LINKS:
                parser.link_arguments(source, target)

        def before_instantiate_classes(self) -> None:
            place_run(self.config)

    args = [
        f"--config={ROOT / 'configs' / 'grpo.yaml'}",
        "--data.source.format=amazon-2023",
        f"--data.source.path={reviews}",
    ]
    cli = CLI(PolicyModule, RatingDataModule, subclass_mode_model=True, run=False, args=args,
              auto_configure_optimizers=False, save_config_kwargs={"overwrite": True})  # fmt: skip
    folder = "checkpoints/grpo-amazon-2023-All_Beauty"
    checkpoint = next(c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert cli.trainer.default_root_dir == folder
    assert cli.trainer.logger.save_dir == folder
    assert checkpoint.dirpath == os.path.realpath(tmp_path / folder)
    assert cli.model.hparams.adapter_dir == f"{folder}/adapter"
    assert cli.model.hparams.rollout_log == f"{folder}/rollouts.jsonl"
    assert not (tmp_path / DEMO).exists()
