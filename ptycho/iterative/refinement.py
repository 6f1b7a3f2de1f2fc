"""A refinement that cannot do harm: ``refine`` chooses its start and its stop by the data error.

Start (``refine.start``). ``network`` refines the network's reconstruction (object and calibrated
probe), ``flat`` starts as ``baseline`` does (|O| = 1, the data's calibrated probe), and ``auto``
runs ``trial_sweeps`` sweeps from each and goes on with the run whose last trial sweep has the
lower data error (a tie keeps the network). The other run is dropped; its sweeps are the price of
the choice. Why after sweeps and not by the error of the starts themselves: on a foreign scan
(tests/foreign_data.py, probe inside the window, a 10-epoch network) the network's object
explained the patterns better than a flat one during the first sweep (error 0.185 against 0.231),
yet five sweeps from it ended worse (0.048 against 0.041, phase SSIM 0.57 against 0.69); from the
second sweep on, the flat run's error was the lower one, on each of three foreign scan families.
Two trial sweeps were not enough either: with another training seed (the time-to-quality benchmark,
``inside``, train.seed 2) the network's run had the lower error after 2 sweeps and the higher after 5
(phase SSIM 0.23 against 0.63), so the default is 5 trial sweeps: for a 5-sweep refinement that is
the choice of the better final result, at twice the sweeps.

Stop (``refine.iterations``). A number of sweeps (trial sweeps included), or ``auto``: stop after
the first sweep that lowers the data error by less than ``tolerance`` of its previous value (or
raises it), and at ``max_iterations`` sweeps at most.

The data error is the engine's own (``PieRun.errors``: the normalised amplitude error of each
sweep, computed during the sweep), so the choice costs no extra forward pass. With ``auto`` the
run that goes on is the very run the trial started, so where the network is chosen the output
is byte-identical to a fixed-count refinement from the network.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ptycho.config import AUTO, RefineConfig, RefineStart
from ptycho.data import PtychoDataset
from ptycho.errors import ConfigError
from ptycho.iterative.pie import PieRun
from ptycho.reconstruction import Reconstruction


@dataclasses.dataclass(frozen=True)
class Refinement:
    """What ``refine_scan`` did: the reconstruction, the data error of each sweep of the run kept,
    the start it used, the trial errors of both starts (``start: auto``; else empty), and why it stopped."""

    reconstruction: Reconstruction
    errors: list[float]
    start: RefineStart
    trial_errors: dict[str, float]
    stop_reason: str

    def stats(self) -> dict:
        """The keys ``refine`` adds to its stats JSON."""
        return {"start": self.start.value, "trial_errors": self.trial_errors, "iterations": len(self.errors), "stop_reason": self.stop_reason}


def plateaued(errors: list[float], tolerance: float) -> bool:
    """True when the last sweep lowered the data error by less than ``tolerance`` of its previous value (or raised it)."""
    return len(errors) >= 2 and errors[-2] - errors[-1] < tolerance * errors[-2]


def refine_scan(
    data: PtychoDataset, network: Reconstruction, settings: RefineConfig,
    *, on_sweep: Callable[[PieRun], bool] | None = None,
) -> Refinement:
    """Refine the network's reconstruction of ``data`` (module docstring: start and stop).

    ``on_sweep(run)``, if given, sees the run kept (``PieRun``: not to be modified) after each of
    its sweeps from the choice on (the first call comes after the trial sweeps) and ends the run
    by returning True (for benchmarks).
    """
    if not isinstance(settings, RefineConfig):
        raise ConfigError(f"refine: expected RefineConfig, got {type(settings).__name__}")
    auto = settings.iterations == AUTO
    limit = settings.max_iterations if auto else settings.iterations
    trial_errors: dict[str, float] = {}
    match settings.start:
        case RefineStart.NETWORK:
            run, start = PieRun(data, settings, initial=network), RefineStart.NETWORK
        case RefineStart.FLAT:
            run, start = PieRun(data, settings), RefineStart.FLAT
        case RefineStart.AUTO:
            runs = {RefineStart.NETWORK: PieRun(data, settings, initial=network), RefineStart.FLAT: PieRun(data, settings)}
            for candidate in runs.values():
                for _ in range(min(settings.trial_sweeps, limit)):
                    candidate.sweep()
            trial_errors = {key.value: candidate.errors[-1] for key, candidate in runs.items()}
            start = RefineStart.FLAT if trial_errors["flat"] < trial_errors["network"] else RefineStart.NETWORK
            run = runs[start]
        case _:
            raise ConfigError(f"refine.start: allowed values are {[s.value for s in RefineStart]}; got {settings.start!r}")

    stop_reason = "max_iterations" if auto else "iterations"
    while True:
        if run.errors and on_sweep is not None and on_sweep(run):
            stop_reason = "stopped by the caller"
            break
        if auto and plateaued(run.errors, settings.tolerance):
            stop_reason = f"plateau: the last sweep lowered the data error by less than {settings.tolerance:g} of it"
            break
        if len(run.errors) >= limit:
            break
        run.sweep()
    reconstruction = dataclasses.replace(run.result(), method=f"refined-{settings.algorithm.value}")
    return Refinement(reconstruction, list(run.errors), start, trial_errors, stop_reason)
