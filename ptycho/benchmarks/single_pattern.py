"""What one pattern can tell: per-pattern fits from several starts, against the data and the truth.

    ptycho benchmark single_pattern --bundle models/wts.h5.zip --data data/prepared/test.npz [--iterations 0,5,200]

(``python -m ptycho.benchmarks.single_pattern`` runs the same.) Every pattern of the scan gets three
starting patches: the network's (the bundle's, as `infer` predicts it), a flat one (1 in the network's
window) and, where the data hold a ground truth, the true patch cut to that window (scaled to the
counts by least squares). Each is fitted to its own pattern alone by ``iterative.single.fit_patterns``
(`infer`'s alpha) for every count of ``--iterations``. Reported per start and count: the data R-factor
of the patches against their own patterns (``metrics.r_factor``, valid detector pixels), and with a
truth the mean probe-weighted correlation of each patch with the true one (``twin.correlation``: 1 =
the same up to a constant phase).

How to read it: when starts that stay different from the truth reach the R-factor of the truth itself,
one pattern no longer tells them apart, and only the overlap of neighbouring patterns can; when every
start reaches R = 0 the window holds more unknowns than the pattern has measurements. On the default
data, after 200 iterations, the network's, the flat and the true patch fit equally well (R-factor
0.0164 / 0.0169 / 0.0163) at correlations of 0.989 / 0.961 / 0.998; on the foreign builder's ring
probe (window = N) every start fits exactly. Not a test: a diagnostic of the data, the probe and the window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ptycho import metrics, physics, twin
from ptycho.bundle import load_bundle
from ptycho.data import load_dataset
from ptycho.errors import ConfigError, DataError
from ptycho.files import json_bytes, write_atomically
from ptycho.inference import CONSISTENCY_ALPHA
from ptycho.iterative.single import fit_patterns


def r_factor(patches: torch.Tensor, amplitudes: torch.Tensor, probe: torch.Tensor, valid: torch.Tensor | None) -> float:
    """``metrics.r_factor`` of the patches against their own patterns (unshifted frame), on the valid detector pixels."""
    modulus = physics.propagate(probe * patches).abs()
    if valid is not None:
        modulus, amplitudes = modulus[..., valid], amplitudes[..., valid]
    return metrics.r_factor(amplitudes.numpy(), modulus.numpy())


def scaled_truth(truth: torch.Tensor, amplitudes: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """The true patches times the one factor that best explains the counts (least squares on the amplitudes)."""
    modulus = physics.propagate(probe * truth).abs()
    return truth * float(torch.sum(modulus * amplitudes) / torch.sum(modulus**2).clamp(min=1e-30))


def diagnose(bundle_path: str | Path, data_path: str | Path, iterations: list[int]) -> dict:
    """Per start (network, flat, truth) and per iteration count: R-factor and, with a truth, correlation."""
    bundle = load_bundle(bundle_path)
    data = load_dataset(data_path)
    network = bundle.diffraction_to_obj.eval()
    size, support = bundle.architecture.N, network.support
    if bundle.architecture.gridsize != 1:
        raise ConfigError(f"benchmark single_pattern --bundle: {bundle_path} is a gridsize {bundle.architecture.gridsize} model; this diagnostic needs gridsize 1")
    if data.pattern_size != size:
        raise DataError(f"benchmark single_pattern --data: key 'diffraction': {data_path} has {data.pattern_size} px patterns, {bundle_path} expects {size} px")
    probe = torch.from_numpy(np.asarray(bundle.probe, dtype=np.complex64))
    measured = torch.from_numpy(np.asarray(data.amplitudes[:], dtype=np.float32))
    amplitudes = physics.uncentre(measured)
    valid = None if data.mask is None else physics.uncentre(torch.from_numpy(data.mask))
    with torch.inference_mode():
        starts = {"network": network(measured[:, None], torch.zeros(len(measured), 1, 2))[:, 0].to(torch.complex64),
                  "flat": torch.ones(len(measured), size, size, dtype=torch.complex64) * support}
        truth = None
        if data.object is not None:
            truth = physics.extract_patches(torch.from_numpy(data.object.astype(np.complex64)), torch.from_numpy(data.xcoords.astype(np.float64)),
                                            torch.from_numpy(data.ycoords.astype(np.float64)), size)
            starts["truth"] = scaled_truth(truth * support, amplitudes, probe)
        weights = (probe.abs() ** 2) * support
        report: dict = {"n_patterns": len(measured), "pattern_px": size, "window_px": bundle.architecture.window_px, "alpha": CONSISTENCY_ALPHA, "starts": {}}
        for name, start in starts.items():
            rows = []
            for count in iterations:
                fitted = fit_patterns(start, amplitudes, probe, count, rpie_alpha=CONSISTENCY_ALPHA, floor=1e-30, support=support, valid=valid)
                row = {"iterations": count, "r_factor": r_factor(fitted, amplitudes, probe, valid)}
                if truth is not None:
                    row["correlation_with_truth"] = float(twin.correlation(fitted, truth, weights).mean())
                rows.append(row)
            report["starts"][name] = rows
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ptycho benchmark single_pattern", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="models/wts.h5.zip")
    parser.add_argument("--data", default="data/prepared/test.npz")
    parser.add_argument("--iterations", default="0,5,200", help="comma-separated counts of single-pattern iterations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="results/single_pattern.json")
    args = parser.parse_args(argv)
    try:
        iterations = sorted({int(part) for part in args.iterations.split(",")})
    except ValueError:
        parser.error(f"--iterations: expected comma-separated integers, got {args.iterations!r}")
    if iterations[0] < 0:
        parser.error(f"--iterations: counts must be >= 0, got {iterations[0]}")
    torch.set_num_threads(args.threads)
    report = diagnose(args.bundle, args.data, iterations)
    for name, rows in report["starts"].items():
        for row in rows:
            truth = f", correlation with the truth {row['correlation_with_truth']:.4f}" if "correlation_with_truth" in row else ""
            print(f"{name:8s} + {row['iterations']:4d} iterations: per-pattern R-factor {row['r_factor']:.4f}{truth}")
    write_atomically(args.output, json_bytes(report))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
