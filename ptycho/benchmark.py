"""Benchmark: the network against the iterative baseline on the prepared test scan.

Run after `dvc repro` (it reads the prepared test data, the bundle and params.yaml):

    python -m ptycho.benchmark [--repeats 5] [--max-iterations 300]

It reports the median network inference time over ``--repeats`` runs, and for ePIE and rPIE
(the `baseline:` section's batch size and steps) the number of sweeps and the median time
they need to reach the network's amplitude and phase SSIM on one common scanned region, and
the ratio of those times. Figures go to stdout and `results/benchmark.json`. Not a test:
timings depend on the machine; run it on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ptycho import config, metrics
from ptycho.baseline import run_baseline
from ptycho.bundle import load_bundle
from ptycho.config import Algorithm
from ptycho.data import load_dataset
from ptycho.inference import reconstruct
from ptycho.workflows import common_region


def _ssims(obj: np.ndarray, truth: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    compared, _ = metrics.compare(obj, truth, region.astype(np.float32), fraction=0.5, margin_px=0)
    return compared["amplitude.ssim"], compared["phase.ssim"]


def _iterative_run(data, settings, truth, region, target, max_iterations):
    """Sweeps and seconds (evaluation excluded) until both SSIMs reach the target, or None."""
    state = {"evaluation_s": 0.0, "reached": None, "last": (float("nan"), float("nan"))}

    def on_iteration(sweeps: int, obj) -> bool:
        started = time.perf_counter()
        state["last"] = _ssims(obj.numpy(), truth, region)
        state["evaluation_s"] += time.perf_counter() - started
        if state["last"][0] >= target[0] and state["last"][1] >= target[1]:
            state["reached"] = sweeps
            return True
        return False

    started = time.perf_counter()
    run_baseline(data, dataclasses.replace(settings, iterations=max_iterations), progress=False, on_iteration=on_iteration)
    seconds = time.perf_counter() - started - state["evaluation_s"]
    return state["reached"], seconds, state["last"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptycho.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--test-data", default="data/prepared/test.npz")
    parser.add_argument("--bundle", default="models/wts.h5.zip")
    parser.add_argument("--output", default="results/benchmark.json")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing; the median is reported")
    parser.add_argument("--max-iterations", type=int, default=300)
    args = parser.parse_args(argv)

    data = load_dataset(args.test_data)
    if data.object is None:
        parser.error(f"{args.test_data} has no ground-truth object: nothing to compare SSIM with")
    infer_config = config.load_section(args.params, "infer")
    baseline_config = config.load_section(args.params, "baseline")
    evaluate_config = config.load_section(args.params, "evaluate")
    bundle = load_bundle(args.bundle)

    inference_seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        network = reconstruct(bundle, data, infer_config, args.bundle)
        inference_seconds.append(time.perf_counter() - started)
    network_s = statistics.median(inference_seconds)

    one_sweep, _ = run_baseline(data, dataclasses.replace(baseline_config, iterations=1), progress=False)
    region = common_region({"pinn": network, "baseline": one_sweep}, evaluate_config)
    truth = network.truth_window(data.object, args.test_data)
    target = _ssims(network.object, truth, region)
    report = {
        "n_patterns": data.n_patterns,
        "network": {"inference_s_median": round(network_s, 4), "amplitude_ssim": target[0], "phase_ssim": target[1]},
    }
    print(f"network: inference {network_s:.3f} s (median of {args.repeats}), amplitude SSIM {target[0]:.3f}, phase SSIM {target[1]:.3f}")
    for algorithm in (Algorithm.EPIE, Algorithm.RPIE):
        settings = dataclasses.replace(baseline_config, algorithm=algorithm)
        runs = [_iterative_run(data, settings, truth, region, target, args.max_iterations) for _ in range(args.repeats if algorithm is Algorithm.EPIE else 1)]
        sweeps, _, last = runs[0]
        seconds = statistics.median(run[1] for run in runs)
        entry = {"batch_size": settings.batch_size, "sweeps_to_match": sweeps, "seconds_to_match_median": round(seconds, 3),
                 "time_ratio_to_network": round(seconds / network_s, 3), "ssim_at_stop": list(last)}
        report[algorithm.value] = entry
        reached = f"{sweeps} sweeps" if sweeps else f"not within {args.max_iterations} sweeps"
        print(f"{algorithm.value} (batch {settings.batch_size}): {reached}, {seconds:.2f} s (median of {len(runs)}), "
              f"{seconds / network_s:.2f}x the network's inference time; SSIM at stop {last[0]:.3f} / {last[1]:.3f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
