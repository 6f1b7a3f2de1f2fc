"""The `ptycho` command line: one sub-command per pipeline stage, each calling its workflow."""

from __future__ import annotations

import argparse
import json
import os
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
    dropped = train.metadata.get("guard_band_dropped")
    guard = f"; {dropped} dropped by the guard band of N/2 px between them" if dropped else ""
    print(f"prepare: wrote {args.train} ({train.n_patterns} patterns) and {args.test} ({test.n_patterns} patterns{guard})"
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
        args.refined, args.history, args.stats, args.figure, args.bundle,
    )
    stats = json.loads(Path(args.stats).read_text())
    print(f"refine: wrote {args.refined}; from the {stats['start']} start, error {errors[0]:.4f} -> {errors[-1]:.4f} in {len(errors)} sweeps "
          f"({stats['stop_reason']})")


def _check(args: argparse.Namespace) -> None:
    check_config = config.load_section(args.params, "check")
    failures = workflows.check(args.bundle, args.test_data, args.reconstruction, args.metrics, check_config)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    if failures:
        raise SystemExit(1)
    print("check: all artifact checks passed")


def _benchmark(args: argparse.Namespace) -> None:
    import importlib

    # here: the stages that import the command line never load the benchmarks package
    from ptycho.benchmarks import NAMES

    if args.name not in NAMES:
        raise ConfigError(f"benchmark: unknown benchmark {args.name!r}; known: {', '.join(NAMES)}")
    status = importlib.import_module(f"ptycho.benchmarks.{args.name}").main(args.arguments)
    if status:
        raise SystemExit(status)


def _output(parser: argparse.ArgumentParser, flag: str, pipeline_path: str, help: str) -> None:
    """An output option. Not given: the pipeline's path when no output of the command is given,
    else the same file name beside the first output that is (``_derive_outputs``), so a run
    with its own outputs never writes into the pipeline's folders."""
    parser.add_argument(flag, default=None, help=f"{help} (default: {pipeline_path}, or beside the first output given)")
    dest = flag.lstrip("-").replace("-", "_")
    parser.set_defaults(outputs={**(parser.get_default("outputs") or {}), dest: pipeline_path})


