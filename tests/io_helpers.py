"""Small scans with a known answer, shared by the reader tests (tests/test_io_*.py)."""

import numpy as np
import torch

from ptycho import physics


def asymmetric_object(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth complex object with no mirror symmetry (a mirrored sign would show)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    amplitude = 0.6 + 0.3 * np.sin(cols / 5.0 + 0.3 * rows / 7.0) * (cols / width)
    phase = 0.8 * np.cos(rows / 4.0) * (rows / height) + 0.2 * rng.standard_normal((height, width))
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def gaussian_probe(size: int, sigma: float, centre_xy=None) -> np.ndarray:
    """A Gaussian probe centred on pixel (N/2, N/2) (or centre_xy), with a mild phase curvature."""
    cx, cy = (size / 2, size / 2) if centre_xy is None else centre_xy
    rows, cols = np.mgrid[0:size, 0:size]
    radius2 = (cols - cx) ** 2 + (rows - cy) ** 2
    return (np.exp(-radius2 / (2 * sigma**2)) * np.exp(1j * 0.01 * radius2)).astype(np.complex64)


def amplitudes(obj: np.ndarray, probe: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Our forward model (DESIGN.md §2): |fftshift(fft2(P O_window))|, windows centred at (x, y)."""
    with torch.no_grad():
        patches = physics.extract_patches(torch.from_numpy(obj), torch.from_numpy(x), torch.from_numpy(y), probe.shape[-1])
        return physics.forward_amplitude(patches, torch.from_numpy(probe)).numpy()
