"""DVC stage `evaluate`: paths come from dvc.yaml, parameters from params.yaml's `evaluate:` section."""

import sys

from ptycho.cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
