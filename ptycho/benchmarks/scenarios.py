"""Scenario benchmark: network, network + refinement and rPIE over a grid of scan overlap x dose.

    ptycho benchmark scenarios [--size small|default] [--epochs E] [--refine-sweeps k]

(``python -m ptycho.benchmarks.scenarios`` runs the same).

For each scenario (scan step = a fraction of the probe diameter, mean photons per pattern) the
pipeline's own workflow functions run in a folder of their own: ``workflows.prepare`` simulates a
training and a test scan, ``train`` fits the network, ``infer`` reconstructs the test scan,
``refine`` runs k sweeps (of its ``engine``: the bundle's learned sweeps by default, k = their
number with ``iterations: auto``) from the network's reconstruction, ``baseline`` runs rPIE from a flat
object with the `baseline:` settings, and ``evaluate`` scores all three on one common region
(SSIM against the truth, data R-factor on the patterns every method covers).

Two iterative runs are then repeated with the object scored after every sweep
(``ptycho.benchmarks.sweeps.sweep_curve``, the scoring time excluded from the wall times): rPIE from a flat
object up to ``max_sweeps`` sweeps, and plain rPIE sweeps from the network's reconstruction up to the
baseline's sweep count (the ``refine_to_match_rpie`` curve: the plain engine, whatever refine.engine says). They give the fair speed comparison, how many sweeps and seconds rPIE needs
to reach the SSIM of network + refinement, and how many refinement sweeps reach the SSIM of rPIE at
its configured sweep count, and rPIE's best SSIM over the sweeps it ran (at low dose more sweeps can
fit the noise). Training time is reported on its own: it is paid once per kind of sample and
instrument, not per scan. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ptycho import config, scoring, workflows
from ptycho.benchmarks import positive_int, positive_numbers
from ptycho.benchmarks.sweeps import SweepPoint, first_reaching, sweep_curve
from ptycho.config import (
    BaselineConfig, EvaluateConfig, InferConfig, ModelConfig, PrepareConfig, RefineConfig, Source, TrainConfig, as_enum,
)
from ptycho.errors import ConfigError
from ptycho.reconstruction import load_reconstruction

OVERLAPS = (0.25, 0.5, 1.0)
"""Scan steps of the grid, as fractions of the probe diameter (0.25: dense, 1.0: sparse)."""
DOSES = (1e6, 1e4, 1e3)
"""Mean photons per pattern of the grid."""


class Size(str, enum.Enum):
    SMALL = "small"  # the params.yaml simulation with every length halved (N, objects, probe, features, jitter, margin)
    DEFAULT = "default"  # the params.yaml simulation as it is


def sized(size: Size | str, prepare: PrepareConfig, evaluate: EvaluateConfig) -> tuple[PrepareConfig, EvaluateConfig]:
    """The simulation and evaluation settings at ``size``; always a simulation (the grid needs a truth).

    small halves every length, so a scan has the same number of patterns at the same overlap with
    a quarter of the pixels per pattern (the default data, N = 64 with a 16 px probe, become N = 32
    with an 8 px probe)."""
    prepare = dataclasses.replace(prepare, source=Source.SIMULATE, train_file="", test_file="")
    match as_enum(Size, size, "benchmark --size"):
        case Size.DEFAULT:
            return prepare, evaluate
        case Size.SMALL:
            half = dataclasses.replace(
                prepare, N=prepare.N // 2, train_object_px=prepare.train_object_px // 2, test_object_px=prepare.test_object_px // 2,
                probe_diameter_px=prepare.probe_diameter_px / 2, feature_px=prepare.feature_px / 2, jitter_px=prepare.jitter_px / 2,
                detector_crop_px=0,  # halving is already the coarser sampling; an auto crop would halve it again
            )
            return half, dataclasses.replace(evaluate, margin_px=evaluate.margin_px // 2)
        case other:
            raise ConfigError(f"benchmark --size: {other!r} has no settings")


@dataclasses.dataclass(frozen=True)
class Scenario:
    step_fraction: float  # scan step / probe diameter
    nphotons: float  # mean photons per pattern

    def __post_init__(self) -> None:
        if not (self.step_fraction > 0 and self.nphotons > 0):
            raise ConfigError(f"benchmark scenario: step fraction and photons must be > 0, got {self.step_fraction}, {self.nphotons}")

    @property
    def name(self) -> str:
        return f"step{self.step_fraction:g}x_{self.nphotons:.0e}".replace("+", "")

    def prepare_config(self, base: PrepareConfig) -> PrepareConfig:
        return dataclasses.replace(base, step_px=self.step_fraction * base.probe_diameter_px, nphotons=self.nphotons)


def grid(overlaps: tuple[float, ...] = OVERLAPS, doses: tuple[float, ...] = DOSES) -> list[Scenario]:
    """Every overlap with every dose, overlap-major."""
    return [Scenario(step, dose) for step in overlaps for dose in doses]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one scenario run needs besides its step and dose."""

    prepare: PrepareConfig  # the simulation; step_px and nphotons are set per scenario
    model: ModelConfig
    train: TrainConfig
    infer: InferConfig
    refine: RefineConfig
    baseline: BaselineConfig
    evaluate: EvaluateConfig
    max_sweeps: int = 100  # rPIE from a flat object is scored per sweep up to this many sweeps

    def __post_init__(self) -> None:
        if self.max_sweeps < self.baseline.iterations:
            raise ConfigError(f"benchmark --max-sweeps: must be >= baseline.iterations = {self.baseline.iterations}, got {self.max_sweeps}")


