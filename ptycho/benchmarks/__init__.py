"""Benchmarks, not tests: each module is one benchmark with a ``main(argv)``, run as
``ptycho benchmark <name> [options]`` or ``python -m ptycho.benchmarks.<name> [options]``
(the same thing). The figures depend on the machine and its load; quote the load with them.

- ``timing``: after `dvc repro`, the network's inference time against the sweeps and time ePIE
  and rPIE need to reach its SSIM.
- ``scenarios``: network, network + refinement and rPIE over scan overlap x dose.
- ``scale``: peak memory and time of the ``infer`` stage against the number of positions.
- ``synchronisation``: the angular phase synchronisation against the number of patches.
- ``time_to_quality``: SSIM and data R-factor against wall time, network-based methods against
  rPIE from flat, on scans of another simulator and on the default data.
- ``single_pattern``: what one pattern can tell: per-pattern fits from the network's, a flat and the
  true patch, their data R-factors and correlations with the truth.

``sweeps`` holds the per-sweep scoring that ``timing`` and ``scenarios`` share. This module
imports nothing heavy: the command line lists the names without loading a benchmark.
"""

from __future__ import annotations

import argparse

NAMES = ("timing", "scenarios", "scale", "synchronisation", "time_to_quality", "single_pattern")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_numbers(text: str) -> list[float]:
    """An argparse type: a comma-separated list of positive numbers ("0.25,0.5,1")."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected numbers > 0, got {text!r}")
    return values
