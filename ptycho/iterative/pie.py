"""Iterative reference reconstruction: ePIE and rPIE on the stitching canvas.

The baseline solves the same inverse problem as the network with the same forward model
(DESIGN.md §2), so the two reconstructions can be scored by one evaluation code path.

Frame. The object is reconstructed on the canvas of :func:`ptycho.stitching.canvas_frame`:
canvas pixel [r, c] sits at x = x0 + c, y = y0 + r (``origin = (x0, y0)``), the frame of
:class:`ptycho.reconstruction.Reconstruction`.

Forward model. Position j (window centre (x_j, y_j)) is split into an integer window and a
sub-pixel remainder: ``x_j = X_j + f_j`` with ``X_j = floor(x_j + 1/2)`` (round half up) and
``f_j`` in [-1/2, 1/2) (rows likewise). The object patch is the exact integer window
``O[Y_j - N/2 + r, X_j - N/2 + c]`` (no interpolation of the object), and the remainder is
carried by the **probe, translated by +f_j** (content moves by +f, the sign of
``physics.translate``) with a Fourier shift, ``P_j = ifft2(fft2(P) exp(-2 pi i (kx f_x + ky f_y)))``.
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

Amplitude constraint. F = fftshift(fft2(psi, norm="ortho")); F' = A F / |F|;
psi' = ifft2(ifftshift(F'), norm="ortho"). ``fftshift`` is a permutation, so this is computed
as ifft2(ifftshift(A) * G / |G|) with G = fft2(psi) unshifted, which is the same numbers
without two permutations per pattern.

Updates (one small function per algorithm gives the step weight; everything else is shared).
With Δψ_j = psi'_j - psi_j and, for a batch of positions computed against the same object
and probe, the per-pixel illumination of the batch S(r) = Σ_j |P_j|² (each P_j placed at its
window):

- ePIE (Maiden & Rodenburg, Ultramicroscopy 109, 1256 (2009)):
  O <- O + α Σ_j conj(P_j) Δψ_j / max S.
- rPIE (Maiden, Johnson & Li, Optica 4, 736 (2017)):
  O <- O + α Σ_j conj(P_j) Δψ_j / ((1 - a) S + a max S), a = ``rpie_alpha``.

For ``batch_size = 1`` (the sequential reference) S = |P_j|² and these are exactly the papers'
updates (with α = ``object_step`` = 1 for rPIE as published). For larger batches ("compact"
or parallel PIE) the numerators of all positions of a batch are summed on the canvas and
normalised per pixel by the batch's summed illumination, as in the LSQ / batched-PIE
generalisation: rPIE then tends to the averaged (error-reduction) update
Σ conj(P_j) psi'_j / S where S dominates, and ePIE stays a gradient step with a scalar,
batch-wide step max S (conservative: the overlap of many windows raises max S, so ePIE needs
more iterations with large batches than rPIE).

The probe update is symmetric, with the roles of O and P swapped: the numerator of position j is
conj(O_j) Δψ_j, translated back by -f_j (the adjoint of the probe shift) before it is summed
over the batch; the illumination is T = Σ_j |O_j|² on the N x N probe grid (the sub-pixel
shift is ignored in this denominator, a smooth weight) and the step is β = ``probe_step``.
Object and probe updates of a batch both use the estimates the batch was computed with.
The probe is first calibrated to the counts (``physics.calibrate_probe``: a file's probe is
in arbitrary units), and the probe (calibrated, refined or not) is returned with the
reconstruction, so that the data R-factor re-simulates with the probe that goes with this object.

Cost and memory: per batch B, two FFTs of (B, N, N) plus gathers and ``index_add_`` scatters on
the bounding box of the batch's windows (no Python work per pixel or per position). The
patterns are read batch by batch, so with a dataset that reads them by rows
(``load_dataset(..., by_rows=True)``, as the stages do) they are never held whole. Memory is
the canvas, the positions, one batch, and, for a fixed probe, the M translated probes (cached
up to 512 MiB, else recomputed per batch).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ptycho import physics
from ptycho.config import Algorithm, BaselineConfig
from ptycho.data import PtychoDataset, validate
from ptycho.errors import ConfigError, DataError
from ptycho.reconstruction import Reconstruction
from ptycho.stitching import canvas_frame

_CACHE_LIMIT_BYTES = 512 * 2**20
"""With a fixed probe the M translated probes are computed once if they fit in this memory."""


# --------------------------------------------------------------------------------------------
# Step weights: the only thing ePIE and rPIE do differently.


def epie_weight(illumination: torch.Tensor, step: float, rpie_alpha: float) -> torch.Tensor:
    """ePIE (Maiden & Rodenburg 2009): step / max|P|², one scalar for the whole update."""
    del rpie_alpha
    return torch.full_like(illumination, step) / illumination.max()


def rpie_weight(illumination: torch.Tensor, step: float, rpie_alpha: float) -> torch.Tensor:
    """rPIE (Maiden, Johnson & Li 2017): step / ((1 - a)|P|² + a max|P|²), per pixel."""
    return step / ((1.0 - rpie_alpha) * illumination + rpie_alpha * illumination.max())


STEP_WEIGHTS = {Algorithm.EPIE: epie_weight, Algorithm.RPIE: rpie_weight}


# --------------------------------------------------------------------------------------------
# Geometry and forward model


def window_geometry(
    xcoords: np.ndarray, ycoords: np.ndarray, size: int, origin: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer windows and sub-pixel remainders of window centres (P,) on a canvas at ``origin``.

    Returns (rows0 (P,) int64, cols0 (P,) int64, remainder_xy (P, 2) float64): the canvas
    pixel of each window's [0, 0] corner, rows0 = floor(y + 1/2) - N/2 - y0 (cols0 likewise),
    and (f_x, f_y) = (x, y) - floor((x, y) + 1/2), each in [-1/2, 1/2).
    """
    x0, y0 = origin
    x = np.asarray(xcoords, dtype=np.float64)
    y = np.asarray(ycoords, dtype=np.float64)
    x_int, y_int = np.floor(x + 0.5), np.floor(y + 0.5)
    cols0 = x_int.astype(np.int64) - size // 2 - x0
    rows0 = y_int.astype(np.int64) - size // 2 - y0
    return rows0, cols0, np.stack((x - x_int, y - y_int), axis=-1)