def _point(point: SweepPoint | None, extra_s: float = 0.0) -> dict | None:
    if point is None:
        return None
    return {"sweeps": point.sweep, "seconds": round(point.seconds + extra_s, 3),
            "amplitude_ssim": round(point.amplitude_ssim, 4), "phase_ssim": round(point.phase_ssim, 4)}


def run_scenario(scenario: Scenario, settings: Settings, folder: str | Path) -> dict:
    """One scenario through prepare, train, infer, refine, baseline and evaluate in ``folder``, plus
    the two per-sweep runs (module docstring). Returns the scenario's JSON-ready record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    prepare = scenario.prepare_config(settings.prepare)
    train, test = workflows.prepare(prepare, folder / "train.npz", folder / "test.npz", folder / "preview.png")
    summary = workflows.train(
        train, settings.model, settings.train, folder / "wts.h5.zip", folder / "history.csv",
        folder / "train_metrics.json", folder / "checkpoints",
    )
    network = workflows.infer(test, folder / "wts.h5.zip", settings.infer, folder / "reconstruction.npz",
                              folder / "reconstruction.png", folder / "infer_stats.json")
    workflows.refine(test, folder / "reconstruction.npz", folder / "infer_stats.json", settings.refine, folder / "refined.npz",
                     folder / "refine_history.csv", folder / "refine_stats.json", folder / "refined.png", folder / "wts.h5.zip")
    workflows.baseline(test, settings.baseline, folder / "baseline.npz", folder / "baseline_history.csv",
                       folder / "baseline_stats.json", folder / "baseline.png")
    paths = {method: folder / f"{stem}.npz" for method, stem in (("pinn", "reconstruction"), ("refined", "refined"), ("baseline", "baseline"))}
    stats = {method: folder / f"{stem}_stats.json" for method, stem in (("pinn", "infer"), ("refined", "refine"), ("baseline", "baseline"))}
    report = workflows.evaluate(test, paths, stats, settings.evaluate, folder / "metrics.json", folder / "frc.csv", folder / "comparison.png")

    # Per-sweep runs, scored on the region and against the truth window that evaluate used.
    region = scoring.common_region({method: load_reconstruction(path) for method, path in paths.items()}, settings.evaluate)
    truth = network.truth_window(test.object, str(folder / "test.npz"))
    refined, rpie = report["refined"], report["baseline"]
    rpie_curve = sweep_curve(test, dataclasses.replace(settings.baseline, iterations=settings.max_sweeps), truth, region, settings.evaluate)
    refine_curve = sweep_curve(
        test, dataclasses.replace(settings.refine, iterations=settings.baseline.iterations), truth, region, settings.evaluate,
        initial=network, stop=lambda point: point.reaches(rpie["amplitude.ssim"], rpie["phase.ssim"]),
    )
    best = max(rpie_curve, key=lambda point: point.amplitude_ssim + point.phase_ssim)
    refine_sweeps = json.loads((folder / "refine_stats.json").read_text())["iterations"]  # refine.iterations may be auto
    network_s = report["pinn"]["wall_time_s"]
    keys = ("amplitude.ssim", "phase.ssim", "amplitude.psnr", "phase.psnr", "frc.resolution_px_0.5", "data.r_factor", "twin.fraction", "twin.blend", "wall_time_s")
    return {
        "scenario": scenario.name,
        "step_fraction": scenario.step_fraction,
        "step_px": prepare.step_px,
        "nphotons": scenario.nphotons,
        "n_train_patterns": train.n_patterns,
        "n_test_patterns": test.n_patterns,
        "train": {"wall_time_s": summary.metrics["wall_time_s"], "epochs_run": summary.metrics["epochs_run"]},
        **{method: {key: report[method][key] for key in keys} for method in ("pinn", "refined", "baseline")},
        "refine_sweeps": refine_sweeps,
        "refine_engine": settings.refine.engine.value,
        "baseline_sweeps": settings.baseline.iterations,
        "rpie_best": _point(best),
        "rpie_at_refine_sweeps": _point(rpie_curve[min(refine_sweeps, len(rpie_curve)) - 1]),
        "rpie_to_match_refined": _point(first_reaching(rpie_curve, refined["amplitude.ssim"], refined["phase.ssim"])),
        "rpie_to_match_network": _point(first_reaching(rpie_curve, report["pinn"]["amplitude.ssim"], report["pinn"]["phase.ssim"])),
        # network inference included: the seconds are what the hybrid costs from diffraction to object
        "refine_to_match_rpie": _point(first_reaching(refine_curve, rpie["amplitude.ssim"], rpie["phase.ssim"]), extra_s=network_s),
        "rpie_curve": [[p.sweep, round(p.amplitude_ssim, 4), round(p.phase_ssim, 4), round(p.seconds, 3)] for p in rpie_curve],
        "wall_time_s": round(time.perf_counter() - started, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def run_grid(
    scenarios: list[Scenario], settings: Settings, folder: str | Path, *, on_result: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """Every scenario in ``folder/<scenario name>``, with ``settings.train.num_threads`` torch threads for
    every method, not only for training (the thread count in use before is restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(settings.train.num_threads)
    records = []
    try:
        for scenario in scenarios:
            records.append(run_scenario(scenario, settings, Path(folder) / scenario.name))
            on_result(records[-1])
    finally:
        torch.set_num_threads(before)
    return records


def settings_record(settings: Settings) -> dict:
    """The settings as JSON-ready sections (enums as their values)."""
    return json.loads(json.dumps({field.name: (dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
                                  for field in dataclasses.fields(settings) for value in [getattr(settings, field.name)]}, default=str))


def to_json(report: dict) -> str:
    """The report as indented JSON with every innermost list (a curve's row) on one line."""
    text = json.dumps(report, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda match: "[" + re.sub(r"\s+", " ", match.group(1)) + "]", text) + "\n"


def _pair(record: dict, method: str, bold: tuple[bool, bool] = (False, False)) -> str:
    values = [f"{record[method][key]:.3f}" for key in ("amplitude.ssim", "phase.ssim")]
    return " / ".join(f"**{value}**" if strong else value for value, strong in zip(values, bold))


def _reached(point: dict | None, limit: int) -> str:
    return f"{point['sweeps']} ({point['seconds']:.2f} s)" if point else f"not in {limit}"


def markdown_tables(records: list[dict]) -> str:
    """Quality and speed tables of the grid (SSIM as amplitude / phase; the best of the three methods in bold)."""
    if not records:
        return ""
    k, sweeps = records[0]["refine_sweeps"], records[0]["baseline_sweeps"]
    limit = records[0]["rpie_curve"][-1][0] if records[0]["rpie_curve"] else 0
    quality = [
        f"| step (x probe diameter) | photons / pattern | patterns train / test | network | network + refinement ({k} sweeps) "
        f"| rPIE ({k} sweeps) | rPIE ({sweeps} sweeps) | rPIE, best of {limit} sweeps (at) | R-factor network / + refinement / rPIE-{sweeps} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    speed = [
        f"| step (x probe diameter) | photons / pattern | training s (epochs) | network s | network + refinement s | rPIE ({sweeps} sweeps) s "
        f"| rPIE sweeps (s) to reach network + refinement | refinement sweeps (s, network included) to reach rPIE-{sweeps} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        methods = ("pinn", "refined", "baseline")
        best = {key: max(record[m][key] for m in methods) for key in ("amplitude.ssim", "phase.ssim")}
        bold = {m: (record[m]["amplitude.ssim"] == best["amplitude.ssim"], record[m]["phase.ssim"] == best["phase.ssim"]) for m in methods}
        step = f"{record['step_fraction']:g} ({record['step_px']:g} px)"
        dose = f"{record['nphotons']:.0e}".replace("+0", "").replace("+", "")
        top, same = record["rpie_best"], record["rpie_at_refine_sweeps"]
        quality.append(
            f"| {step} | {dose} | {record['n_train_patterns']} / {record['n_test_patterns']} | {_pair(record, 'pinn', bold['pinn'])} "
            f"| {_pair(record, 'refined', bold['refined'])} | {same['amplitude_ssim']:.3f} / {same['phase_ssim']:.3f} "
            f"| {_pair(record, 'baseline', bold['baseline'])} "
            f"| {top['amplitude_ssim']:.3f} / {top['phase_ssim']:.3f} ({top['sweeps']}) "
            f"| {' / '.join(format(record[m]['data.r_factor'], '.3f') for m in methods)} |"
        )
        speed.append(
            f"| {step} | {dose} | {record['train']['wall_time_s']:.0f} ({record['train']['epochs_run']}) | {record['pinn']['wall_time_s']:.2f} "
            f"| {record['refined']['wall_time_s']:.2f} | {record['baseline']['wall_time_s']:.2f} "
            f"| {_reached(record['rpie_to_match_refined'], limit)} | {_reached(record['refine_to_match_rpie'], sweeps)} |"
        )
    return "\n".join(quality) + "\n\n" + "\n".join(speed) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``ptycho benchmark scenarios`` and ``python -m ptycho.benchmarks.scenarios``: runs the grid,
    writes ``--output`` (JSON) and prints the README's tables."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ptycho benchmark scenarios", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (all sections; prepare's simulation settings are sized by --size)")
    parser.add_argument("--size", choices=["small", "default"], default="small",
                        help="small: the params.yaml simulation with every length halved (N = 32, 8 px probe by default); default: as it is")
    parser.add_argument("--epochs", type=positive_int, default=None, help="training epochs per scenario (default: train.epochs; the 9 trainings take "
                        "about 10 minutes on 2 CPU cores; early stopping applies)")
    parser.add_argument("--refine-sweeps", type=positive_int, default=None, help="refinement sweeps (default: refine.iterations)")
    parser.add_argument("--max-sweeps", type=positive_int, default=100, help="rPIE from a flat object is scored per sweep up to this many")
    parser.add_argument("--overlaps", type=positive_numbers, default=None, help="scan steps as fractions of the probe diameter (default: 0.25 0.5 1)")
    parser.add_argument("--doses", type=positive_numbers, default=None, help="mean photons per pattern (default: 1e6 1e4 1e3)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads for every method, training included (replaces train.num_threads); "
                        "numpy/scipy's BLAS threads (infer's phase synchronisation) follow OPENBLAS_NUM_THREADS / OMP_NUM_THREADS")
    parser.add_argument("--workdir", default="results/scenarios", help="one folder per scenario (data, bundle, reconstructions, figures)")
    parser.add_argument("--output", default="results/scenarios.json", help="results (JSON)")
    args = parser.parse_args(argv)
    prepare, evaluate = sized(args.size, config.load_section(args.params, "prepare"), config.load_section(args.params, "evaluate"))
    train = dataclasses.replace(config.load_section(args.params, "train"), num_threads=args.threads)
    refine = config.load_section(args.params, "refine")
    settings = Settings(
        prepare=prepare, model=config.load_section(args.params, "model"),
        train=dataclasses.replace(train, epochs=train.epochs if args.epochs is None else args.epochs),
        infer=config.load_section(args.params, "infer"),
        refine=refine if args.refine_sweeps is None else dataclasses.replace(refine, iterations=args.refine_sweeps),
        baseline=config.load_section(args.params, "baseline"), evaluate=evaluate, max_sweeps=args.max_sweeps,
    )
    scenarios = grid(tuple(args.overlaps or OVERLAPS), tuple(args.doses or DOSES))
    started, load_before = datetime.datetime.now().astimezone(), os.getloadavg()

    def done(record: dict) -> None:
        print(f"benchmark: {record['scenario']} done in {record['wall_time_s']:.0f} s (load {record['load_average_1min']}): SSIM network "
              f"{record['pinn']['amplitude.ssim']:.3f}/{record['pinn']['phase.ssim']:.3f}, + refinement {record['refined']['amplitude.ssim']:.3f}/"
              f"{record['refined']['phase.ssim']:.3f}, rPIE {record['baseline']['amplitude.ssim']:.3f}/{record['baseline']['phase.ssim']:.3f}", flush=True)

    records = run_grid(scenarios, settings, args.workdir, on_result=done)
    report = {
        "command": "ptycho benchmark scenarios " + shlex.join(argv),
        "started": started.isoformat(timespec="seconds"),
        "wall_time_s": round((datetime.datetime.now().astimezone() - started).total_seconds(), 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": args.threads,
                    **{name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
                    "load_average_start": [round(x, 2) for x in load_before], "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "size": args.size, "settings": settings_record(settings), "scenarios": records,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(to_json(report))
    print(markdown_tables(records))
    print(f"benchmark: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
