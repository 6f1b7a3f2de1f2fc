"""DVC stage `prepare`: paths come from dvc.yaml, parameters from params.yaml's `prepare:` section."""

import sys

from ptycho.cli import main

sys.exit(main(["prepare", *sys.argv[1:]]))
