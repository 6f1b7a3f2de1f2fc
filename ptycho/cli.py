"""The `ptycho` command line: one sub-command per pipeline stage, each calling its workflow."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import warnings
from pathlib import Path

from ptycho import __version__, config, workflows
from ptycho.data import load_dataset
from ptycho.errors import ConfigError, InputWarning, PtychoError, TrainingWarning


def _check_inputs_inside(prepare_config: config.PrepareConfig, inputs: str) -> None:
    """In the pipeline every input file must lie under the folder that dvc.yaml tracks (a DVC dependency)."""
    if not inputs or prepare_config.source is config.Source.SIMULATE:
        return
    folder = Path(os.path.normpath(Path(inputs).absolute()))
    for key in ("train_file", "test_file"):
        value = getattr(prepare_config, key)
        # normpath, not resolve: a symbolic link inside the folder is fine (DVC hashes its target)
        if value and not Path(os.path.normpath(Path(value).absolute())).is_relative_to(folder):
            raise ConfigError(
                f"prepare.{key}: {value!r} is outside {inputs}/, the folder the pipeline tracks as prepare's dependency, "
                f"so a changed file would not re-run prepare; copy or link it into {inputs}/ and give that path"
            )


def _prepare(args: argparse.Namespace) -> None:
    prepare_config = config.load_section(args.params, "prepare")
    _check_inputs_inside(prepare_config, args.inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        train, test = workflows.prepare(prepare_config, args.train, args.test, args.preview)
    for warning in caught:
        print(f"ptycho prepare: warning: {warning.message}", file=sys.stderr)
    source = train.metadata.get("source_detected")
    print(f"prepare: wrote {args.train} ({train.n_patterns} patterns) and {args.test} ({test.n_patterns} patterns)"
          + (f"; read as {source}" if source else ""))
    refined = train.metadata.get("probe_refined")
    if refined:
        print(f"prepare: probe refined by {refined['sweeps']} {refined['algorithm']} sweeps on the training scan in {refined['wall_time_s']} s "
              f"(amplitude error {refined['error_first_sweep']:.4g} -> {refined['error_last_sweep']:.4g}); both files carry it")


def _train(args: argparse.Namespace) -> None:
    model_config = config.load_section(args.params, "model")
    train_config = config.load_section(args.params, "train")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrainingWarning)
        summary = workflows.train(
            load_dataset(args.train_data), model_config, train_config,
            args.bundle, args.history, args.metrics, args.checkpoints, resume=args.resume, figure_path=args.history_figure,
        )
    _report(caught, "train")
    if not summary.wrote_outputs:  # another rank of a distributed (DDP) run: rank 0 writes the bundle and reports
        return
    stopped = {"epochs": "all epochs ran", "early_stopping": "early stopping", "wall_time": "wall-time budget train.max_wall_s"}
    print(f"train: wrote {args.bundle}; stopped by {stopped.get(summary.stop_reason, summary.stop_reason)}; "
          + ", ".join(f"{key}={value}" for key, value in summary.metrics.items()))


def _report(caught: list, command: str) -> None:
    """Our own warnings as one line each; anyone else's as Python prints them."""
    for warning in caught:
        if issubclass(warning.category, (TrainingWarning, InputWarning)):
            print(f"ptycho {command}: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


def _infer(args: argparse.Namespace) -> None:
    infer_config = config.load_section(args.params, "infer")
    reconstruction = workflows.infer(load_dataset(args.test_data, by_rows=True), args.bundle, infer_config, args.reconstruction, args.figure, args.stats, args.product)
    print(f"infer: wrote {args.reconstruction} ({reconstruction.object.shape[0]} x {reconstruction.object.shape[1]} px, origin {reconstruction.origin})")


def _evaluate(args: argparse.Namespace) -> None:
    evaluate_config = config.load_section(args.params, "evaluate")
    reconstructions = {"pinn": args.reconstruction}
    stats = {"pinn": args.infer_stats} if args.infer_stats else {}
    if args.refined:
        reconstructions["refined"] = args.refined
        if args.refined_stats:
            stats["refined"] = args.refined_stats
    if args.baseline:
        reconstructions["baseline"] = args.baseline
        if args.baseline_stats:
            stats["baseline"] = args.baseline_stats
    report = workflows.evaluate(
        load_dataset(args.test_data), reconstructions, stats, evaluate_config, args.metrics, args.frc, args.figure,
        scores_dir=args.scores or None,
    )
    shown = ("amplitude.ssim", "phase.ssim", "amplitude.pearson", "frc.resolution_px_0.5", "data.r_factor", "wall_time_s")
    for method, values in report.items():
        print(f"evaluate: {method}: " + ", ".join(f"{key}={values[key]:.4g}" for key in shown if key in values))


def _baseline(args: argparse.Namespace) -> None:
    baseline_config = config.load_section(args.params, "baseline")
    errors = workflows.baseline(load_dataset(args.test_data, by_rows=True), baseline_config, args.reconstruction, args.history, args.stats, args.figure, args.product)
    print(f"baseline: wrote {args.reconstruction}; error {errors[0]:.4f} -> {errors[-1]:.4f} in {len(errors)} iterations")


def _refine(args: argparse.Namespace) -> None:
    refine_config = config.load_section(args.params, "refine")
    errors = workflows.refine(
        load_dataset(args.test_data, by_rows=True), args.reconstruction, args.infer_stats, refine_config,
        args.refined, args.history, args.stats, args.figure,
    )
    print(f"refine: wrote {args.refined}; error {errors[0]:.4f} -> {errors[-1]:.4f} in {len(errors)} sweeps")


def _check(args: argparse.Namespace) -> None:
    check_config = config.load_section(args.params, "check")
    failures = workflows.check(args.bundle, args.test_data, args.reconstruction, args.metrics, check_config)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    if failures:
        raise SystemExit(1)
    print("check: all artifact checks passed")


def _scenarios(args: argparse.Namespace) -> None:
    from ptycho import scenarios  # here: the stages that import the command line never load the benchmark

    prepare, evaluate = scenarios.sized(args.size, config.load_section(args.params, "prepare"), config.load_section(args.params, "evaluate"))
    train = dataclasses.replace(config.load_section(args.params, "train"), num_threads=args.threads)
    refine = config.load_section(args.params, "refine")
    settings = scenarios.Settings(
        prepare=prepare, model=config.load_section(args.params, "model"),
        train=dataclasses.replace(train, epochs=train.epochs if args.epochs is None else args.epochs),
        infer=config.load_section(args.params, "infer"),
        refine=refine if args.refine_sweeps is None else dataclasses.replace(refine, iterations=args.refine_sweeps),
        baseline=config.load_section(args.params, "baseline"), evaluate=evaluate, max_sweeps=args.max_sweeps,
    )
    grid = scenarios.grid(tuple(args.overlaps or scenarios.OVERLAPS), tuple(args.doses or scenarios.DOSES))
    started, load_before = datetime.datetime.now().astimezone(), os.getloadavg()

    def done(record: dict) -> None:
        print(f"benchmark: {record['scenario']} done in {record['wall_time_s']:.0f} s (load {record['load_average_1min']}): SSIM network "
              f"{record['pinn']['amplitude.ssim']:.3f}/{record['pinn']['phase.ssim']:.3f}, + refinement {record['refined']['amplitude.ssim']:.3f}/"
              f"{record['refined']['phase.ssim']:.3f}, rPIE {record['baseline']['amplitude.ssim']:.3f}/{record['baseline']['phase.ssim']:.3f}", flush=True)

    records = scenarios.run_grid(grid, settings, args.workdir, on_result=done)
    report = {
        "command": "ptycho " + shlex.join(args.argv),
        "started": started.isoformat(timespec="seconds"),
        "wall_time_s": round((datetime.datetime.now().astimezone() - started).total_seconds(), 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": args.threads,
                    **{name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
                    "load_average_start": [round(x, 2) for x in load_before], "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "size": args.size, "settings": scenarios.settings_record(settings), "scenarios": records,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(scenarios.to_json(report))
    print(scenarios.markdown_tables(records))
    print(f"benchmark: wrote {args.output}")


def _timing(args: argparse.Namespace) -> None:
    from ptycho import benchmark

    report = benchmark.timing(
        args.test_data, args.bundle, config.load_section(args.params, "infer"), config.load_section(args.params, "baseline"),
        config.load_section(args.params, "evaluate"), repeats=args.repeats, max_iterations=args.max_iterations,
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


def _scale(argv: list[str]) -> int:
    from ptycho.benchmarks import scale

    return scale.main(argv)


def _numbers(text: str) -> list[float]:
    """A comma-separated list of positive numbers ("0.25,0.5,1")."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected numbers > 0, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptycho", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ptycho {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="simulate or ingest a scan; write train/test NPZ and a preview")
    prepare.add_argument("--params", default="params.yaml", help="parameter file (section prepare)")
    prepare.add_argument("--train", default="data/prepared/train.npz", help="training NPZ to write")
    prepare.add_argument("--test", default="data/prepared/test.npz", help="test NPZ to write")
    prepare.add_argument("--preview", default="data/prepared/preview.png", help="preview PNG to write")
    prepare.add_argument("--inputs", default="", help="folder every input file must lie in (the pipeline passes data/raw, its tracked dependency)")
    prepare.set_defaults(run=_prepare)

    train = commands.add_parser("train", help="train the network on the training NPZ; write the bundle wts.h5.zip")
    train.add_argument("--params", default="params.yaml", help="parameter file (sections model, train)")
    train.add_argument("--train-data", default="data/prepared/train.npz", help="training NPZ")
    train.add_argument("--bundle", default="models/wts.h5.zip", help="model bundle to write")
    train.add_argument("--history", default="models/history.csv", help="per-epoch losses (CSV)")
    train.add_argument("--history-figure", default="models/history.png", help="loss curves and learning rate (PNG)")
    train.add_argument("--metrics", default="models/train_metrics.json", help="final losses (JSON)")
    train.add_argument("--checkpoints", default="models/checkpoints", help="Lightning checkpoints (for --resume)")
    train.add_argument(
        "--resume", action="store_true",
        help="continue a killed run (or one that ran out of train.max_wall_s) from CHECKPOINTS/last.ckpt, written after "
             "every epoch; for a finished run, rewrite the bundle from its best weights without training",
    )
    train.set_defaults(run=_train)

    infer = commands.add_parser("infer", help="reconstruct the test scan with the bundle; write reconstruction.npz")
    infer.add_argument("--params", default="params.yaml", help="parameter file (section infer)")
    infer.add_argument("--test-data", default="data/prepared/test.npz", help="test NPZ")
    infer.add_argument("--bundle", default="models/wts.h5.zip", help="model bundle")
    infer.add_argument("--reconstruction", default="results/reconstruction.npz", help="reconstruction to write")
    infer.add_argument("--figure", default="results/reconstruction.png", help="amplitude/phase PNG to write")
    infer.add_argument("--stats", default="results/infer_stats.json", help="inference timing (JSON)")
    infer.add_argument("--product", default="", help="also write the reconstruction as a ptychodus product.h5 (optional)")
    infer.set_defaults(run=_infer)

    evaluate = commands.add_parser("evaluate", help="score the reconstruction; write metrics.json, FRC CSV and a figure")
    evaluate.add_argument("--params", default="params.yaml", help="parameter file (section evaluate)")
    evaluate.add_argument("--test-data", default="data/prepared/test.npz", help="test NPZ (ground truth, measured data)")
    evaluate.add_argument("--reconstruction", default="results/reconstruction.npz", help="reconstruction to score")
    evaluate.add_argument("--infer-stats", default="", help="timings of the network inference (JSON), merged into its metrics")
    evaluate.add_argument("--refined", default="", help="network + refinement reconstruction to score beside the network's (optional)")
    evaluate.add_argument("--refined-stats", default="", help="timings of network + refinement (JSON)")
    evaluate.add_argument("--baseline", default="", help="iterative reconstruction to score beside the network's (optional)")
    evaluate.add_argument("--baseline-stats", default="", help="timings of the iterative run (JSON)")
    evaluate.add_argument("--metrics", default="results/metrics.json", help="metrics to write (all methods, with the alignment)")
    evaluate.add_argument("--scores", default="", help="folder for one <method>.json of scores per method (the pipeline's DVC metrics; optional)")
    evaluate.add_argument("--frc", default="results/frc.csv", help="FRC curve to write")
    evaluate.add_argument("--figure", default="results/comparison.png", help="truth/reconstruction/difference PNG")
    evaluate.set_defaults(run=_evaluate)

    baseline = commands.add_parser("baseline", help="iterative reference reconstruction (ePIE/rPIE) of the test scan")
    baseline.add_argument("--params", default="params.yaml", help="parameter file (section baseline)")
    baseline.add_argument("--test-data", default="data/prepared/test.npz", help="test NPZ")
    baseline.add_argument("--reconstruction", default="results/baseline.npz", help="reconstruction to write")
    baseline.add_argument("--history", default="results/baseline_history.csv", help="error metric per iteration (CSV)")
    baseline.add_argument("--stats", default="results/baseline_stats.json", help="timing (JSON)")
    baseline.add_argument("--figure", default="results/baseline.png", help="amplitude/phase PNG to write")
    baseline.add_argument("--product", default="", help="also write the reconstruction as a ptychodus product.h5 (optional)")
    baseline.set_defaults(run=_baseline)

    refine = commands.add_parser("refine", help="a few iterative sweeps started from the network's reconstruction")
    refine.add_argument("--params", default="params.yaml", help="parameter file (section refine)")
    refine.add_argument("--test-data", default="data/prepared/test.npz", help="test NPZ")
    refine.add_argument("--reconstruction", default="results/reconstruction.npz", help="the network's reconstruction to start from")
    refine.add_argument("--infer-stats", default="results/infer_stats.json", help="the network's timing (JSON), added to the refinement's")
    refine.add_argument("--refined", default="results/refined.npz", help="refined reconstruction to write")
    refine.add_argument("--history", default="results/refine_history.csv", help="error metric per sweep (CSV)")
    refine.add_argument("--stats", default="results/refine_stats.json", help="timing, network included (JSON)")
    refine.add_argument("--figure", default="results/refined.png", help="amplitude/phase PNG to write")
    refine.set_defaults(run=_refine)

    check = commands.add_parser("check", help="verify the pipeline's artifacts and metric thresholds (for CI)")
    check.add_argument("--params", default="params.yaml", help="parameter file (section check)")
    check.add_argument("--bundle", default="models/wts.h5.zip")
    check.add_argument("--test-data", default="data/prepared/test.npz")
    check.add_argument("--reconstruction", default="results/reconstruction.npz")
    check.add_argument("--metrics", default="results/metrics.json")
    check.set_defaults(run=_check)

    benchmark = commands.add_parser("benchmark", help="benchmarks, not tests: the scenario grid, or the timing benchmark of a pipeline run")
    modes = benchmark.add_subparsers(dest="mode", required=True)
    grid = modes.add_parser("scenarios", help="network, network + refinement and rPIE over scan overlap x dose (simulated, trains a network per scenario)")
    grid.add_argument("--params", default="params.yaml", help="parameter file (all sections; prepare's simulation settings are sized by --size)")
    grid.add_argument("--size", choices=["small", "default"], default="small",
                      help="small: the params.yaml simulation with every length halved (N = 32, 8 px probe by default); default: as it is")
    grid.add_argument("--epochs", type=_positive, default=None, help="training epochs per scenario (default: train.epochs; the 9 trainings take "
                      "about 10 minutes on 2 CPU cores; early stopping applies)")
    grid.add_argument("--refine-sweeps", type=_positive, default=None, help="refinement sweeps (default: refine.iterations)")
    grid.add_argument("--max-sweeps", type=_positive, default=100, help="rPIE from a flat object is scored per sweep up to this many")
    grid.add_argument("--overlaps", type=_numbers, default=None, help="scan steps as fractions of the probe diameter (default: 0.25 0.5 1)")
    grid.add_argument("--doses", type=_numbers, default=None, help="mean photons per pattern (default: 1e6 1e4 1e3)")
    grid.add_argument("--threads", type=_positive, default=1, help="torch CPU threads for every method, training included (replaces train.num_threads); "
                      "numpy/scipy's BLAS threads (infer's phase synchronisation) follow OPENBLAS_NUM_THREADS / OMP_NUM_THREADS")
    grid.add_argument("--workdir", default="results/scenarios", help="one folder per scenario (data, bundle, reconstructions, figures)")
    grid.add_argument("--output", default="results/scenarios.json", help="results (JSON)")
    grid.set_defaults(run=_scenarios)

    timing = modes.add_parser("timing", help="after dvc repro: inference time, and sweeps/time ePIE and rPIE need to reach the network's SSIM")
    timing.add_argument("--params", default="params.yaml", help="parameter file (sections infer, baseline, evaluate)")
    timing.add_argument("--test-data", default="data/prepared/test.npz")
    timing.add_argument("--bundle", default="models/wts.h5.zip")
    timing.add_argument("--output", default="results/benchmark.json")
    timing.add_argument("--repeats", type=_positive, default=5, help="runs per timing; the median is reported")
    timing.add_argument("--max-iterations", type=_positive, default=300)
    timing.set_defaults(run=_timing)

    # Its options are parsed by ptycho.benchmarks.scale itself (`ptycho benchmark scale --help`), so that
    # the stages, which import this module, never import the benchmark.
    sized = modes.add_parser("scale", add_help=False, help="patterns/s of infer (synchronisation and stitching included), peak memory, "
                             "and rPIE's cost per sweep, at 1k / 10k / 50k synthetic positions (--help for its options)")
    sized.set_defaults(run=_scale)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a ptycho error becomes a one-line message and exit status 1."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:2] == ["benchmark", "scale"]:  # parses its own options (see build_parser)
        return _scale(given[2:])
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.run(args)
    except PtychoError as error:
        print(f"ptycho {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
