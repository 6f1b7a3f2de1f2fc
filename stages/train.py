"""DVC stage `train`: paths come from dvc.yaml, parameters from params.yaml's `model:` and `train:`."""

import sys

from ptycho.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
