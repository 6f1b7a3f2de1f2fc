"""Timing benchmark: the network against the iterative engine on the pipeline's prepared test scan,
and the per-sweep scoring of an iterative run that it shares with ``ptycho.scenarios``.

Run after `dvc repro` (it reads the prepared test data, the bundle and params.yaml):

    ptycho benchmark timing [--repeats 5] [--max-iterations 300]

(``python -m ptycho.benchmark`` runs the same). It reports the median network inference time over
``--repeats`` runs, and for ePIE and rPIE (the `baseline:` section's batch size and steps) the number
of sweeps and the median time they need to reach the network's amplitude and phase SSIM on one common
scanned region, and the ratio of those times. Not a test: timings depend on the machine; run it on an
otherwise idle one.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ptycho import metrics
from ptycho.iterative.pie import run_pie
from ptycho.bundle import load_bundle
from ptycho.config import Algorithm, BaselineConfig, EvaluateConfig, InferConfig
from ptycho.data import PtychoDataset, load_dataset
from ptycho.errors import DataError
from ptycho.inference import reconstruct
from ptycho.reconstruction import Reconstruction
from ptycho.scoring import common_region


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


def timing(
    test_data_path: str | Path, bundle_path: str | Path, infer_config: InferConfig, baseline_config: BaselineConfig,
    evaluate_config: EvaluateConfig, *, repeats: int, max_iterations: int, report_line: Callable[[str], None] = print,
) -> dict:
    """The timing benchmark (module docstring); returns the report and gives one line per method to ``report_line``."""
    data = load_dataset(test_data_path)
    if data.object is None:
        raise DataError(f"{test_data_path}: key 'objectGuess': no ground-truth object, nothing to compare SSIM with")
    bundle = load_bundle(bundle_path)
    inference_seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        network = reconstruct(bundle, data, infer_config, bundle_path)
        inference_seconds.append(time.perf_counter() - started)
    network_s = statistics.median(inference_seconds)

    one_sweep, _ = run_pie(data, dataclasses.replace(baseline_config, iterations=1), progress=False)
    region = common_region({"pinn": network, "baseline": one_sweep}, evaluate_config)
    truth = network.truth_window(data.object, str(test_data_path))
    target = ssims(network.object, truth, region, evaluate_config)
    report = {
        "n_patterns": data.n_patterns,
        "network": {"inference_s_median": round(network_s, 4), "amplitude_ssim": target[0], "phase_ssim": target[1]},
    }
    report_line(f"network: inference {network_s:.3f} s (median of {repeats}), amplitude SSIM {target[0]:.3f}, phase SSIM {target[1]:.3f}")
    for algorithm in (Algorithm.EPIE, Algorithm.RPIE):
        settings = dataclasses.replace(baseline_config, algorithm=algorithm, iterations=max_iterations)
        runs = []
        for _ in range(repeats if algorithm is Algorithm.EPIE else 1):
            curve = sweep_curve(data, settings, truth, region, evaluate_config, stop=lambda point: point.reaches(*target))
            runs.append((first_reaching(curve, *target), curve[-1]))
        reached, last = runs[0]
        seconds = statistics.median(run[1].seconds for run in runs)
        entry = {"batch_size": settings.batch_size, "sweeps_to_match": reached.sweep if reached else None,
                 "seconds_to_match_median": round(seconds, 3), "time_ratio_to_network": round(seconds / network_s, 3),
                 "ssim_at_stop": [last.amplitude_ssim, last.phase_ssim]}
        report[algorithm.value] = entry
        sweeps = f"{reached.sweep} sweeps" if reached else f"not within {max_iterations} sweeps"
        report_line(f"{algorithm.value} (batch {settings.batch_size}): {sweeps}, {seconds:.2f} s (median of {len(runs)}), "
                    f"{seconds / network_s:.2f}x the network's inference time; SSIM at stop {last.amplitude_ssim:.3f} / {last.phase_ssim:.3f}")
    return report


if __name__ == "__main__":
    from ptycho import cli

    raise SystemExit(cli.main(["benchmark", "timing", *sys.argv[1:]]))
