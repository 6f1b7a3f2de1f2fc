"""Scale benchmark: peak memory and time of the ``infer`` stage against the number of scan positions.

    python -m ptycho.benchmarks.scale [--sizes 1000 10000 50000] [--repeats 3] [--folder DIR]

For each size, a synthetic test scan is written the way ``prepare`` writes one (random
amplitudes, N = 64, a jittered square grid with an 8 px step, the simulation's aperture probe
of 16 px) next to an untrained model bundle (``build_models``, default width); then
``ptycho infer`` (the stage's own command line, patterns read by rows) runs in a child process
``--repeats`` times. Reported per size, as medians over the repeats: the child's peak resident
memory (``ru_maxrss`` of that child alone, from ``os.wait4``), the stage's wall time (start to
exit: imports, bundle check, reconstruction, reconstruction NPZ, ptychodus product, PNG) and the
reconstruction's own time (``infer_stats.json``). ``--in-memory`` also runs, for comparison, a
child that reads the whole scan into memory and keeps every placed patch in memory (what
inference did before it read by rows). Results go to stdout and ``--output`` (JSON).

Not a test: the figures depend on the machine and on what else runs on it; quote the load.
The scans take disk space: 16 KiB per position (820 MB at 50,000), in ``--folder`` (default:
a temporary folder, removed afterwards).
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
from pathlib import Path

import numpy as np

PATTERN_SIZE = 64
STEP_PX = 8.0
PROBE_DIAMETER_PX = 16.0


def write_scan(folder: Path, count: int, seed: int = 0) -> Path:
    """A synthetic test scan of ``count`` positions as prepare writes it (patterns never held whole)."""
    from ptycho.config import ProbeKind
    from ptycho.data import PtychoDataset, save_dataset
    from ptycho.rowfile import RowFile
    from ptycho.simulate import make_probe

    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(count))
    ticks = PATTERN_SIZE / 2 + 1 + STEP_PX * np.arange(side)
    xgrid, ygrid = np.meshgrid(ticks, ticks)
    xcoords = xgrid.ravel()[:count] + rng.uniform(-0.5, 0.5, count)
    ycoords = ygrid.ravel()[:count] + rng.uniform(-0.5, 0.5, count)
    raw = folder / f"patterns-{count}.bin"
    with open(raw, "wb") as handle:
        for start in range(0, count, 4096):
            rows = min(4096, count - start)
            handle.write(rng.random((rows, PATTERN_SIZE, PATTERN_SIZE), dtype=np.float32).tobytes())
    patterns = RowFile.open(raw, 0, (count, PATTERN_SIZE, PATTERN_SIZE), np.float32, source=str(raw))
    probe = make_probe(ProbeKind.APERTURE, PATTERN_SIZE, PROBE_DIAMETER_PX).astype(np.complex64)
    dataset = PtychoDataset(patterns, xcoords, ycoords, probe, None, np.arange(count, dtype=np.int64), {"source": "benchmark"})
    path = folder / f"test-{count}.npz"
    save_dataset(dataset, path)
    raw.unlink()
    return path


def write_bundle(folder: Path) -> Path:
    """An untrained model for 64 x 64 patterns (its window follows the probe, as in training)."""
    import torch

    from ptycho import physics
    from ptycho.bundle import save_bundle
    from ptycho.config import ProbeKind
    from ptycho.model import Architecture, build_models
    from ptycho.simulate import make_probe

    torch.manual_seed(0)
    probe = make_probe(ProbeKind.APERTURE, PATTERN_SIZE, PROBE_DIAMETER_PX).astype(np.complex64)
    architecture = Architecture(N=PATTERN_SIZE, gridsize=1, n_filters_scale=0.5, window_px=physics.probe_window(probe, 0.99))
    unit_probe, _ = physics.calibrate_probe(probe, np.ones((1, PATTERN_SIZE, PATTERN_SIZE), np.float32))
    autoencoder, diffraction_to_obj = build_models(architecture, unit_probe, 1.0)
    path = folder / "wts.h5.zip"
    save_bundle(path, autoencoder, diffraction_to_obj, architecture, extras={"config.json": b'{"model": {"n_neighbours": 1}}'})
    return path


def run_child(command: list[str], folder: Path) -> dict:
    """Run ``command``; its wall time and its own peak resident memory (bytes; Linux reports KiB)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    error = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{error[-2000:]}")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"peak_rss_bytes": peak, "wall_s": seconds}


