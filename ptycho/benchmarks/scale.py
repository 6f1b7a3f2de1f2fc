"""Scale benchmark: patterns per second, peak memory and time of ``ptycho infer`` against the number of
scan positions, beside the cost of one rPIE sweep on the same scan.

    ptycho benchmark scale [--sizes 1000 10000 50000] [--repeats 3] [--before] [--device cpu|cuda]
    (python -m ptycho.benchmarks.scale runs the same)

For each size, a synthetic test scan is written the way ``prepare`` writes one: random amplitudes
of the default data's pattern size (``--pattern-size``; by default the size ``prepare`` gives the
default simulation, 64 px cropped by ``prepare.detector_crop_px: auto``), the simulation's aperture
probe resampled as the crop resamples it, a jittered square grid of the default step on the same
grid; next to it an untrained model bundle of the default architecture (``model:`` defaults,
window from the probe). Then ``ptycho infer`` (the stage's own command line, patterns read by
rows) runs in a child process ``--repeats`` times. Reported per size, as medians over the repeats:

- **patterns/s**: positions / the reconstruction's own time (``infer_stats.json``: the network's
  forward passes, the single-pattern fit (``--consistency-iterations``, default the params default),
  the phase synchronisation and the stitching, everything but start-up and files);
- the child's peak resident memory (its own VmHWM, ``peak_resident_bytes``) and the
  stage's wall time (start to exit: imports, bundle check, reconstruction, NPZ, product, PNG);
- rPIE's cost per sweep over the same scan (``baseline:`` defaults, one sweep in a child; rPIE needs
  tens of sweeps, the network one pass).

``--before`` also runs today's defaults before issue 18 (N = 64, no crop, fp32) in the same run
and prints the speed-up as a ratio (the fair comparison on a busy machine). ``--in-memory`` also
runs a child that holds the whole scan and every placed patch in memory (what inference did
before it read by rows). Results go to stdout and ``--output`` (JSON).

Not a test: the figures depend on the machine and on what else runs on it; the load average is
printed beside each line. The scans take disk space (4 N^2 bytes per position), in ``--folder``
(default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIMULATED_SIZE = 64  # prepare.N of the default simulation, before the crop


@dataclass(frozen=True)
class Setup:
    """One configuration under test: pattern size, network precision, device, single-pattern fit iterations."""

    name: str
    pattern_size: int
    precision: str
    device: str
    consistency_iterations: int = 0


def default_pattern_size() -> int:
    """The pattern size ``prepare`` gives the default simulation (params defaults, auto crop)."""
    from ptycho import workflows
    from ptycho.config import PrepareConfig
    from ptycho.simulate import simulate_train_test

    config = PrepareConfig()
    train, test = workflows.crop_simulated(*simulate_train_test(config), config)
    return train.pattern_size


def scan_geometry(size: int) -> tuple[np.ndarray, float]:
    """(probe (N, N) complex64, scan step px) of the default simulation on an N px detector."""
    from ptycho.config import PrepareConfig
    from ptycho.io.detector import fourier_crop_probe
    from ptycho.simulate import make_probe

    defaults = PrepareConfig()
    probe = make_probe(defaults.probe_kind, SIMULATED_SIZE, defaults.probe_diameter_px)
    if size != SIMULATED_SIZE:
        probe = fourier_crop_probe(probe[None], size)[0]
    return probe.astype(np.complex64), defaults.step_px * size / SIMULATED_SIZE


def write_scan(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """A synthetic test scan of ``count`` positions as prepare writes it (patterns never held whole)."""
    from ptycho.data import PtychoDataset, save_dataset
    from ptycho.rowfile import RowFile

    probe, step = scan_geometry(size)
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(count))
    ticks = size / 2 + 1 + step * np.arange(side)
    xgrid, ygrid = np.meshgrid(ticks, ticks)
    jitter = 0.5 * size / SIMULATED_SIZE
    xcoords = xgrid.ravel()[:count] + rng.uniform(-jitter, jitter, count)
    ycoords = ygrid.ravel()[:count] + rng.uniform(-jitter, jitter, count)
    raw = folder / f"patterns-{count}-{size}.bin"
    with open(raw, "wb") as handle:
        for start in range(0, count, 4096):
            rows = min(4096, count - start)
            handle.write(rng.random((rows, size, size), dtype=np.float32).tobytes())
    patterns = RowFile.open(raw, 0, (count, size, size), np.float32, source=str(raw))
    dataset = PtychoDataset(patterns, xcoords, ycoords, probe, None, np.arange(count, dtype=np.int64), {"source": "benchmark"})
    path = folder / f"test-{count}-{size}.npz"
    save_dataset(dataset, path)
    raw.unlink()
    return path


def write_bundle(folder: Path, size: int) -> Path:
    """An untrained model of the default architecture for N x N patterns (its window follows the probe, as in training)."""
    import torch

    from ptycho import physics
    from ptycho.bundle import save_bundle
    from ptycho.config import ModelConfig
    from ptycho.model import Architecture, build_models

    torch.manual_seed(0)
    model = ModelConfig()
    probe, _ = scan_geometry(size)
    architecture = Architecture(N=size, gridsize=1, n_filters_scale=model.n_filters_scale, backbone=model.backbone,
                                window_px=physics.probe_window(probe, model.window_share))
    unit_probe, _ = physics.calibrate_probe(probe, np.ones((1, size, size), np.float32))
    autoencoder, diffraction_to_obj = build_models(architecture, unit_probe, 1.0)
    path = folder / f"wts-{size}.h5.zip"
    save_bundle(path, autoencoder, diffraction_to_obj, architecture, extras={"config.json": b'{"model": {"n_neighbours": 1}}'})
    return path


def peak_resident_bytes() -> int:
    """This process's own peak resident memory: VmHWM of /proc/self/status (Linux), else ru_maxrss.

    Not ``ru_maxrss`` from ``wait4`` in the parent: Linux carries the parent's resident size at
    fork over into the child's ``ru_maxrss`` (the benchmark's parent, having simulated the default
    data and written the scan, made a 609 MiB ``ptycho infer`` read 995 MiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_child(arguments: list[str], folder: Path) -> dict:
    """Run ``python -m ptycho.benchmarks.scale --measured PEAK_FILE *arguments``: its wall time, its
    stdout and the peak resident memory it reports itself (bytes, ``peak_resident_bytes``)."""
    peak_file = folder / "child_peak_bytes.txt"
    command = [sys.executable, "-m", "ptycho.benchmarks.scale", "--measured", str(peak_file), *arguments]
    started = time.perf_counter()
    child = subprocess.run(command, cwd=folder, capture_output=True)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{child.stderr.decode(errors='replace')[-2000:]}")
    return {"peak_rss_bytes": int(peak_file.read_text()), "wall_s": seconds, "stdout": child.stdout.decode(errors="replace")}


