"""The forward model of the iterative engine, as the loops run it (DESIGN.md §2).

Frame. The object is reconstructed on the canvas of :func:`ptycho.stitching.canvas_frame`:
canvas pixel [r, c] sits at x = x0 + c, y = y0 + r (``origin = (x0, y0)``), the frame of
:class:`ptycho.reconstruction.Reconstruction`.

Model. Position j (window centre (x_j, y_j)) is split into an integer window and a sub-pixel
remainder (``stitching.window_geometry``: ``x_j = X_j + f_j`` with ``X_j = floor(x_j + 1/2)``,
``f_j`` in [-1/2, 1/2), rows likewise). The object patch is the exact integer window
``O[Y_j - N/2 + r, X_j - N/2 + c]`` (no interpolation of the object), and the remainder is
carried by the **probe, translated by +f_j** (content moves by +f, the sign of
``physics.translate``) with a Fourier shift (``physics.fourier_translate``).
Why this is the network's model: the data model is psi = P[r, c] O(Y - N/2 + r + f_y,
X - N/2 + c + f_x); substituting r -> r - f_y, c -> c - f_x gives the exit wave
P(r - f_y, c - f_x) O[Y - N/2 + r, X - N/2 + c], i.e. (translated probe) x (integer window),
translated by -f as a whole, and a translation of the exit wave only multiplies its far field
by a phase ramp, which |F| does not see. Two approximations remain and are stated here: the
Fourier shift is periodic (the probe must be small against the N x N window, as it must be
anyway) and the simulated data sample the object bilinearly (``physics.extract_patches``),
which low-pass filters sub-pixel windows slightly. Measured on the test suite's simulated scan
(true object, N = 32): normalised amplitude error 0.5 % with the probe shift, 2.2 % when the
remainder is ignored (integer rounding alone), and worse with the mirrored sign.

The loops work in the detector's unshifted frame (``physics.propagate``; measured patterns
moved there once with ``physics.uncentre``): ``fftshift`` is a permutation, so this is the same
numbers without two permutations per pattern. Incoherent modes (K, N, N) add intensities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ptycho import physics
from ptycho.stitching import window_geometry


@dataclass(frozen=True, eq=False)
class Windows:
    """The scan's N x N windows on an (H, W) canvas, as flat indices into the canvas.

    rows0, cols0: (P,) int64 canvas pixel of each window's [0, 0] corner; corners: (P,) their
    flat indices; offsets: (1, N*N) flat offsets of a window's pixels, so that window j is
    ``corners[j] + offsets``; remainder: (P, 2) float64 sub-pixel remainders (f_x, f_y).
    """

    rows0: np.ndarray
    cols0: np.ndarray
    corners: torch.Tensor
    offsets: torch.Tensor
    remainder: torch.Tensor
    size: int
    shape: tuple[int, int]

    @classmethod
    def on_canvas(cls, xcoords: np.ndarray, ycoords: np.ndarray, size: int, origin: tuple[int, int], shape: tuple[int, int]) -> "Windows":
        """The windows of positions (P,) on the canvas at ``origin`` of ``shape`` (H, W).

        Raises ValueError when a window leaves the canvas (a flat index would wrap silently).
        """
        rows0, cols0, remainder = window_geometry(xcoords, ycoords, size, origin)
        height, width = shape
        if rows0.min() < 0 or cols0.min() < 0 or rows0.max() + size > height or cols0.max() + size > width:
            raise ValueError(f"probe windows (N={size}) fall outside the {height} x {width} canvas")
        offsets = torch.arange(size).view(-1, 1) * width + torch.arange(size).view(1, -1)
        return cls(
            rows0, cols0, torch.from_numpy(rows0 * width + cols0), offsets.reshape(1, -1),
            torch.from_numpy(remainder), size, (height, width),
        )

    def index(self, positions: torch.Tensor | slice) -> torch.Tensor:
        """Flat canvas indices (B, N*N) of the windows of ``positions`` (indices (B,) or a slice)."""
        # index_select, not corners[...]: the same gather without a parallel region per call
        corners = self.corners[positions] if isinstance(positions, slice) else self.corners.index_select(0, positions)
        return corners.view(-1, 1) + self.offsets


def translate_modes(probe: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Probe (N, N) or modes (K, N, N) translated by each of P shifts (P, 2) -> (P, K, N, N) (``physics.fourier_translate``)."""
    return torch.stack([physics.fourier_translate(mode, shift_xy) for mode in probe.reshape(-1, *probe.shape[-2:])], dim=1)


def gather_patches(flat_object: torch.Tensor, window_index: torch.Tensor, size: int) -> torch.Tensor:
    """Object windows (B, 1, N, N) of the flat canvas object (H*W,) at flat indices (B, N*N)."""
    return flat_object.index_select(0, window_index.view(-1)).view(-1, 1, size, size)


def forward(probes: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward step: (exit waves psi (B, K, N, N), far field F (B, K, N, N), modulus (B, N, N)).

    probes: (B, K, N, N) translated probe modes; patches: (B, 1, N, N) object windows.
    F = fft2(psi, norm="ortho") unshifted (``physics.propagate``); modulus = sqrt(Σ_k |F_k|²).
    """
    exit_waves = probes * patches
    far = physics.propagate(exit_waves)
    modulus = torch.sqrt((far.real**2 + far.imag**2).sum(dim=1))
    return exit_waves, far, modulus


def model_amplitudes(
    obj: torch.Tensor, origin: tuple[int, int], xcoords: np.ndarray, ycoords: np.ndarray, probe: torch.Tensor
) -> torch.Tensor:
    """The engine's forward model as data: sqrt(Σ_k |F(P_kj · O_window_j)|²) (P, N, N), centred, for a canvas object (H, W).

    probe: (N, N), or (K, N, N) incoherent modes. The same ``Windows``, ``translate_modes``,
    ``gather_patches`` and ``forward`` the loops run, for every position at once. Every window
    must lie inside the canvas.
    """
    size = probe.shape[-1]
    windows = Windows.on_canvas(xcoords, ycoords, size, origin, tuple(obj.shape))
    everything = slice(None)
    patches = gather_patches(obj.reshape(-1), windows.index(everything), size)
    _, _, modulus = forward(translate_modes(probe, windows.remainder), patches)
    return physics.centre(modulus)


def coverage_map(windows: Windows, probes_of, batch_size: int) -> torch.Tensor:
    """Illumination map (H, W) float32: Σ_j Σ_k |P_kj|² placed at each window.

    probes_of(chunk: slice) -> (B, K, N, N): the translated probes of those positions. Batch by
    batch: all P translated probes at once would be O(P) memory.
    """
    height, width = windows.shape
    coverage = torch.zeros(height * width, dtype=torch.float32)
    for start in range(0, len(windows.corners), batch_size):
        chunk = slice(start, start + batch_size)
        coverage.index_add_(0, windows.index(chunk).reshape(-1), (probes_of(chunk).abs() ** 2).sum(dim=1).reshape(-1))
    return coverage.view(height, width)