def infer_command(scan: Path, bundle: Path, out: Path, in_memory: bool) -> list[str]:
    files = ["--reconstruction", str(out / "reconstruction.npz"), "--figure", str(out / "reconstruction.png"),
             "--stats", str(out / "infer_stats.json")]
    if in_memory:
        return [sys.executable, "-m", "ptycho.benchmarks.scale", "--child-in-memory", str(scan), str(bundle), *files]
    return [sys.executable, "-m", "ptycho.cli", "infer", "--params", str(out / "params.yaml"), "--test-data", str(scan),
            "--bundle", str(bundle), *files, "--product", str(out / "reconstruction_product.h5")]


def child_in_memory(argv: list[str]) -> int:
    """The comparison child: the whole scan and every placed patch held in memory, same workflow otherwise."""
    from ptycho import inference, workflows
    from ptycho.config import InferConfig
    from ptycho.data import load_dataset

    scan, bundle, _, reconstruction, _, figure, _, stats = argv
    inference.MAX_PATCH_BYTES = 1 << 62
    workflows.infer(load_dataset(scan), bundle, InferConfig(), reconstruction, figure, stats)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-in-memory":
        return child_in_memory(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m ptycho.benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000], help="numbers of scan positions")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; medians are reported")
    parser.add_argument("--in-memory", action="store_true", help="also run the in-memory comparison child")
    parser.add_argument("--folder", default="", help="where the scans go (default: a temporary folder, removed)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="infer.precision of the runs")
    parser.add_argument("--output", default="results/scale_benchmark.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.folder or None) as temporary:
        folder = Path(temporary)
        # The defaults of params.yaml's infer: section, but for the precision
        (folder / "params.yaml").write_text(f"infer: {{precision: {args.precision}}}\n")
        bundle = write_bundle(folder)
        report = {"pattern_size": PATTERN_SIZE, "step_px": STEP_PX, "repeats": args.repeats, "precision": args.precision,
                  "load_average_1min_before": os.getloadavg()[0], "sizes": {}}
        for count in args.sizes:
            scan = write_scan(folder, count)
            entry: dict = {"scan_file_bytes": scan.stat().st_size}
            for mode in ("by_rows", "in_memory") if args.in_memory else ("by_rows",):
                runs = []
                for _ in range(args.repeats):
                    runs.append(run_child(infer_command(scan, bundle, folder, mode == "in_memory"), folder))
                    runs[-1]["reconstruct_s"] = json.loads((folder / "infer_stats.json").read_text())["wall_time_s"]
                entry[mode] = {key: statistics.median(run[key] for run in runs) for key in runs[0]} | {"runs": runs}
                shown = entry[mode]
                print(f"{count:>7} positions, {mode:>9}: peak RSS {shown['peak_rss_bytes'] / 2**20:7.0f} MiB, "
                      f"stage {shown['wall_s']:7.1f} s, reconstruction {shown['reconstruct_s']:7.1f} s "
                      f"(medians of {args.repeats}; load {os.getloadavg()[0]:.1f})", flush=True)
            with np.load(folder / "reconstruction.npz") as reconstruction:
                entry["canvas_px"] = list(reconstruction["object"].shape)
            report["sizes"][str(count)] = entry
            scan.unlink()
        report["load_average_1min_after"] = os.getloadavg()[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