def measured_child(argv: list[str]) -> int:
    """``--measured PEAK_FILE ARGS``: run the child ARGS (``--child-...`` or ``infer ...``), then write its peak memory."""
    peak_file, arguments = argv[0], argv[1:]
    try:
        if arguments[0] == "--child-in-memory":
            return child_in_memory(arguments[1:])
        if arguments[0] == "--child-rpie-sweep":
            return child_rpie_sweep(arguments[1:])
        from ptycho import cli

        return cli.main(arguments)
    finally:
        Path(peak_file).write_text(str(peak_resident_bytes()))


def infer_command(scan: Path, bundle: Path, out: Path, params: Path, in_memory: bool) -> list[str]:
    files = ["--reconstruction", str(out / "reconstruction.npz"), "--figure", str(out / "reconstruction.png"),
             "--stats", str(out / "infer_stats.json")]
    if in_memory:
        return ["--child-in-memory", str(scan), str(bundle), str(params), *files]
    return ["infer", "--params", str(params), "--test-data", str(scan), "--bundle", str(bundle), *files,
            "--product", str(out / "reconstruction_product.h5")]


def child_in_memory(argv: list[str]) -> int:
    """The comparison child: the whole scan and every placed patch held in memory, same workflow otherwise."""
    from ptycho import config, inference, workflows
    from ptycho.data import load_dataset

    scan, bundle, params, _, reconstruction, _, figure, _, stats = argv
    inference.MAX_PATCH_BYTES = 1 << 62
    workflows.infer(load_dataset(scan), bundle, config.load_section(params, "infer"), reconstruction, figure, stats)
    return 0


def child_rpie_sweep(argv: list[str]) -> int:
    """Print the wall time (s) of one rPIE sweep (``baseline:`` defaults) over the scan ``argv[0]``."""
    from ptycho.iterative.pie import run_pie
    from ptycho.config import BaselineConfig
    from ptycho.data import load_dataset

    data = load_dataset(argv[0], by_rows=True)
    started = time.perf_counter()
    run_pie(data, BaselineConfig(iterations=1), progress=False)
    print(json.dumps({"sweep_s": time.perf_counter() - started}))
    return 0


def measure(setup: Setup, scan: Path, bundle: Path, folder: Path, repeats: int, in_memory: bool) -> dict:
    """Medians over ``repeats`` runs of the infer child (and of the in-memory child if asked)."""
    params = folder / f"params-{setup.name}.yaml"
    params.write_text(f"infer: {{precision: {setup.precision}, device: '{setup.device}', consistency_iterations: {setup.consistency_iterations}}}\n")
    entry: dict = {}
    for mode in ("by_rows", "in_memory") if in_memory else ("by_rows",):
        runs = []
        for _ in range(repeats):
            run = run_child(infer_command(scan, bundle, folder, params, mode == "in_memory"), folder)
            stats = json.loads((folder / "infer_stats.json").read_text())
            runs.append({"peak_rss_bytes": run["peak_rss_bytes"], "wall_s": run["wall_s"], "reconstruct_s": stats["wall_time_s"],
                         "precision": stats.get("precision", setup.precision), "load_1min": os.getloadavg()[0]})
        entry[mode] = {key: statistics.median(run[key] for run in runs) for key in ("peak_rss_bytes", "wall_s", "reconstruct_s")}
        entry[mode] |= {"precision": runs[0]["precision"], "runs": runs}
    return entry


