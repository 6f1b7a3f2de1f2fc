"""Time-to-quality benchmark: SSIM and data R-factor against wall time, network-based methods
against rPIE from a flat object, on scans from another simulator and on the default data.

    ptycho benchmark time_to_quality [--families ring,inside,low_dose,default] [--epochs E] [--max-sweeps 30] [--threads 2] [--adapt-epochs 30]

(``python -m ptycho.benchmarks.time_to_quality`` runs the same).

Families. ``ring``, ``inside`` and ``low_dose`` come from the independent builder of the tests
(``tests/foreign_data.py``, which shares no code with ptycho: disc objects, a defocused annular
probe stored max-normalised, whole-pixel raster): a large defocused ring (24 px spot in 32 px
patterns), a probe inside the window (12 px spot), and the ring at 1e4 photons per pattern.
Each family has its own training scan (same probe, another object); the test scan has 22 x 22
= 484 positions. ``default`` is the `prepare:` simulation of params.yaml (its dataclass defaults).

Methods, each scored after every sweep (SSIM amplitude / phase against the truth with the
alignment of ``evaluate`` on one common region, and the data R-factor on the positions the
network can be scored on); the scoring time is left out of the wall times:

- ``network``: what `infer` returns (its default ``consistency_iterations``: each patch fitted to its
  own pattern); ``network-raw``: the network's patches as they are (``consistency_iterations`` 0), one run;
- ``rpie``: rPIE from a flat object (the `baseline:` settings), sweeps 1..max;
- ``network+rpie``: the network (``ptycho.inference.reconstruct`` as `infer` runs it, without
  the diagnostics `infer` adds to its stats; median of 3, at sweep 0), then rPIE sweeps from
  its object and calibrated probe, 1..max, the network's time included;
- ``refine``: what the `refine` stage does with ``engine: sweeps`` (``ptycho.iterative.refinement``: trial sweeps from the
  network and from flat, the lower data error goes on), the network's time and both trials
  included; its first point comes after the trial sweeps;
- ``adapted`` / ``adapted+rpie`` (``--adapt-epochs`` > 0, default 30): the network fine-tuned on the
  test scan's own patterns first (``infer.adapt_epochs``, ``ptycho.adaptation``), alone and then rPIE
  sweeps from it, the adaptation's time included;
- the unrolled family (``ptycho.nn.unrolled``, ``--unrolled-sweeps`` K > 0, default 15, the pipeline's
  model.unrolled_sweeps), trained on the family's training scan after the network (from the network's
  object and from flat; training time reported apart), scored after each of its K steps:
  ``network+schedule`` (the bundle's learned sweeps, learned steps and momenta: what `refine` runs
  from the network), ``flat+schedule`` (the same from a flat object, no network at inference) and
  ``network+unrolled`` (the same K with a residual CNN on the canvas after each sweep, trained here).

Training time is reported on its own (paid once per kind of sample and instrument). The summary
per family gives the two checks of issue 17: network + 5 sweeps (plain and ``refine``) against 5
rPIE sweeps (SSIM slack 0.01), and the first time each method reaches rPIE-30's SSIMs (slack
0.01) against rPIE-30's wall time. Writes a JSON report, a CSV of every point and one PNG.
Not a test: the figures depend on the machine and its load (recorded in the report).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ptycho import scoring, workflows
from ptycho.benchmarks import positive_int
from ptycho.bundle import load_bundle
from ptycho.benchmarks.sweeps import ssims
from ptycho.config import BaselineConfig, EvaluateConfig, InferConfig, ModelConfig, PrepareConfig, RefineConfig, TrainConfig
from ptycho.data import PtychoDataset
from ptycho.errors import ConfigError
from ptycho.inference import reconstruct
from ptycho.iterative.pie import PieRun
from ptycho.iterative.refinement import refine_scan
from ptycho.reconstruction import Reconstruction

FOREIGN_FAMILIES = {
    "ring": dict(spot_diameter_px=24.0, nphotons=1e6),
    "inside": dict(spot_diameter_px=12.0, nphotons=1e6),
    "low_dose": dict(spot_diameter_px=24.0, nphotons=1e4),
}
"""Options of ``foreign_data.build_scan`` per family (32 px patterns, 5 px raster step)."""
FAMILIES = (*FOREIGN_FAMILIES, "default")
METHODS = ("network", "network-raw", "rpie", "network+rpie", "refine", "adapted", "adapted+rpie", "network+unrolled", "network+schedule", "flat+schedule")
UNROLLED_METHODS = {"network+unrolled": (True, 16), "network+schedule": (True, 0), "flat+schedule": (False, 0)}
"""Unrolled methods: (start from the network, 16 = with the canvas CNNs of ``--cnn-channels`` / 0 = the bundle's schedule)."""
SLACK = 0.01
"""SSIM slack of the issue's checks."""


@dataclasses.dataclass(frozen=True)
class Point:
    method: str
    sweep: int
    seconds: float
    amplitude_ssim: float
    phase_ssim: float
    r_factor: float

    def reaches(self, amplitude_ssim: float, phase_ssim: float) -> bool:
        return self.amplitude_ssim >= amplitude_ssim - SLACK and self.phase_ssim >= phase_ssim - SLACK


def load_foreign_builder(path: str | Path):
    """The independent scan builder of the tests, loaded from its file (it is not part of the package by design)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"benchmark --foreign-builder: {path} not found (run from the repository root, or pass the path of tests/foreign_data.py)")
    spec = importlib.util.spec_from_file_location("foreign_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_dataset(arrays: dict) -> PtychoDataset:
    return PtychoDataset(
        amplitudes=arrays["diffraction"], xcoords=arrays["xcoords"], ycoords=arrays["ycoords"], probe=arrays["probeGuess"],
        object=arrays["objectGuess"], scan_index=np.arange(len(arrays["xcoords"])), metadata={},
    )


def family_scans(family: str, folder: Path, builder_path: str | Path) -> tuple[PtychoDataset, PtychoDataset]:
    """(training scan, test scan) of one family."""
    if family == "default":
        return workflows.prepare(PrepareConfig(), folder / "train.npz", folder / "test.npz", folder / "preview.png")
    builder = load_foreign_builder(builder_path)
    options = FOREIGN_FAMILIES[family]
    train = builder.build_scan(size=32, n_per_side=16, step_px=5, seed=1, **options)
    test = builder.build_scan(size=32, n_per_side=22, step_px=5, seed=2, **options)
    return as_dataset(train), as_dataset(test)


class Scorer:
    """SSIMs and data R-factor of a reconstruction of the test scan, on a region and positions fixed once."""

    def __init__(self, data: PtychoDataset, network: Reconstruction, baseline: BaselineConfig, config: EvaluateConfig) -> None:
        one_sweep = PieRun(data, baseline)
        one_sweep.sweep()
        self.region = scoring.common_region({"pinn": network, "baseline": one_sweep.result()}, config)
        self.truth = network.truth_window(data.object, "benchmark")
        self.keep = scoring.scorable_positions(network, data)
        self.data, self.config = data, config

    def __call__(self, reconstruction: Reconstruction) -> tuple[float, float, float]:
        amplitude, phase = ssims(reconstruction.object, self.truth, self.region, self.config)
        return amplitude, phase, scoring.data_consistency(reconstruction, self.data, self.keep)["r_factor"]


def pie_curve(method: str, data: PtychoDataset, settings: BaselineConfig, sweeps: int, score: Scorer,
              *, initial: Reconstruction | None = None, offset_s: float = 0.0) -> list[Point]:
    """``sweeps`` sweeps of a ``PieRun``, scored after each; seconds = offset + set-up + sweeps."""
    started = time.perf_counter()
    run = PieRun(data, settings, initial=initial)
    spent = time.perf_counter() - started
    points = []
    for sweep in range(1, sweeps + 1):
        started = time.perf_counter()
        run.sweep()
        spent += time.perf_counter() - started
        points.append(Point(method, sweep, offset_s + spent, *score(run.result())))
    return points


def refine_curve(data: PtychoDataset, network: Reconstruction, settings: RefineConfig, score: Scorer, *, offset_s: float) -> list[Point]:
    """``refine_scan`` scored after each sweep of the run it keeps (scoring time left out)."""
    points: list[Point] = []
    scoring_s = 0.0
    started = time.perf_counter()

    def on_sweep(run: PieRun) -> bool:
        nonlocal scoring_s
        reached = time.perf_counter()
        points.append(Point("refine", len(run.errors), offset_s + reached - started - scoring_s, *score(run.result())))
        scoring_s += time.perf_counter() - reached
        return False

    refine_scan(data, network, settings, on_sweep=on_sweep)
    return points


def first_reaching(points: list[Point], amplitude_ssim: float, phase_ssim: float) -> Point | None:
    return next((point for point in points if point.reaches(amplitude_ssim, phase_ssim)), None)


def at_sweep(points: list[Point], sweep: int) -> Point | None:
    return next((point for point in points if point.sweep == sweep), None)


def adapted_network(folder: Path, test: PtychoDataset, epochs: int) -> tuple[Reconstruction, float]:
    """(reconstruction, seconds) of the bundle fine-tuned on the test scan for ``epochs`` epochs
    (``infer.adapt_epochs``, ``ptycho.adaptation``), the adaptation's time included."""
    from ptycho.adaptation import adapt

    bundle = load_bundle(folder / "wts.h5.zip")
    started = time.perf_counter()
    adapt(bundle, test, InferConfig(adapt_epochs=epochs), 1)
    reconstruction = reconstruct(bundle, test, InferConfig(), folder / "wts.h5.zip")
    return reconstruction, time.perf_counter() - started


def unrolled_curves(bundle, train: PtychoDataset, test: PtychoDataset, network: Reconstruction, network_s: float, score: Scorer,
                    steps: int, seed: int, cnn_channels: int = 16) -> tuple[list[Point], dict]:
    """Score the unrolled methods (``UNROLLED_METHODS``): the bundle's learned schedule (trained by
    ``workflows.train``, model.unrolled_sweeps) and, trained here the same way, the same K with
    canvas CNNs of ``cnn_channels`` (0: left out); (points, {"cnn": training info})."""
    from ptycho.config import InferPrecision
    from ptycho.nn import unrolled

    schedule = bundle.diffraction_to_obj.unrolled
    scan_test = unrolled.CanvasScan(test, bundle.probe)
    trained, training = {0: schedule}, {}
    if cnn_channels:
        scan_train = unrolled.CanvasScan(train, bundle.probe)
        network_train = reconstruct(bundle, train, InferConfig(precision=InferPrecision.FP32), "the benchmark's bundle")
        torch.manual_seed(seed)
        with_cnn = unrolled.UnrolledSweeps(unrolled.UnrolledSettings(sweeps=schedule.settings.sweeps, hidden=cnn_channels))
        info = unrolled.train_unrolled(with_cnn, scan_train, [scan_train.start(network_train), scan_train.start(None)], steps=steps, seed=seed)
        trained[16] = with_cnn
        training["cnn"] = {key: value if key != "seconds" else round(value, 1) for key, value in info.items()}
    points: list[Point] = []
    for method, (from_network, hidden) in UNROLLED_METHODS.items():
        if hidden not in trained:
            continue
        offset_s = network_s if from_network else 0.0
        if from_network:
            points.append(Point(method, 0, network_s, *score(network)))
        scoring_s = 0.0
        started = time.perf_counter()

        def on_step(k: int, reconstruction: Reconstruction, error: float) -> None:
            nonlocal scoring_s
            reached = time.perf_counter()
            points.append(Point(method, k, offset_s + reached - started - scoring_s, *score(reconstruction)))
            scoring_s += time.perf_counter() - reached

        unrolled.reconstruct_unrolled(trained[hidden], scan_test, scan_test.start(network if from_network else None), on_step=on_step)
    return points, training


def run_family(family: str, folder: Path, *, epochs: int, max_sweeps: int, builder_path: str | Path, report_line: Callable[[str], None],
               adapt_epochs: int = 0, unrolled_sweeps: int = 0, unrolled_steps: int = 200, seed: int = 3, cnn_channels: int = 16) -> dict:
    """Train, infer and run every method on one family; returns its points and summary."""
    train, test = family_scans(family, folder, builder_path)
    started = time.perf_counter()
    trained = workflows.train(train, ModelConfig(unrolled_sweeps=unrolled_sweeps), TrainConfig(epochs=epochs, seed=seed, unrolled_steps=unrolled_steps),
                              folder / "wts.h5.zip", folder / "h.csv", folder / "m.json", folder / "ck")
    training_s = time.perf_counter() - started
    bundle = load_bundle(folder / "wts.h5.zip")
    infer_seconds = []
    for _ in range(3):  # as `infer` reconstructs, without its diagnostics (the twin scores are not part of the method)
        started = time.perf_counter()
        network = reconstruct(bundle, test, InferConfig(), folder / "wts.h5.zip")
        infer_seconds.append(time.perf_counter() - started)
    network_s = statistics.median(infer_seconds)
    started = time.perf_counter()
    raw = reconstruct(bundle, test, InferConfig(consistency_iterations=0), folder / "wts.h5.zip")
    raw_s = time.perf_counter() - started
    baseline = BaselineConfig()
    score = Scorer(test, network, baseline, EvaluateConfig())
    points = [Point("network", 0, network_s, *score(network)), Point("network-raw", 0, raw_s, *score(raw))]
    points += pie_curve("rpie", test, baseline, max_sweeps, score)
    points += [dataclasses.replace(points[0], method="network+rpie")]
    points += pie_curve("network+rpie", test, baseline, max_sweeps, score, initial=network, offset_s=network_s)
    refine_settings = RefineConfig(**{**dataclasses.asdict(baseline), "iterations": max_sweeps, "engine": "sweeps"})
    points += refine_curve(test, network, refine_settings, score, offset_s=network_s)
    if adapt_epochs > 0:
        adapted, adapted_s = adapted_network(folder, test, adapt_epochs)
        points += [Point("adapted", 0, adapted_s, *score(adapted)), Point("adapted+rpie", 0, adapted_s, *score(adapted))]
        points += pie_curve("adapted+rpie", test, baseline, max_sweeps, score, initial=adapted, offset_s=adapted_s)
    unrolled_training = {}
    if unrolled_sweeps > 0:
        unrolled_points, unrolled_training = unrolled_curves(bundle, train, test, network, network_s, score, unrolled_steps, seed, cnn_channels)
        unrolled_training["schedule"] = {key: value for key, value in trained.metrics.items() if key.startswith("unrolled_")}
        points += unrolled_points
    summary = summarise([p for p in points], baseline.iterations)
    if unrolled_training:
        summary["unrolled_training"] = unrolled_training
    summary.update({"n_patterns_train": train.n_patterns, "n_patterns_test": test.n_patterns, "pattern_px": test.pattern_size,
                    "training_s": round(training_s, 1), "epochs": epochs, "network_s": round(network_s, 3)})
    report_line(f"{family}: {json.dumps(summary)}")
    return {"summary": summary, "points": [dataclasses.asdict(point) for point in points]}


def summarise(points: list[Point], rpie_sweeps: int) -> dict:
    """The issue's two checks on one family's points."""
    curves = {method: [p for p in points if p.method == method] for method in METHODS}
    curves = {method: curve for method, curve in curves.items() if curve}
    rpie_full, rpie_5 = at_sweep(curves["rpie"], rpie_sweeps), at_sweep(curves["rpie"], 5)
    summary: dict = {"rpie_30": dataclasses.asdict(rpie_full), "rpie_5": dataclasses.asdict(rpie_5), "network": dataclasses.asdict(curves["network"][0])}
    if "network-raw" in curves:
        summary["network-raw"] = dataclasses.asdict(curves["network-raw"][0])
    for method in [method for method in ("network+rpie", "refine", "adapted+rpie", *UNROLLED_METHODS) if method in curves]:
        five = at_sweep(curves[method], 5)
        if five is None:
            continue
        summary[f"{method}_5"] = dataclasses.asdict(five)
        summary[f"{method}_5_at_least_rpie_5"] = bool(five.reaches(rpie_5.amplitude_ssim, rpie_5.phase_ssim))
    reached = {}
    if "adapted" in curves:
        summary["adapted"] = dataclasses.asdict(curves["adapted"][0])
    for method in curves:
        point = first_reaching(curves[method], rpie_full.amplitude_ssim, rpie_full.phase_ssim)
        reached[method] = None if point is None else {"sweep": point.sweep, "seconds": round(point.seconds, 4)}
    summary["first_reaching_rpie_30"] = reached
    summary["network_based_faster_than_rpie_30"] = any(
        reached[method] is not None and reached[method]["seconds"] < rpie_full.seconds for method in curves if method != "rpie"
    )
    return summary


def figure(report: dict, path: str | Path) -> None:
    """One PNG: columns = families; rows = amplitude SSIM, phase SSIM, data R-factor against wall time."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    families = list(report["families"])
    fig = Figure(figsize=(3.6 * len(families), 8.4), constrained_layout=True)
    axes = fig.subplots(3, len(families), squeeze=False)
    styles = {"rpie": ("k", "rPIE from flat"), "network+rpie": ("tab:blue", "network + rPIE"), "refine": ("tab:orange", "refine (start by data error)"),
              "network": ("tab:red", "network"), "network-raw": ("tab:pink", "network, no single-pattern fit"), "adapted+rpie": ("tab:green", "adapted network + rPIE"),
              "adapted": ("tab:green", "adapted network"), "network+unrolled": ("tab:purple", "network + unrolled (CNN)"),
              "network+schedule": ("tab:brown", "network + learned schedule"), "flat+schedule": ("tab:gray", "flat + learned schedule")}
    for column, family in enumerate(families):
        points = report["families"][family]["points"]
        for row, (key, label) in enumerate((("amplitude_ssim", "amplitude SSIM"), ("phase_ssim", "phase SSIM"), ("r_factor", "data R-factor"))):
            axis = axes[row, column]
            for method, (colour, name) in styles.items():
                curve = [p for p in points if p["method"] == method]
                axis.plot([p["seconds"] for p in curve], [p[key] for p in curve], "o" if method in ("network", "network-raw", "adapted") else "-",
                          color=colour, label=name, markersize=4, linewidth=1.2)
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
            axis.set_xlabel("wall time, s")
            axis.set_ylabel(label)
            if row == 0:
                axis.set_title(family)
            if key == "r_factor":
                axis.set_yscale("log")
                axis.yaxis.set_minor_formatter(NullFormatter())
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"time to quality ({report['threads']} threads, load {report['load_average_1min_start']:.2f} at start)")
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    """``ptycho benchmark time_to_quality``: writes ``--output`` (JSON) and the CSV and PNG beside it."""
    parser = argparse.ArgumentParser(prog="ptycho benchmark time_to_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--epochs", type=positive_int, default=20, help="training epochs per family")
    parser.add_argument("--max-sweeps", type=positive_int, default=30, help="sweeps per curve (>= 30: rPIE-30 is the reference)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--foreign-builder", default="tests/foreign_data.py", help="the independent scan builder of the tests")
    parser.add_argument("--adapt-epochs", type=int, default=30, help="test-time adaptation epochs (infer.adapt_epochs) of the adapted method; 0 = none")
    parser.add_argument("--unrolled-sweeps", type=int, default=15, help="K of the unrolled methods (ptycho.nn.unrolled); 0 = none")
    parser.add_argument("--cnn-channels", type=int, default=16, help="channels of the network+unrolled method's canvas CNNs; 0 = leave that method out")
    parser.add_argument("--unrolled-steps", type=positive_int, default=200, help="training steps of each unrolled model")
    parser.add_argument("--seed", type=int, default=3, help="train.seed of the network and of the learned sweeps")
    parser.add_argument("--output", default="results/time_to_quality.json")
    args = parser.parse_args(argv)
    families = args.families.split(",")
    unknown = [family for family in families if family not in FAMILIES]
    if unknown:
        raise ConfigError(f"benchmark --families: unknown {unknown}; known: {', '.join(FAMILIES)}")
    if args.max_sweeps < BaselineConfig().iterations:
        raise ConfigError(f"benchmark --max-sweeps: must be >= {BaselineConfig().iterations} (rPIE-30 is the reference), got {args.max_sweeps}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    report = {"threads": args.threads, "load_average_1min_start": os.getloadavg()[0], "epochs": args.epochs,
              "adapt_epochs": args.adapt_epochs, "unrolled_sweeps": args.unrolled_sweeps, "seed": args.seed, "families": {}}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for family in families:
                folder = Path(scratch) / family
                folder.mkdir()
                report["families"][family] = run_family(
                    family, folder, epochs=args.epochs, max_sweeps=args.max_sweeps, builder_path=args.foreign_builder, report_line=print,
                    adapt_epochs=args.adapt_epochs, unrolled_sweeps=args.unrolled_sweeps, unrolled_steps=args.unrolled_steps, seed=args.seed,
                    cnn_channels=args.cnn_channels,
                )
    finally:
        torch.set_num_threads(threads)
    report["load_average_1min_end"] = os.getloadavg()[0]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=["family", *[field.name for field in dataclasses.fields(Point)]])
    writer.writeheader()
    for family, result in report["families"].items():
        for point in result["points"]:
            writer.writerow({"family": family, **point})
    output.with_suffix(".csv").write_text(rows.getvalue())
    figure(report, output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
