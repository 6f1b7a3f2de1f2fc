"""DVC stage `baseline`: paths come from dvc.yaml, parameters from params.yaml's `baseline:` section."""

import sys

from ptycho.cli import main

sys.exit(main(["baseline", *sys.argv[1:]]))
