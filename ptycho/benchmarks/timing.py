"""Timing benchmark: the network against the iterative engine on the pipeline's prepared test scan.

Run after `dvc repro` (it reads the prepared test data, the bundle and params.yaml):

    ptycho benchmark timing [--repeats 5] [--max-iterations 300]

(``python -m ptycho.benchmarks.timing`` runs the same). It reports the median network inference time over
``--repeats`` runs, and for ePIE and rPIE (the `baseline:` section's batch size and steps) the number
of sweeps and the median time they need to reach the network's amplitude and phase SSIM on one common
scanned region, and the ratio of those times. Not a test: timings depend on the machine; run it on an
otherwise idle one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from ptycho import config
from ptycho.benchmarks import positive_int
from ptycho.benchmarks.sweeps import first_reaching, ssims, sweep_curve
from ptycho.bundle import load_bundle
from ptycho.config import Algorithm, BaselineConfig, EvaluateConfig, InferConfig
from ptycho.data import load_dataset
from ptycho.errors import DataError
from ptycho.inference import reconstruct
from ptycho.iterative.pie import run_pie
from ptycho.scoring import common_region


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


def main(argv: list[str] | None = None) -> int:
    """``ptycho benchmark timing`` and ``python -m ptycho.benchmarks.timing``: writes ``--output`` (JSON)."""
    parser = argparse.ArgumentParser(prog="ptycho benchmark timing", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (sections infer, baseline, evaluate)")
    parser.add_argument("--test-data", default="data/prepared/test.npz")
    parser.add_argument("--bundle", default="models/wts.h5.zip")
    parser.add_argument("--output", default="results/benchmark.json")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs per timing; the median is reported")
    parser.add_argument("--max-iterations", type=positive_int, default=300)
    args = parser.parse_args(argv)
    report = timing(
        args.test_data, args.bundle, config.load_section(args.params, "infer"), config.load_section(args.params, "baseline"),
        config.load_section(args.params, "evaluate"), repeats=args.repeats, max_iterations=args.max_iterations,
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
