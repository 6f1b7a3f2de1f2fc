"""Scoring an iterative run sweep by sweep, against the truth: what the timing and the scenario
benchmarks share."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from ptycho import metrics
from ptycho.config import BaselineConfig, EvaluateConfig
from ptycho.data import PtychoDataset
from ptycho.iterative.pie import run_pie
from ptycho.reconstruction import Reconstruction


def ssims(obj: np.ndarray, truth: np.ndarray, region: np.ndarray, config: EvaluateConfig) -> tuple[float, float]:
    """(amplitude SSIM, phase SSIM) of ``obj`` against ``truth`` on ``region``, aligned as ``workflows.evaluate`` aligns."""
    compared, _ = metrics.compare(
        obj, truth, region.astype(np.float32), fraction=0.5, margin_px=0,
        remove_phase_ramp=config.remove_phase_ramp, register=config.register,
    )
    return compared["amplitude.ssim"], compared["phase.ssim"]


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """The state of an iterative run after ``sweep`` sweeps: its SSIMs and the run's wall time so far
    (start of ``run_pie`` to the end of this sweep, the scoring of earlier sweeps excluded)."""

    sweep: int
    amplitude_ssim: float
    phase_ssim: float
    seconds: float

    def reaches(self, amplitude_ssim: float, phase_ssim: float) -> bool:
        return self.amplitude_ssim >= amplitude_ssim and self.phase_ssim >= phase_ssim


def sweep_curve(
    data: PtychoDataset, settings: BaselineConfig, truth: np.ndarray, region: np.ndarray, config: EvaluateConfig,
    *, initial: Reconstruction | None = None, stop: Callable[[SweepPoint], bool] | None = None,
) -> list[SweepPoint]:
    """Run ``settings.iterations`` sweeps of ``run_pie`` (from a flat object, or refining
    ``initial``) and score the object after every sweep; ``stop(point)`` returning True ends the run."""
    points: list[SweepPoint] = []
    scoring_s = 0.0
    started = time.perf_counter()

    def on_iteration(sweeps: int, obj) -> bool:
        nonlocal scoring_s
        reached = time.perf_counter()
        amplitude, phase = ssims(obj.numpy(), truth, region, config)
        points.append(SweepPoint(sweeps, amplitude, phase, reached - started - scoring_s))
        scoring_s += time.perf_counter() - reached
        return stop is not None and stop(points[-1])

    run_pie(data, settings, progress=False, on_iteration=on_iteration, initial=initial)
    return points


def first_reaching(curve: list[SweepPoint], amplitude_ssim: float, phase_ssim: float) -> SweepPoint | None:
    """The first point of ``curve`` with both SSIMs at or above the targets, or None."""
    return next((point for point in curve if point.reaches(amplitude_ssim, phase_ssim)), None)
