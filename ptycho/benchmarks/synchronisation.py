"""Phase-synchronisation benchmark: time and accuracy of ``ptycho.synchronisation`` against the number of patches.

    python -m ptycho.benchmarks.synchronisation [--sizes 1000 10000 50000] [--repeats 3] [--solvers tiled global] [--noise 0.3] [--output FILE]

For each size, ideal patches are cut from a smooth phase object on a jittered square raster
(box 33 x 33 px: the stitched box of the central 32 x 32 window of N = 64 patterns, step 8 px as
in the default data), weighted by a Gaussian probe intensity, and each patch gets a random phase
offset. ``patch_phases`` then recovers the offsets (all patches in memory). Reported per size,
as medians over the repeats: wall time, overlapping pairs, and the largest error of the
recovered offsets after removing their common phase (rad).

Not a test: the time depends on the machine and on what else runs on it; quote the load.
The patch-by-patch matching that inference used before took 8.6 s for 600 positions (issue 8).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch

from ptycho.synchronisation import overlap_products, overlapping_pairs, patch_phases, scan_phases

BOX_PX = 33
STEP_PX = 8


def make_patches(count: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(boxes (P, h, w) complex64, corners (P, 2) int, true offsets (P,)) for ``count`` patches."""
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(count))
    ticks = STEP_PX * np.arange(side)
    rows, cols = np.meshgrid(ticks, ticks, indexing="ij")
    corners = np.stack((rows.ravel()[:count], cols.ravel()[:count]), axis=1) + rng.integers(-1, 2, (count, 2)) + 1
    extent = int(corners.max()) + BOX_PX + 1
    yy, xx = np.mgrid[:extent, :extent] / extent
    phase = 2.0 * np.sin(6.0 * xx) * np.cos(5.0 * yy) + 1.5 * xx  # smooth, several radians across
    canvas = (1.0 + 0.2 * np.cos(9.0 * yy)) * np.exp(1j * phase)
    centre = (BOX_PX - 1) / 2
    grid = np.arange(BOX_PX) - centre
    weight = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * (BOX_PX / 4) ** 2))
    offsets = rng.uniform(-np.pi, np.pi, count)
    index = corners[:, :, None] + np.arange(BOX_PX)[None, None, :]  # (P, 2, BOX_PX)
    patches = canvas[index[:, 0, :, None], index[:, 1, None, :]]
    boxes = (patches * weight * np.exp(1j * offsets)[:, None, None]).astype(np.complex64)
    return torch.from_numpy(boxes), corners, offsets


def largest_error(recovered: np.ndarray, truth: np.ndarray) -> float:
    """Largest |recovered - truth| (rad, wrapped) once the free common phase is removed."""
    difference = np.exp(1j * (recovered - truth))
    common = np.angle(np.mean(difference))
    return float(np.max(np.abs(np.angle(difference * np.exp(-1j * common)))))


def phases_one_eigenproblem(boxes: torch.Tensor, corners: np.ndarray) -> np.ndarray:
    """``patch_phases`` without tiles: one global eigenproblem however large the scan (the comparison)."""
    box = tuple(boxes.shape[-2:])
    pairs = overlapping_pairs(corners, box)
    return scan_phases(len(corners), pairs, overlap_products(boxes, corners, pairs), corners, box, tile_patches=len(corners))


SOLVERS = {"tiled": patch_phases, "global": phases_one_eigenproblem}
"""tiled: what inference does (one eigenproblem up to 4 x TILE_PATCHES patches, tiles beyond);
global: one eigenproblem at every size."""


def run(sizes: list[int], repeats: int, solvers: list[str], noise: float = 0.0) -> list[dict]:
    records = []
    for count in sizes:
        boxes, corners, offsets = make_patches(count)
        if noise:
            generator = torch.Generator().manual_seed(count)
            scale = noise * float(boxes.abs().mean())
            boxes = boxes + scale * torch.randn(boxes.shape, dtype=torch.complex64, generator=generator)
        for solver in solvers:
            times, errors, recovered = [], [], None
            for _ in range(repeats):
                started = time.perf_counter()
                recovered = SOLVERS[solver](boxes, corners)
                times.append(time.perf_counter() - started)
                errors.append(largest_error(recovered, offsets))
            record = {
                "positions": count,
                "solver": solver,
                "noise": noise,
                "pairs": int(len(overlapping_pairs(corners, (BOX_PX, BOX_PX)))),
                "median_s": round(statistics.median(times), 3),
                "times_s": [round(value, 3) for value in times],
                "max_error_rad": float(f"{max(errors):.2e}"),
                "rms_error_rad": float(f"{rms_error(recovered, offsets):.2e}"),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
            print(f"synchronisation ({solver}): {count} positions, {record['pairs']} pairs: median {record['median_s']} s "
                  f"over {repeats} runs, offset error rms {record['rms_error_rad']} / largest {record['max_error_rad']} rad "
                  f"(load {record['load_average_1min']})", flush=True)
            records.append(record)
    return records


def rms_error(recovered: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square |recovered - truth| (rad, wrapped) once the free common phase is removed."""
    difference = np.exp(1j * (recovered - truth))
    return float(np.sqrt(np.mean(np.angle(difference * np.conj(np.mean(difference))) ** 2)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--solvers", nargs="+", choices=sorted(SOLVERS), default=["tiled"],
                        help="tiled: as inference does (tiles beyond 4 x TILE_PATCHES patches); global: one eigenproblem")
    parser.add_argument("--noise", type=float, default=0.0, help="complex Gaussian noise on the patches, times their mean modulus")
    parser.add_argument("--output", default=None, help="JSON file for the records")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    records = run(args.sizes, args.repeats, args.solvers, args.noise)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"threads": torch.get_num_threads(), "records": records}, handle, indent=2)


if __name__ == "__main__":
    main()
