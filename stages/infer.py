"""DVC stage `infer`: paths come from dvc.yaml, parameters from params.yaml's `infer:` section."""

import sys

from ptycho.cli import main

sys.exit(main(["infer", *sys.argv[1:]]))