def _derive_outputs(args: argparse.Namespace) -> None:
    """Fill the outputs not given (``_output``), in place."""
    outputs: dict[str, str] = getattr(args, "outputs", None) or {}
    given = [dest for dest in outputs if getattr(args, dest) is not None]
    for dest, pipeline_path in outputs.items():
        if getattr(args, dest) is None:
            folder = Path(getattr(args, given[0])).parent if given else Path(pipeline_path).parent
            setattr(args, dest, str(folder / Path(pipeline_path).name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptycho", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ptycho {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="simulate or ingest a scan; write train/test NPZ and a preview")
    prepare.add_argument("--params", default="params.yaml", help="parameter file (section prepare)")
    _output(prepare, "--train", "data/prepared/train.npz", "training NPZ to write")
    _output(prepare, "--test", "data/prepared/test.npz", "test NPZ to write")
    _output(prepare, "--preview", "data/prepared/preview.png", "preview PNG to write")
    prepare.add_argument("--inputs", default="", help="folder every input file must lie in (the pipeline passes data/raw, its tracked dependency)")
    prepare.set_defaults(run=_prepare)

    train = commands.add_parser("train", help="train the network on the training NPZ; write the bundle wts.h5.zip")
    train.add_argument("--params", default="params.yaml", help="parameter file (sections model, train)")
    train.add_argument("--train-data", default="data/prepared/train.npz", help="training NPZ")
    _output(train, "--bundle", "models/wts.h5.zip", "model bundle to write")
    _output(train, "--history", "models/history.csv", "per-epoch losses (CSV)")
    _output(train, "--history-figure", "models/history.png", "loss curves and learning rate (PNG)")
    _output(train, "--metrics", "models/train_metrics.json", "final losses (JSON)")
    _output(train, "--checkpoints", "models/checkpoints", "Lightning checkpoints (for --resume)")
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
    _output(infer, "--reconstruction", "results/reconstruction.npz", "reconstruction to write")
    _output(infer, "--figure", "results/reconstruction.png", "amplitude/phase PNG to write")
    _output(infer, "--stats", "results/infer_stats.json", "inference timing (JSON)")
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
    _output(evaluate, "--metrics", "results/metrics.json", "metrics to write (all methods, with the alignment)")
    evaluate.add_argument("--scores", default="", help="folder for one <method>.json of scores per method (the pipeline's DVC metrics; optional)")
    _output(evaluate, "--frc", "results/frc.csv", "FRC curve to write")
    _output(evaluate, "--figure", "results/comparison.png", "truth/reconstruction/difference PNG")
    evaluate.set_defaults(run=_evaluate)

    baseline = commands.add_parser("baseline", help="iterative reference reconstruction (ePIE/rPIE) of the test scan")
    baseline.add_argument("--params", default="params.yaml", help="parameter file (section baseline)")
    baseline.add_argument("--test-data", default="data/prepared/test.npz", help="test NPZ")
    _output(baseline, "--reconstruction", "results/baseline.npz", "reconstruction to write")
    _output(baseline, "--history", "results/baseline_history.csv", "error metric per iteration (CSV)")
    _output(baseline, "--stats", "results/baseline_stats.json", "timing (JSON)")
    _output(baseline, "--figure", "results/baseline.png", "amplitude/phase PNG to write")
    baseline.add_argument("--product", default="", help="also write the reconstruction as a ptychodus product.h5 (optional)")
    baseline.set_defaults(run=_baseline)

    refine = commands.add_parser("refine", help="a few iterative sweeps started from the network's reconstruction")
    refine.add_argument("--params", default="params.yaml", help="parameter file (section refine)")
    refine.add_argument("--test-data", default="data/prepared/test.npz", help="test NPZ")
    refine.add_argument("--reconstruction", default="results/reconstruction.npz", help="the network's reconstruction to start from")
    refine.add_argument("--infer-stats", default="results/infer_stats.json", help="the network's timing (JSON), added to the refinement's")
    refine.add_argument("--bundle", default="models/wts.h5.zip", help="the model bundle, read for its learned sweeps (refine.engine: learned)")
    _output(refine, "--refined", "results/refined.npz", "refined reconstruction to write")
    _output(refine, "--history", "results/refine_history.csv", "error metric per sweep (CSV)")
    _output(refine, "--stats", "results/refine_stats.json", "timing, network included (JSON)")
    _output(refine, "--figure", "results/refined.png", "amplitude/phase PNG to write")
    refine.set_defaults(run=_refine)

    check = commands.add_parser("check", help="verify the pipeline's artifacts and metric thresholds (for CI)")
    check.add_argument("--params", default="params.yaml", help="parameter file (section check)")
    check.add_argument("--bundle", default="models/wts.h5.zip")
    check.add_argument("--test-data", default="data/prepared/test.npz")
    check.add_argument("--reconstruction", default="results/reconstruction.npz")
    check.add_argument("--metrics", default="results/metrics.json")
    check.set_defaults(run=_check)

    benchmark = commands.add_parser(
        "benchmark", help="benchmarks, not tests: a module of ptycho.benchmarks (timing, scenarios, ...)",
        description="Run one benchmark of ptycho.benchmarks; `ptycho benchmark NAME --help` lists its options "
        "(the same as `python -m ptycho.benchmarks.NAME`).",
    )
    benchmark.add_argument("name", help="the benchmark: a module of ptycho.benchmarks")
    benchmark.add_argument("arguments", nargs=argparse.REMAINDER, help="its options")
    benchmark.set_defaults(run=_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a ptycho error becomes a one-line message and exit status 1."""
    args = build_parser().parse_args(argv)
    _derive_outputs(args)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.run(args)
    except PtychoError as error:
        print(f"ptycho {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