def rpie_sweep_s(scan: Path, folder: Path, repeats: int) -> float:
    command = ["--child-rpie-sweep", str(scan)]
    return statistics.median(json.loads(run_child(command, folder)["stdout"])["sweep_s"] for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--measured":
        return measured_child(argv[1:])
    from ptycho.errors import PtychoError

    parser = argparse.ArgumentParser(prog="ptycho benchmark scale", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except PtychoError as error:
        print(f"ptycho benchmark scale: error: {error}", file=sys.stderr)
        return 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000], help="numbers of scan positions")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; medians are reported")
    parser.add_argument("--pattern-size", type=int, default=0, help="N of the scans (default: what prepare gives the default simulation)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="infer.precision of the runs")
    parser.add_argument("--device", default="cpu", help="infer.device of the runs: cpu, cuda, cuda:<index>")
    parser.add_argument("--consistency-iterations", type=int, default=None,
                        help="infer.consistency_iterations of the runs (default: the params default; --before always uses 0, as before)")
    parser.add_argument("--before", action="store_true", help="also run the defaults before issue 18 (N = 64, fp32, cpu) and print the ratio")
    parser.add_argument("--rpie", action=argparse.BooleanOptionalAction, default=True, help="time one rPIE sweep per size")
    parser.add_argument("--in-memory", action="store_true", help="also run the in-memory comparison child")
    parser.add_argument("--folder", default="", help="where the scans go (default: a temporary folder, removed)")
    parser.add_argument("--output", default="results/scale_benchmark.json")


def run(args: argparse.Namespace) -> int:
    from ptycho.config import InferConfig
    from ptycho.errors import ConfigError
    from ptycho.inference import resolve_device, resolve_precision
    from ptycho.config import InferPrecision

    device = resolve_device(InferConfig(device=args.device).device)  # a clear error now if the device is absent
    precision, why = resolve_precision(InferPrecision(args.precision), device)
    size = args.pattern_size or default_pattern_size()
    iterations = InferConfig().consistency_iterations if args.consistency_iterations is None else args.consistency_iterations
    if iterations < 0:
        raise ConfigError(f"benchmark scale --consistency-iterations: must be >= 0, got {iterations}")
    setups = [Setup("now", size, args.precision, args.device, iterations)]
    if args.before:
        setups.append(Setup("before", SIMULATED_SIZE, "fp32", "cpu", 0))
    print(f"ptycho benchmark scale: {os.cpu_count()} CPUs, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, "
          f"device {args.device}, precision {args.precision} -> {precision.value} ({why}); "
          f"patterns/s = positions / (network + phase synchronisation + stitching); load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.folder or None) as temporary:
        folder = Path(temporary)
        bundles = {setup.name: write_bundle(folder, setup.pattern_size) for setup in setups}
        report = {"device": args.device, "precision": args.precision, "precision_resolved": precision.value, "precision_reason": why,
                  "repeats": args.repeats, "setups": {setup.name: vars(setup) for setup in setups},
                  "load_average_1min_before": os.getloadavg()[0], "sizes": {}}
        for count in args.sizes:
            entry: dict = {}
            for setup in setups:
                scan = write_scan(folder, count, setup.pattern_size)
                result = measure(setup, scan, bundles[setup.name], folder, args.repeats, args.in_memory)
                result["scan_file_bytes"] = scan.stat().st_size
                shown = result["by_rows"]
                result["patterns_per_s"] = count / shown["reconstruct_s"]
                line = (f"{count:>7} positions, {setup.name:>6} (N = {setup.pattern_size}, {shown['precision']}, "
                        f"{setup.consistency_iterations} single-pattern iterations): "
                        f"{result['patterns_per_s']:7.0f} patterns/s, reconstruction {shown['reconstruct_s']:6.2f} s, "
                        f"stage {shown['wall_s']:6.1f} s, peak RSS {shown['peak_rss_bytes'] / 2**20:5.0f} MiB")
                if args.in_memory:
                    line += f" (all in memory: {result['in_memory']['peak_rss_bytes'] / 2**20:5.0f} MiB)"
                if args.rpie:
                    result["rpie_sweep_s"] = rpie_sweep_s(scan, folder, args.repeats)
                    line += f"; one rPIE sweep {result['rpie_sweep_s']:6.2f} s ({count / result['rpie_sweep_s']:6.0f} patterns/s)"
                print(line + f" (medians of {args.repeats}; load {os.getloadavg()[0]:.1f})", flush=True)
                with np.load(folder / "reconstruction.npz") as reconstruction:
                    result["canvas_px"] = list(reconstruction["object"].shape)
                entry[setup.name] = result
                scan.unlink()
            if args.before:
                entry["speedup"] = entry["now"]["patterns_per_s"] / entry["before"]["patterns_per_s"]
                print(f"{count:>7} positions: now / before = {entry['speedup']:.2f} x patterns/s (same run)", flush=True)
            report["sizes"][str(count)] = entry
        report["load_average_1min_after"] = os.getloadavg()[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"ptycho benchmark scale: wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
