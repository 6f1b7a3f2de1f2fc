"""Physics core: plain, batched, differentiable torch functions (DESIGN.md §2).

Conventions used by every function here:

- Images are indexed ``[row, col]``; a shift or position is given as ``(x, y)`` = (col, row)
  in pixels, as in the NPZ keys ``xcoords`` / ``ycoords``.
- ``translate(img, d)`` moves content by **+d**: the value at pixel (r, c) lands at
  (r + dy, c + dx). Sub-pixel shifts use bilinear interpolation; samples from outside the
  image are zero.
- An N x N window "centred at (x, y)" covers columns x - N/2 ... x + N/2 - 1 (rows likewise),
  so its pixel [N/2, N/2] sits on (x, y). This is the same centre that ``fftshift`` uses.
- Far field: F = fftshift(fft2(P * O_patch, norm="ortho")); amplitude A = |F|, so that
  sum(A**2) == sum(|P * O_patch|**2) (Parseval).

Shapes use the letters of DESIGN.md: B batch (groups), C patterns per group, N pattern
size, P number of positions, H x W object.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ptycho.rowfile import RowFile, array_chunks


def _sample_bilinear(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of images (B, H, W) at pixel coordinates rows, cols (B, h, w); zero outside.

    Complex images are sampled as two real channels. ``grid_sample`` with
    ``align_corners=True`` maps normalised -1/+1 to the centres of the first/last pixel.
    """
    _, height, width = images.shape
    grid = torch.stack(
        (cols * (2.0 / max(width - 1, 1)) - 1.0, rows * (2.0 / max(height - 1, 1)) - 1.0), dim=-1
    ).to(images.real.dtype)
    if images.is_complex():
        channels = torch.stack((images.real, images.imag), dim=1)
    else:
        channels = images.unsqueeze(1)
    sampled = F.grid_sample(channels, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if images.is_complex():
        return torch.complex(sampled[:, 0], sampled[:, 1])
    return sampled[:, 0]


def translate(images: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Move the content of images by +shift (bilinear, zero fill).

    images: (..., H, W) real or complex. shift_xy: (..., 2) as (dx, dy) in pixels, with the
    same leading dimensions as images. Returns (..., H, W): out[r, c] = images[r - dy, c - dx].
    """
    lead = images.shape[:-2]
    height, width = images.shape[-2:]
    flat = images.reshape(-1, height, width)
    shift = shift_xy.reshape(-1, 2).to(images.real.dtype)
    rows = torch.arange(height, dtype=shift.dtype, device=images.device)
    cols = torch.arange(width, dtype=shift.dtype, device=images.device)
    grid_rows = rows.view(1, height, 1) - shift[:, 1].view(-1, 1, 1)
    grid_cols = cols.view(1, 1, width) - shift[:, 0].view(-1, 1, 1)
    grid_rows, grid_cols = torch.broadcast_tensors(grid_rows, grid_cols)
    return _sample_bilinear(flat, grid_rows, grid_cols).reshape(*lead, height, width)


def extract_patches(
    obj: torch.Tensor, xcoords: torch.Tensor, ycoords: torch.Tensor, size: int
) -> torch.Tensor:
    """N x N windows of the object centred at each position (bilinear for sub-pixel positions).

    obj: (H, W) complex. xcoords, ycoords: (P,) column and row of each window centre.
    Returns (P, N, N): patch[p, r, c] = obj[y_p - N/2 + r, x_p - N/2 + c]; zero outside the object.

    Each window is gathered as (N + 1) x (N + 1) whole pixels and interpolated there, so memory
    grows with P N**2, not with P times the object (sampling the whole object per position needed
    240 GB for a 1024 px object scanned at 12,000 positions).
    """
    height, width = obj.shape[-2:]
    top, left = torch.floor(ycoords), torch.floor(xcoords)
    steps = torch.arange(size + 1, device=obj.device) - size // 2
    rows = top.long().to(obj.device).view(-1, 1) + steps  # (P, N + 1)
    cols = left.long().to(obj.device).view(-1, 1) + steps
    inside = ((rows >= 0) & (rows < height)).unsqueeze(2) & ((cols >= 0) & (cols < width)).unsqueeze(1)
    window = obj[rows.clamp(0, height - 1).unsqueeze(2), cols.clamp(0, width - 1).unsqueeze(1)]
    window = torch.where(inside, window, torch.zeros((), dtype=obj.dtype, device=obj.device))
    real = obj.real.dtype
    down = (ycoords - top).to(device=obj.device, dtype=real).view(-1, 1, 1)  # weight of the next row
    right = (xcoords - left).to(device=obj.device, dtype=real).view(-1, 1, 1)
    upper = (1 - right) * window[:, :-1, :-1] + right * window[:, :-1, 1:]
    lower = (1 - right) * window[:, 1:, :-1] + right * window[:, 1:, 1:]
    return (1 - down) * upper + down * lower


def canvas_pad(offsets_xy: torch.Tensor) -> int:
    """Pixels of padding a group canvas needs around an N x N patch to hold every offset."""
    if offsets_xy.numel() == 0:
        return 0
    return int(math.ceil(float(offsets_xy.detach().abs().max())))


def merge_group(
    patches: torch.Tensor, offsets_xy: torch.Tensor, support: torch.Tensor, pad: int
) -> torch.Tensor:
    """Place the C patches of each group on one shared canvas and average where they overlap.

    patches: (B, C, N, N) complex; offsets_xy: (B, C, 2) (dx, dy) of each patch centre from the
    group centre; support: (h, w) real weights of each patch pixel (0 where it is not trusted);
    pad: canvas margin in pixels (see ``canvas_pad``). Returns (B, h + 2 pad, w + 2 pad).

    Numerator and denominator are masked by the same translated support; pixels that no patch
    covers are zero (never divided by a tiny number). Groups are merged strictly one by one:
    nothing crosses the batch dimension.
    """
    support = support.to(patches.real.dtype)
    padded = F.pad(patches * support, (pad, pad, pad, pad))
    weights = F.pad(support.expand(patches.shape), (pad, pad, pad, pad))
    numerator = translate(padded, offsets_xy).sum(dim=1)
    denominator = translate(weights, offsets_xy).sum(dim=1)
    covered = denominator > 1e-3
    safe = torch.where(covered, denominator, torch.ones_like(denominator))
    return torch.where(covered, numerator / safe, torch.zeros_like(numerator))


def extract_group(canvas: torch.Tensor, offsets_xy: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Cut the C patches of each group back out of its canvas: the inverse placement of merge_group.

    canvas: (B, Hc, Wc) complex, centred on the group centre; offsets_xy: (B, C, 2); size: N,
    or (h, w) for a rectangular patch. Returns (B, C, h, w).
    """
    height, width = (size, size) if isinstance(size, int) else size
    channels = offsets_xy.shape[1]
    stacked = canvas.unsqueeze(1).expand(-1, channels, -1, -1)
    centred = translate(stacked, -offsets_xy)
    top = (canvas.shape[-2] - height) // 2
    left = (canvas.shape[-1] - width) // 2
    return centred[..., top : top + height, left : left + width]


def enforce_group_overlap(
    patches: torch.Tensor, offsets_xy: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Overlap constraint for gridsize > 1: merge each group on its canvas, then re-extract.

    (B, C, N, N) -> (B, C, N, N). weights (N, N): how much each pixel of a patch counts in the
    merge (the window times the probe intensity, as in stitching: a dimly lit pixel is a poor
    guess and must not pull a well-lit one towards it). Only the bounding box of weights > 0
    is merged and translated (the rest of each patch is zero, the support prior), which keeps
    the canvas small. For C == 1, a zero offset and 0/1 weights this is ``patches * weights``.
    """
    size = patches.shape[-1]
    rows = torch.nonzero(weights.sum(dim=1) > 0).view(-1)
    cols = torch.nonzero(weights.sum(dim=0) > 0).view(-1)
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box = patches[..., top:bottom, left:right]
    pad = canvas_pad(offsets_xy)
    canvas = merge_group(box, offsets_xy, weights[top:bottom, left:right], pad)
    merged = extract_group(canvas, offsets_xy, (bottom - top, right - left))
    return F.pad(merged, (left, size - right, top, size - bottom))


def propagate(exit_waves: torch.Tensor) -> torch.Tensor:
    """Unitary far field in the detector's unshifted frame: fft2(psi, norm="ortho") over the last
    two axes (..., N, N), zero frequency at [0, 0]. Adjoint and inverse: ``backpropagate``.

    Iterative loops work in this frame (patterns moved there once with ``uncentre``), which
    saves two permutations per pattern; ``far_field`` is the same numbers, centred.
    """
    return torch.fft.fft2(exit_waves, norm="ortho")


def backpropagate(far: torch.Tensor) -> torch.Tensor:
    """Exit waves (..., N, N) of an unshifted far field: ifft2(F, norm="ortho"), the adjoint (and
    inverse) of ``propagate``."""
    return torch.fft.ifft2(far, norm="ortho")


def far_field(exit_waves: torch.Tensor) -> torch.Tensor:
    """Centred unitary far field: fftshift(fft2(psi, norm="ortho")) over the last two axes."""
    return centre(propagate(exit_waves))


def centre(patterns: torch.Tensor) -> torch.Tensor:
    """Patterns (..., N, N) with the zero frequency moved from [0, 0] to [N/2, N/2] (fftshift)."""
    return torch.fft.fftshift(patterns, dim=(-2, -1))


def uncentre(patterns: torch.Tensor) -> torch.Tensor:
    """Patterns (..., N, N) with the zero frequency moved from [N/2, N/2] to [0, 0] (ifftshift):
    measured amplitudes and detector masks in the frame of ``propagate``."""
    return torch.fft.ifftshift(patterns, dim=(-2, -1))


def modulus_projection(far: torch.Tensor, measured: torch.Tensor, modulus: torch.Tensor, *, floor: float) -> torch.Tensor:
    """Far field with the measured modulus and the model's phase: F' = F A / max(|F|, floor).

    far: (..., N, N) complex, e.g. (B, K, N, N) for K incoherent modes; measured A and modulus
    |F| broadcast against it in any frame shared with ``far`` (for modes, |F| = sqrt(Σ_k |F_k|²),
    so every mode is scaled by the same A / |F|). Where F = 0 exactly it stays 0 (0 times a finite
    ratio). ``floor`` keeps the ratio finite: 1e-30 for iterative loops (amplitudes far below
    1e8), larger where the projection is differentiated (gradients of A / |F| grow as 1 / |F|²).
    """
    return far * (measured / modulus.clamp(min=floor))


def fourier_translate(images: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Translate N x N images by shifts (P, 2) = (dx, dy) px with a Fourier shift -> (P, N, N).

    images: (N, N) (one image, shifted P ways, e.g. the probe) or (P, N, N) (one shift each).
    Content moves by +d: out[r, c] = image[r - dy, c - dx] for integer d, the sign of
    ``translate``, periodically within the N x N grid (the phase ramp exp(-2 pi i (kx dx + ky dy))
    on fft2, frequencies of ``fftfreq``). Unitary: the adjoint (and inverse) is
    ``fourier_translate_adjoint``, the translation by -d.
    """
    size = images.shape[-1]
    frequencies = torch.fft.fftfreq(size, dtype=torch.float64)
    shift = shift_xy.to(torch.float64)
    phase = -2.0 * math.pi * (
        shift[:, 0].view(-1, 1, 1) * frequencies.view(1, 1, -1) + shift[:, 1].view(-1, 1, 1) * frequencies.view(1, -1, 1)
    )
    ramp = torch.polar(torch.ones_like(phase), phase).to(torch.complex64)
    return torch.fft.ifft2(torch.fft.fft2(images) * ramp)


def fourier_translate_adjoint(images: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Adjoint (and inverse) of ``fourier_translate``: images (P, N, N) or (N, N) translated by -d."""
    return fourier_translate(images, -shift_xy)


def forward_amplitude(object_patches: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Diffraction amplitude |F(P * O_patch)| for object patches (..., N, N) and probe (N, N)."""
    return far_field(object_patches * probe).abs()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of values (..., N, N) over the pixels where mask (N, N) is True (all pixels if None)."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum()


def poisson_nll(
    predicted_amplitude: torch.Tensor,
    measured_amplitude: torch.Tensor,
    intensity_scale: float = 1.0,
    eps: float = 1e-6,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean Poisson negative log-likelihood of measured counts given predicted amplitudes.

    lambda = (s * A_pred)**2 and k = (s * A_meas)**2 are expected and observed counts, with s
    (``intensity_scale``) the factor that maps the amplitudes given here back to sqrt(counts);
    per pixel lambda - k * log(lambda + eps), the terms that do not depend on the prediction
    dropped. ``mask`` (N, N) bool, True = valid detector pixel: invalid pixels are left out of
    the mean. Returns a scalar (mean over all, or all valid, pixels).
    """
    expected = (intensity_scale * predicted_amplitude) ** 2
    observed = (intensity_scale * measured_amplitude) ** 2
    return _masked_mean(expected - observed * torch.log(expected + eps), mask)


def amplitude_mae(
    predicted_amplitude: torch.Tensor, measured_amplitude: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean absolute error between amplitudes (the alternative training loss); ``mask`` as in ``poisson_nll``."""
    return _masked_mean((predicted_amplitude - measured_amplitude).abs(), mask)


def pattern_totals(amplitudes: np.ndarray | RowFile) -> np.ndarray:
    """Total counts sum(A**2) of each pattern (M,) float64, from amplitudes (M, N, N) chunk by chunk
    (an array, or patterns read from their file: ``ptycho.rowfile.RowFile``, never read whole)."""
    totals = np.empty(amplitudes.shape[0], dtype=np.float64)
    for start, chunk in array_chunks(amplitudes):
        totals[start : start + len(chunk)] = np.sum(np.asarray(chunk, dtype=np.float64) ** 2, axis=(-2, -1))
    return totals


def calibrate_probe(probe: np.ndarray, amplitudes: np.ndarray | RowFile) -> tuple[np.ndarray, float]:
    """(unit probe, scale s): a probe in any units as P / ||P|| and the factor that puts it in sqrt(counts).

    Parseval: sum(A**2) = sum(|s P_unit O|**2) for each pattern (unitary FFT), so with |O| = 1
    under the probe s = sqrt(mean_m sum(A_m**2)). amplitudes: (M, N, N); probe: (N, N).
    A real object transmits less than 1, so this is the scale that makes the object's mean
    |O|**2 under the probe equal 1; the global factor of O is free in ptychography anyway.
    Computed in float64 and from the unit probe, so a file's probe units (x 1e-3 or x 1e3)
    change nothing downstream.
    """
    probe64 = np.asarray(probe, dtype=np.complex128)
    power = float(np.sum(np.abs(probe64) ** 2))
    counts = float(np.mean(pattern_totals(amplitudes)))
    if not (counts > 0 and power > 0 and math.isfinite(counts) and math.isfinite(power)):
        raise ValueError(f"cannot calibrate the probe: mean counts per pattern {counts}, probe power {power}")
    return (probe64 / math.sqrt(power)).astype(np.complex64), math.sqrt(counts)


def window_share(probe: np.ndarray, window_px: int) -> float:
    """Share of sum(|P|**2) inside the centred window_px x window_px square of the (N, N) probe
    (rows and columns N/2 - w/2 ... N/2 + w/2 - 1, centred like the far field's zero frequency)."""
    intensity = np.abs(np.asarray(probe, dtype=np.complex128)) ** 2
    start = intensity.shape[-1] // 2 - window_px // 2
    return float(intensity[start : start + window_px, start : start + window_px].sum() / intensity.sum())


def smallest_window(size: int) -> int:
    """The smallest even window side >= N/2: N/2, or N/2 + 1 when N/2 is odd (N = 2 mod 4)."""
    half = size // 2
    return half + half % 2


def probe_window(probe: np.ndarray, share: float) -> int:
    """Smallest even, centred window side w in [N/2, N] that holds ``share`` of sum(|P|**2) (N if none)."""
    size = probe.shape[-1]
    for window in range(smallest_window(size), size, 2):
        if window_share(probe, window) >= share:
            return window
    return size
