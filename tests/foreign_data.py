"""An independent builder of ptychography test scans: it shares no code with ``ptycho``.

Why: a bug in a convention that ``ptycho.simulate`` and the network share (a probe scale, a
window, a sign) is invisible on data the project made itself. This module writes canonical
NPZ files (DESIGN.md §5) with its own object family, probe, scan and forward model, all in
plain numpy, the way another group's simulator would:

- object: random overlapping discs, each multiplying the transmission by a constant
  amplitude and phase (piecewise constant, sharp edges), unlike the project's smooth fields;
- probe: a zone-plate-like annular pupil, defocused by a Fresnel phase on a 4x larger grid
  and cropped to N x N: a wide ring with fringes; stored **max-normalised** (max |P| = 1),
  i.e. not photon-calibrated, as real files store it;
- scan: a raster on whole pixels with integer jitter;
- forward model: integer windows ``O[y - N/2 : y + N/2, x - N/2 : x + N/2]``, exit wave
  ``P * O``, ``fftshift(fft2(., norm="ortho"))``, counts ~ Poisson at ``nphotons`` per
  pattern, amplitude = sqrt(counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def disc_object(size_px: int, rng: np.random.Generator, n_discs: int | None = None) -> np.ndarray:
    """(size_px, size_px) complex64: unit transmission times overlapping random discs."""
    rows, cols = np.mgrid[0:size_px, 0:size_px]
    n_discs = n_discs if n_discs is not None else max(8, size_px**2 // 250)
    amplitude = np.ones((size_px, size_px))
    phase = np.zeros((size_px, size_px))
    for _ in range(n_discs):
        radius = rng.uniform(3.0, 14.0)
        row, col = rng.uniform(0, size_px, 2)
        inside = (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
        amplitude[inside] *= rng.uniform(0.65, 0.95)
        phase[inside] += rng.uniform(-0.6, 0.6)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def defocused_ring_probe(size: int, spot_diameter_px: float, stop: float = 0.6, pupil_radius: float = 0.3) -> np.ndarray:
    """(N, N) complex64 probe with max |P| = 1: an annular pupil defocused to a ring.

    The pupil passes spatial frequencies between ``stop * pupil_radius`` and ``pupil_radius``
    (cycles per pixel); the Fresnel phase pi z f^2 spreads the focus into a geometric spot
    of about ``spot_diameter_px`` (z = diameter / (2 pupil_radius)). Computed on a 4N grid so
    the ring does not wrap, then cropped to the central N x N.
    """
    big = 4 * size
    frequency = np.fft.fftfreq(big)
    radius = np.hypot(*np.meshgrid(frequency, frequency, indexing="ij"))
    defocus = spot_diameter_px / (2.0 * pupil_radius)
    pupil = ((radius <= pupil_radius) & (radius >= stop * pupil_radius)) * np.exp(1j * np.pi * defocus * radius**2)
    probe = np.fft.fftshift(np.fft.ifft2(pupil))
    centre = big // 2
    probe = probe[centre - size // 2 : centre + size // 2, centre - size // 2 : centre + size // 2]
    return (probe / np.abs(probe).max()).astype(np.complex64)


def raster_positions(n_per_side: int, step_px: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Whole-pixel window centres on a jittered raster, and the object side that holds them."""
    ticks = size // 2 + 2 + step_px * np.arange(n_per_side)
    ys, xs = np.meshgrid(ticks, ticks, indexing="ij")
    xs = xs.ravel() + rng.integers(-1, 2, xs.size)
    ys = ys.ravel() + rng.integers(-1, 2, ys.size)
    object_px = int(max(xs.max(), ys.max()) + size // 2 + 3)
    return xs.astype(np.float64), ys.astype(np.float64), object_px


def far_field_intensity(obj: np.ndarray, probe: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(M, N, N) |fftshift(fft2(P * O_window, norm='ortho'))|^2 on integer windows."""
    size = probe.shape[0]
    half = size // 2
    windows = np.stack([obj[int(y) - half : int(y) + half, int(x) - half : int(x) + half] for x, y in zip(xs, ys)])
    far = np.fft.fftshift(np.fft.fft2(probe * windows, norm="ortho"), axes=(-2, -1))
    return np.abs(far) ** 2


def build_scan(
    size: int = 32,
    n_per_side: int = 12,
    step_px: int = 5,
    spot_diameter_px: float = 24.0,
    nphotons: float = 1e6,
    seed: int = 0,
    probe_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """One scan as the arrays of a canonical NPZ (diffraction amplitudes, positions, probe, object).

    ``nphotons`` is the mean total count per pattern; the stored probe is max-normalised
    times ``probe_scale`` (its units say nothing about the counts).
    """
    rng = np.random.default_rng(seed)
    probe = defocused_ring_probe(size, spot_diameter_px)
    xs, ys, object_px = raster_positions(n_per_side, step_px, size, rng)
    obj = disc_object(object_px, rng)
    intensity = far_field_intensity(obj, probe, xs, ys)
    counts = rng.poisson(intensity * (nphotons / intensity.sum(axis=(1, 2)).mean()))
    metadata = {"source": "tests/foreign_data.py", "nphotons": nphotons, "probe_units": "max |P| = 1 (arbitrary)"}
    return {
        "diffraction": np.sqrt(counts).astype(np.float32),
        "xcoords": xs,
        "ycoords": ys,
        "probeGuess": (probe * probe_scale).astype(np.complex64),
        "objectGuess": obj,
        "metadata": np.array(json.dumps(metadata)),
    }


def write_scan(path: str | Path, **options) -> Path:
    """Write ``build_scan(**options)`` to ``path`` with plain ``np.savez`` and return the path."""
    path = Path(path)
    np.savez(path, **build_scan(**options))
    return path