def fourier_translate(images: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Translate N x N images by shifts (P, 2) = (dx, dy) px with a Fourier shift -> (P, N, N).

    images: (N, N) (one image, shifted P ways, e.g. the probe) or (P, N, N) (one shift each).
    Content moves by +d: out[r, c] = image[r - dy, c - dx] for integer d, the sign of
    ``physics.translate``, periodically within the N x N grid. Unitary: the adjoint (and
    inverse) is the translation by -d.
    """
    size = images.shape[-1]
    frequencies = torch.fft.fftfreq(size, dtype=torch.float64)
    shift = shift_xy.to(torch.float64)
    phase = -2.0 * math.pi * (
        shift[:, 0].view(-1, 1, 1) * frequencies.view(1, 1, -1) + shift[:, 1].view(-1, 1, 1) * frequencies.view(1, -1, 1)
    )
    ramp = torch.polar(torch.ones_like(phase), phase).to(torch.complex64)
    return torch.fft.ifft2(torch.fft.fft2(images) * ramp)


def translate_modes(probe: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Probe (N, N) or modes (K, N, N) translated by each of P shifts (P, 2) -> (P, K, N, N) (``fourier_translate``)."""
    return torch.stack([fourier_translate(mode, shift_xy) for mode in probe.reshape(-1, *probe.shape[-2:])], dim=1)


def model_amplitudes(
    obj: torch.Tensor, origin: tuple[int, int], xcoords: np.ndarray, ycoords: np.ndarray, probe: torch.Tensor
) -> torch.Tensor:
    """The baseline's forward model: sqrt(sum_k |F(P_kj · O_window_j)|²) (P, N, N) for a canvas object (H, W).

    probe: (N, N), or (K, N, N) incoherent modes whose intensities add. Integer windows of the
    canvas at ``origin`` and the probe translated by each position's sub-pixel remainder
    (module docstring). Every window must lie inside the canvas.
    """
    size = probe.shape[-1]
    rows0, cols0, remainder = window_geometry(xcoords, ycoords, size, origin)
    corners, offsets = _flat_windows(rows0, cols0, size, obj.shape)
    index = corners.view(-1, 1) + offsets
    probes = translate_modes(probe, torch.from_numpy(remainder))
    patches = obj.reshape(-1).index_select(0, index.view(-1)).view(-1, 1, size, size)
    far = torch.fft.fftshift(torch.fft.fft2(probes * patches, norm="ortho"), dim=(-2, -1))
    return torch.sqrt((far.real**2 + far.imag**2).sum(dim=1))


def _flat_windows(
    rows0: np.ndarray, cols0: np.ndarray, size: int, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corners (P,), offsets (1, N*N)): flat canvas indices of the N x N windows are corners + offsets.

    Raises ValueError when a window leaves the (H, W) canvas (a flat index would wrap silently).
    """
    height, width = shape
    if rows0.min() < 0 or cols0.min() < 0 or rows0.max() + size > height or cols0.max() + size > width:
        raise ValueError(f"probe windows (N={size}) fall outside the {height} x {width} canvas")
    offsets = torch.arange(size).view(-1, 1) * width + torch.arange(size).view(1, -1)
    return torch.from_numpy(rows0 * width + cols0), offsets.reshape(1, -1)


# --------------------------------------------------------------------------------------------
# Reconstruction


def run_baseline(
    data: PtychoDataset,
    settings: BaselineConfig,
    progress: bool = True,
    on_iteration: Callable[[int, torch.Tensor], bool] | None = None,
    initial: Reconstruction | None = None,
) -> tuple[Reconstruction, list[float]]:
    """Reconstruct the object of a scan by ePIE/rPIE (module docstring) from a flat object, or
    refine ``initial`` (a reconstruction of this scan on the same canvas, e.g. the network's).

    data: the scan (amplitudes (M, N, N), positions, probe or incoherent probe modes, optional
    detector mask; ``data.object`` is not used). Masked pixels keep the model's modulus in the
    amplitude constraint and are left out of the error.
    Returns (Reconstruction(object (H, W) complex64, origin, coverage, method="baseline-<algorithm>",
    probe = the probe used, refined when ``update_probe``: (N, N), or (K, N, N) for modes),
    errors): the object on the ``canvas_frame`` canvas, zero where no window reaches (the
    canvas keeps canvas_frame's one-pixel spill-over margin); coverage = Σ_j Σ_k |P_kj|² placed at
    each window (float32, the illumination map); errors[i] = the normalised amplitude error
    sqrt(Σ (|F| - A)² / Σ A²) of sweep i over all patterns (valid pixels), each pattern's |F|
    taken from the estimate in use when that pattern was processed *during* the sweep (no extra
    forward pass; the estimate after the last sweep is slightly better than errors[-1] says).
    ``on_iteration(sweeps_done, object)``, if given, sees the canvas object (H, W) after each
    sweep (not to be modified) and stops the run early by returning True (for benchmarks).
    ``initial``: the start is its object (pixels it does not cover: its median covered
    amplitude, zero phase) with its probe (their scales go together), else the calibrated
    probe of the data; method "refined-<algorithm>".

    Incoherent modes (Thibault & Menzel, Nature 494, 68 (2013)): |F|² = Σ_k |F_k|², every mode's
    far field is scaled by the same A / |F|, the object step uses Σ_k conj(P_k) Δψ_k over the
    illumination Σ_k |P_k|², and each mode gets its own probe step.
    """
    if not isinstance(settings, BaselineConfig):
        raise ConfigError(f"baseline: expected BaselineConfig, got {type(settings).__name__}")
    validate(data, "run_baseline")
    size, count = data.pattern_size, data.n_patterns
    origin, (height, width) = canvas_frame(data.xcoords, data.ycoords, size)
    rows0, cols0, remainder = window_geometry(data.xcoords, data.ycoords, size, origin)
    corners, offsets = _flat_windows(rows0, cols0, size, (height, width))  # window = corners[j] + offsets
    remainder_t = torch.from_numpy(remainder)
    # Patterns are read batch by batch (from their file when the dataset reads them by rows) and
    # ifftshifted as read: the amplitude constraint then works on unshifted fft2 output.
    valid = None if data.mask is None else torch.fft.ifftshift(torch.from_numpy(data.mask), dim=(-2, -1))
    total_energy = float(np.sum(physics.pattern_totals(data.amplitudes)))
    if total_energy <= 0:
        raise DataError("run_baseline: key 'diffraction': all amplitudes are zero; nothing to reconstruct")

    # The file's probe is in arbitrary units: calibrate it (all modes together) to the counts
    # (Parseval, as the network does), so that the flat start |O| = 1 is at the scale of the
    # solution and the result does not depend on the units of the file.
    unit_probe, probe_scale = physics.calibrate_probe(data.all_probe_modes, data.amplitudes)
    probe = torch.from_numpy(unit_probe) * probe_scale  # (K, N, N)
    obj = torch.ones(height, width, dtype=torch.complex64)
    if initial is not None:
        obj, probe = _initial_state(initial, origin, (height, width), probe)
    flat = obj.view(-1)
    cache = None
    if not settings.update_probe and count * probe.shape[0] * size * size * 8 <= _CACHE_LIMIT_BYTES:
        cache = translate_modes(probe, remainder_t)  # (M, K, N, N)
        cache_intensity = (cache.real**2 + cache.imag**2).sum(dim=1)
    weight = STEP_WEIGHTS[settings.algorithm]
    batch_size = min(settings.batch_size, count)
    generator = torch.Generator().manual_seed(int(settings.seed))
    grid = torch.arange(size)

    errors: list[float] = []
    # disable=None: no bar when stderr is not a terminal (CI, dvc queue logs), where each refresh is a line
    sweeps = tqdm(range(settings.iterations), desc=f"baseline-{settings.algorithm.value}", disable=None if progress else True)
    for _ in sweeps:
        order = torch.randperm(count, generator=generator)
        misfit = 0.0
        for start in range(0, count, batch_size):
            batch = order[start : start + batch_size]
            probes = cache.index_select(0, batch) if cache is not None else translate_modes(probe, remainder_t[batch])
            # index_select, not flat[...]: the same gather without a parallel region per call
            window_index = corners.index_select(0, batch).view(-1, 1) + offsets  # (B, N*N)
            patches = flat.index_select(0, window_index.view(-1)).view(-1, 1, size, size)
            exit_waves = probes * patches  # (B, K, N, N)
            far = torch.fft.fft2(exit_waves, norm="ortho")
            modulus = torch.sqrt((far.real**2 + far.imag**2).sum(dim=1))  # (B, N, N)
            target = torch.fft.ifftshift(torch.from_numpy(data.amplitudes[batch.numpy()]), dim=(-2, -1))
            if valid is not None:  # masked pixels keep the model's modulus (no constraint there)
                target = torch.where(valid, target, modulus)
            misfit += float(torch.sum((modulus - target) ** 2))
            # Where F = 0 exactly (outside the probe's band limit) it stays 0: the clamp keeps
            # A / |F| finite (amplitudes far below 1e8) and 0 * finite = 0.
            ratio = (target / modulus.clamp(min=1e-30)).unsqueeze(1)
            delta = torch.fft.ifft2(far * ratio, norm="ortho") - exit_waves

            # Object: sum the batch's updates on the bounding box of its windows.
            r0, c0 = rows0[batch.numpy()], cols0[batch.numpy()]
            top, left = int(r0.min()), int(c0.min())
            box_h, box_w = int(r0.max()) - top + size, int(c0.max()) - left + size
            local = torch.from_numpy((r0 - top) * box_w + (c0 - left)).view(-1, 1) + (
                grid.view(-1, 1) * box_w + grid.view(1, -1)
            ).reshape(1, -1)
            numerator = torch.zeros(box_h * box_w, dtype=torch.complex64)
            numerator.index_add_(0, local.reshape(-1), (probes.conj() * delta).sum(dim=1).reshape(-1))
            illumination = torch.zeros(box_h * box_w, dtype=torch.float32)
            intensities = cache_intensity.index_select(0, batch) if cache is not None else (probes.real**2 + probes.imag**2).sum(dim=1)
            illumination.index_add_(0, local.reshape(-1), intensities.reshape(-1))
            # Outside the windows the numerator is 0 and the (finite, rpie_alpha > 0) step irrelevant.
            step = weight(illumination, settings.object_step, settings.rpie_alpha)
            obj[top : top + box_h, left : left + box_w] += (step * numerator).view(box_h, box_w)

            if settings.update_probe:
                shift_back = -remainder_t[batch]
                gradient = torch.stack(
                    [fourier_translate(patches[:, 0].conj() * delta[:, k], shift_back).sum(dim=0) for k in range(probe.shape[0])]
                )
                probe_illumination = (patches.real**2 + patches.imag**2).sum(dim=(0, 1))
                probe = probe + weight(probe_illumination, settings.probe_step, settings.rpie_alpha) * gradient
        errors.append(math.sqrt(misfit / total_energy))
        sweeps.set_postfix(error=f"{errors[-1]:.4g}")
        if on_iteration is not None and on_iteration(len(errors), obj):
            break

    coverage = torch.zeros(height * width, dtype=torch.float32)
    for start in range(0, count, batch_size):  # batch by batch: all M translated probes at once would be O(M) memory
        chunk = slice(start, start + batch_size)
        probes = cache[chunk] if cache is not None else translate_modes(probe, remainder_t[chunk])
        coverage.index_add_(0, (corners[chunk].view(-1, 1) + offsets).reshape(-1), (probes.abs() ** 2).sum(dim=1).reshape(-1))
    coverage = coverage.view(height, width)
    obj = torch.where(coverage > 0, obj, torch.zeros_like(obj))
    final_probe = probe.numpy().astype(np.complex64)
    reconstruction = Reconstruction(
        object=obj.numpy().astype(np.complex64),
        origin=origin,
        coverage=coverage.numpy().astype(np.float32),
        method=f"{'baseline' if initial is None else 'refined'}-{settings.algorithm.value}",
        probe=final_probe[0] if final_probe.shape[0] == 1 else final_probe,
        pixel_size_m=pixel_size_of(data),
    )
    return reconstruction, errors


def _initial_state(
    initial: Reconstruction, origin: tuple[int, int], shape: tuple[int, int], probe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(object (H, W), probe (K, N, N)) to start from: the reconstruction's, checked against this scan."""
    if tuple(initial.origin) != tuple(origin) or initial.object.shape != tuple(shape):
        raise DataError(
            f"refine: key 'origin': the initial reconstruction's canvas (origin {initial.origin}, shape "
            f"{initial.object.shape}) is not this scan's (origin {origin}, shape {shape}); it must come from the same scan"
        )
    covered = initial.coverage > 0
    if not covered.any():
        raise DataError("refine: key 'coverage': the initial reconstruction covers no pixel")
    fill = np.float32(np.median(np.abs(initial.object[covered])))
    obj = torch.from_numpy(np.where(covered, initial.object, fill).astype(np.complex64))
    if initial.probe is not None:
        start = torch.from_numpy(initial.probe.astype(np.complex64))
        probe = start[None] if start.ndim == 2 else start
        if probe.shape[-2:] != (shape_size := probe.shape[-1], shape_size):
            raise DataError(f"refine: key 'probe': shape {tuple(probe.shape)} is not square")
    return obj, probe


def pixel_size_of(data: PtychoDataset) -> tuple[float, float] | None:
    """The object pixel (x, y) in metres from ``metadata["object_pixel_size_m"]``, or None."""
    pixel = data.metadata.get("object_pixel_size_m")
    if isinstance(pixel, list) and len(pixel) == 2 and all(isinstance(p, (int, float)) and p > 0 for p in pixel):
        return float(pixel[0]), float(pixel[1])
    return None
