"""DVC stage `refine`: paths come from dvc.yaml, parameters from params.yaml's `refine:` section."""

import sys

from ptycho.cli import main

sys.exit(main(["refine", *sys.argv[1:]]))
