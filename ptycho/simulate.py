"""Simulated ptychography scans: objects, probes, scan paths and noisy far-field patterns.

Every random draw comes from a ``numpy.random.Generator`` passed in by the caller, so a seed
reproduces a data set exactly. Patterns are made with the same physics functions the network
trains with (``ptycho.physics``), so simulation and model share one convention.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ptycho import physics
from ptycho.config import ObjectKind, PrepareConfig, ProbeKind, ScanKind, as_enum
from ptycho.errors import ConfigError
from ptycho.data import PtychoDataset


def _unit_range(field: np.ndarray) -> np.ndarray:
    """Map a field linearly onto [0, 1] (robust to outliers: 1st and 99th percentiles)."""
    low, high = np.percentile(field, [1, 99])
    return np.clip((field - low) / max(high - low, 1e-12), 0.0, 1.0)


def gaussian_random_field(shape: tuple[int, int], correlation_px: float, rng: np.random.Generator) -> np.ndarray:
    """White noise low-pass filtered by a Gaussian of width ``correlation_px``, scaled to [0, 1]."""
    return _unit_range(ndimage.gaussian_filter(rng.standard_normal(shape), correlation_px, mode="wrap"))


def random_lines(shape: tuple[int, int], width_px: float, rng: np.random.Generator) -> np.ndarray:
    """Straight lines of random position, angle and strength, blurred, scaled to [0, 1]."""
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width].astype(float)
    canvas = np.zeros(shape)
    n_lines = max(4, int(0.5 * (height + width) / (4 * width_px)))
    for _ in range(n_lines):
        angle = rng.uniform(0, np.pi)
        row0, col0 = rng.uniform(0, height), rng.uniform(0, width)
        distance = np.abs((rows - row0) * np.cos(angle) - (cols - col0) * np.sin(angle))
        canvas += rng.uniform(0.3, 1.0) * (distance < 0.5 * width_px)
    return _unit_range(ndimage.gaussian_filter(canvas, 0.25 * width_px))


def make_object(
    kind: ObjectKind,
    size_px: int,
    amplitude_range: tuple[float, float],
    phase_max_rad: float,
    feature_px: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A square complex object (size_px, size_px): structured amplitude and phase from two fields.

    Amplitude spans amplitude_range (thick = dark), phase spans [-phase_max_rad, +phase_max_rad].
    """
    shape = (size_px, size_px)
    match as_enum(ObjectKind, kind, "object_kind"):
        case ObjectKind.GRF:
            amplitude_field = gaussian_random_field(shape, feature_px, rng)
            phase_field = gaussian_random_field(shape, feature_px, rng)
        case ObjectKind.LINES:
            amplitude_field = random_lines(shape, feature_px, rng)
            phase_field = random_lines(shape, feature_px, rng)
        case other:
            raise ConfigError(f"object_kind: {other!r} has no object generator")
    low, high = amplitude_range
    amplitude = high - (high - low) * amplitude_field
    phase = phase_max_rad * (2.0 * phase_field - 1.0)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def make_probe(kind: ProbeKind, size: int, diameter_px: float) -> np.ndarray:
    """A centred (N, N) probe with peak amplitude 1.

    aperture: the focus of a circular aperture with a soft (apodised) edge, as from focusing
    optics with a finite edge profile: an Airy-like central lobe with weaker side lobes, and a
    mild defocus phase across the aperture so that the lobes carry phase structure;
    ``diameter_px`` is the first-zero diameter of the central lobe of the hard-edged aperture.
    The soft edge (pupil edge blurred by a Gaussian of a sixth of the aperture radius) keeps
    99 % of the probe intensity inside the central N/2 x N/2 window, the window the network
    predicts, for a diameter of N/4 (a hard edge leaves 8 % in far rings that no
    central-window object can explain, and the network then learns a distorted object).
    gaussian: a Gaussian of full width at half maximum ``diameter_px``.
    """
    centred = np.arange(size) - size // 2
    rows, cols = np.meshgrid(centred, centred, indexing="ij")
    radius = np.hypot(rows, cols)
    match as_enum(ProbeKind, kind, "probe_kind"):
        case ProbeKind.GAUSSIAN:
            sigma = diameter_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
            probe = np.exp(-(radius**2) / (2.0 * sigma**2)).astype(complex)
        case ProbeKind.APERTURE:
            # An aperture of radius R (frequency pixels) focuses to an Airy disc with first zero
            # at 0.61 N / R pixels, so R = 1.22 N / diameter.
            aperture_radius = 1.22 * size / diameter_px
            edge = ndimage.gaussian_filter((radius <= aperture_radius).astype(float), aperture_radius / 6)
            pupil = edge * np.exp(1j * 1.0 * (radius / aperture_radius) ** 2)
            probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
        case other:
            raise ConfigError(f"probe_kind: {other!r} has no probe generator")
    return (probe / np.abs(probe).max()).astype(np.complex64)


