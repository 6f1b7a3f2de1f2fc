"""The command line: outputs given, or derived from one that is given; never a pipeline path by default."""

import argparse
import shlex
from pathlib import Path

import pytest
import yaml

from ptycho import cli

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FOLDERS = ("data", "models", "results")


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every sub-command's parser by its argv prefix ("train", "benchmark scenarios", ...)."""
    found = {}

    def walk(parser, prefix):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            found[" ".join(prefix)] = parser
        for action in subparsers:
            for name, child in action.choices.items():
                walk(child, [*prefix, name])

    walk(cli.build_parser(), [])
    return found


def parsed(argv: list[str]) -> argparse.Namespace:
    args = cli.build_parser().parse_args(argv)
    cli._derive_outputs(args)
    return args


@pytest.mark.parametrize("command", sorted(name for name, parser in commands().items() if parser.get_default("outputs")))
def test_one_output_given_puts_every_other_output_beside_it(command, tmp_path):
    outputs = commands()[command].get_default("outputs")
    for first in outputs:
        args = parsed([*command.split(), f"--{first.replace('_', '-')}", str(tmp_path / "given.out")])
        for dest in outputs:
            path = Path(getattr(args, dest))
            assert path.parent == tmp_path, f"{command}: --{dest} went to {path} although --{first} was given"
        assert len({getattr(args, dest) for dest in outputs}) == len(outputs)  # no two outputs on one path


@pytest.mark.parametrize("command", sorted(name for name, parser in commands().items() if parser.get_default("outputs")))
def test_no_output_given_means_the_pipeline_paths(command):
    args = parsed(command.split())
    assert all(Path(getattr(args, dest)).parts[0] in PIPELINE_FOLDERS for dest in args.outputs)


def test_train_with_its_outputs_given_writes_no_history_figure_into_models(tmp_path):
    # The issue: every path given but --history-figure, whose default models/history.png made
    # `dvc status` report train as changed, and the next `dvc repro` retrained.
    args = parsed(["train", "--bundle", str(tmp_path / "wts.h5.zip"), "--history", str(tmp_path / "history.csv"),
                   "--metrics", str(tmp_path / "m.json"), "--checkpoints", str(tmp_path / "ckpt")])
    assert args.history_figure == str(tmp_path / "history.png")


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_every_stage_gives_every_output_of_its_command(stage):
    # dvc.yaml owns the paths: a stage that left an output to its default would write where
    # DVC does not expect it.
    words = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    command = Path(words[1]).stem
    outputs = commands()[command].get_default("outputs") or {}
    given = {word[2:].replace("-", "_") for word in words if word.startswith("--")}
    assert set(outputs) <= given, f"stage {stage} leaves {sorted(set(outputs) - given)} to their defaults"
