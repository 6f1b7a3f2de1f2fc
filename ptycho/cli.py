"""The `ptycho` command line: one sub-command per pipeline stage, each calling its workflow."""

from __future__ import annotations

import argparse
import sys

from ptycho import __version__, config, workflows
from ptycho.data import load_dataset
from ptycho.errors import PtychoError


def _prepare(args: argparse.Namespace) -> None:
    prepare_config = config.load_section(args.params, "prepare")
    train, test = workflows.prepare(prepare_config, args.train, args.test, args.preview)
    print(f"prepare: wrote {args.train} ({train.n_patterns} patterns) and {args.test} ({test.n_patterns} patterns)")


def _train(args: argparse.Namespace) -> None:
    model_config = config.load_section(args.params, "model")
    train_config = config.load_section(args.params, "train")
    summary = workflows.train(
        load_dataset(args.train_data), model_config, train_config,
        args.bundle, args.history, args.metrics, args.checkpoints, resume=args.resume,
    )
    print(f"train: wrote {args.bundle}; " + ", ".join(f"{key}={value}" for key, value in summary.metrics.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptycho", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ptycho {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="simulate or ingest a scan; write train/test NPZ and a preview")
    prepare.add_argument("--params", default="params.yaml", help="parameter file (section prepare)")
    prepare.add_argument("--train", default="data/prepared/train.npz", help="training NPZ to write")
    prepare.add_argument("--test", default="data/prepared/test.npz", help="test NPZ to write")
    prepare.add_argument("--preview", default="data/prepared/preview.png", help="preview PNG to write")
    prepare.set_defaults(run=_prepare)

    train = commands.add_parser("train", help="train the network on the training NPZ; write the bundle wts.h5.zip")
    train.add_argument("--params", default="params.yaml", help="parameter file (sections model, train)")
    train.add_argument("--train-data", default="data/prepared/train.npz", help="training NPZ")
    train.add_argument("--bundle", default="models/wts.h5.zip", help="model bundle to write")
    train.add_argument("--history", default="models/history.csv", help="per-epoch losses (CSV)")
    train.add_argument("--metrics", default="models/train_metrics.json", help="final losses (JSON)")
    train.add_argument("--checkpoints", default="models/checkpoints", help="Lightning checkpoints (for --resume)")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a ptycho error becomes a one-line message and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except PtychoError as error:
        print(f"ptycho {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