def make_scan(
    kind: ScanKind,
    object_px: int,
    size: int,
    step_px: float,
    jitter_px: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Probe-window centres (xcoords, ycoords) inside a square object of side ``object_px``.

    ``kind`` is a ScanKind or its string ("grid", ...); anything else raises ConfigError.
    Centres stay in [N/2 + 1, object_px - N/2 - 1] so every N x N window, sub-pixel shifts
    included, lies inside the object. grid: raster with spacing step_px plus uniform jitter of
    +-jitter_px; random: uniform, as many points as the grid; spiral: Fermat spiral with one
    point per step_px**2 of area.
    """
    low, high = size / 2 + 1, object_px - size / 2 - 1
    extent = high - low
    n_per_side = int(np.floor(extent / step_px)) + 1
    match as_enum(ScanKind, kind, "scan_kind"):
        case ScanKind.GRID:
            ticks = low + (extent - step_px * (n_per_side - 1)) / 2 + step_px * np.arange(n_per_side)
            ycoords, xcoords = (a.ravel() for a in np.meshgrid(ticks, ticks, indexing="ij"))
            xcoords = xcoords + rng.uniform(-jitter_px, jitter_px, xcoords.shape)
            ycoords = ycoords + rng.uniform(-jitter_px, jitter_px, ycoords.shape)
        case ScanKind.RANDOM:
            xcoords = rng.uniform(low, high, n_per_side**2)
            ycoords = rng.uniform(low, high, n_per_side**2)
        case ScanKind.SPIRAL:
            index = np.arange(4 * n_per_side**2)
            radius = step_px / np.sqrt(np.pi) * np.sqrt(index)
            angle = index * np.deg2rad(137.508)
            centre = (low + high) / 2
            xcoords = centre + radius * np.cos(angle)
            ycoords = centre + radius * np.sin(angle)
            inside = (np.abs(xcoords - centre) <= extent / 2) & (np.abs(ycoords - centre) <= extent / 2)
            xcoords, ycoords = xcoords[inside], ycoords[inside]
        case other:
            raise ConfigError(f"scan_kind: {other!r} has no scan generator")
    return np.clip(xcoords, low, high).astype(np.float64), np.clip(ycoords, low, high).astype(np.float64)


def noise_free_amplitudes(
    obj: np.ndarray, probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray
) -> np.ndarray:
    """|F(P * O_patch)| at every position: (M, N, N) float64, the forward model of DESIGN.md §2.

    Computed in float64 with numpy's FFT (pocketfft), not torch's float32 FFT: MKL picks its
    code path by CPU, and a last-bit difference in a rate flips a few Poisson draws, so the
    simulated data (and every stage after them) would differ from one machine to the next.
    The patches come from ``physics.extract_patches`` (the convention the network trains with),
    in complex128; the FFT is ``physics.far_field``'s, written with numpy.
    """
    with torch.no_grad():
        patches = physics.extract_patches(
            torch.from_numpy(obj.astype(np.complex128)), torch.from_numpy(xcoords.astype(np.float64)),
            torch.from_numpy(ycoords.astype(np.float64)), probe.shape[0],
        ).numpy()
    exit_waves = patches * probe.astype(np.complex128)
    return np.abs(np.fft.fftshift(np.fft.fft2(exit_waves, norm="ortho"), axes=(-2, -1)))


def photon_scale(amplitudes: np.ndarray, nphotons: float) -> float:
    """Factor s such that the mean total count per pattern of (s * A)**2 equals nphotons."""
    return float(np.sqrt(nphotons / np.mean(np.sum(np.square(amplitudes, dtype=np.float64), axis=(1, 2)))))


def simulate_scan(
    obj: np.ndarray,
    probe: np.ndarray,
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    noise: bool,
    rng: np.random.Generator,
    metadata: dict,
) -> PtychoDataset:
    """Diffraction amplitudes sqrt(counts) with counts ~ Poisson(|F(P * O_patch)|**2).

    ``probe`` must already carry the photon scale (see ``calibrated_probe``), so the expected
    counts are exactly |F(P * O_patch)|**2 and the stored probe explains the data with no
    further factor.
    """
    expected = noise_free_amplitudes(obj, probe, xcoords, ycoords) ** 2
    counts = rng.poisson(expected) if noise else expected
    return PtychoDataset(
        amplitudes=np.sqrt(counts).astype(np.float32),
        xcoords=xcoords,
        ycoords=ycoords,
        probe=probe,
        object=obj,
        scan_index=np.arange(len(xcoords), dtype=np.int64),
        metadata={**metadata, "noise": "poisson" if noise else "none"},
    )


def calibrated_probe(obj: np.ndarray, probe: np.ndarray, xcoords, ycoords, nphotons: float) -> np.ndarray:
    """The probe scaled so that the mean total count per pattern on this scan equals nphotons."""
    scale = photon_scale(noise_free_amplitudes(obj, probe, xcoords, ycoords), nphotons)
    return (probe * scale).astype(np.complex64)


def simulate_train_test(config: PrepareConfig) -> tuple[PtychoDataset, PtychoDataset]:
    """Train and test scans of two different object instances of the same kind, one seed.

    The photon scale is set on the training scan and the same calibrated probe is used for
    the test scan (one instrument), so the test patterns have about, not exactly, nphotons.
    """
    rng = np.random.default_rng(config.seed)
    probe = make_probe(config.probe_kind, config.N, config.probe_diameter_px)
    amplitude_range = (config.amplitude_min, config.amplitude_max)
    metadata = {
        "source": "simulate",
        "nphotons": config.nphotons,
        "object_kind": config.object_kind.value,
        "probe_kind": config.probe_kind.value,
        "scan_kind": config.scan_kind.value,
        "step_px": config.step_px,
        "seed": config.seed,
        "diffraction_quantity": "amplitude",
        "units": "amplitude = sqrt(photon counts); positions in object pixels",
    }
    scans = []
    for role, object_px in (("train", config.train_object_px), ("test", config.test_object_px)):
        obj = make_object(config.object_kind, object_px, amplitude_range, config.phase_max_rad, config.feature_px, rng)
        xcoords, ycoords = make_scan(config.scan_kind, object_px, config.N, config.step_px, config.jitter_px, rng)
        if role == "train":
            probe = calibrated_probe(obj, probe, xcoords, ycoords, config.nphotons)
        scans.append(simulate_scan(obj, probe, xcoords, ycoords, config.noise, rng, {**metadata, "role": role}))
    return scans[0], scans[1]
