"""Evaluation of a reconstructed object against a ground truth and against measured data.

Small, pure NumPy functions (no torch, no I/O); the evaluate workflow writes what
:func:`compare` returns to ``metrics.json`` and the FRC curve to a plot.

Conventions (DESIGN.md §2):

- Images are 2-D arrays indexed ``[row, col]``, H x W. A shift or a slope is given as
  ``(x, y)`` = (column, row), in pixels.
- Every alignment parameter is the correction **applied to the reconstruction** to bring it
  onto the truth (never the error of the reconstruction):

  - ``shift_px = (dx, dy)``: the content of the reconstruction is moved by +d (same sign as
    ``physics.translate``). A reconstruction whose content sits at +(2.3, -1.6) px from the
    truth gets ``shift_px = (-2.3, +1.6)``.
  - ``phase_offset_rad`` and ``phase_ramp = (a, b)`` (rad/px): the reconstruction is
    multiplied by ``exp(i * (phase_offset_rad + a * col + b * row))`` with ``col``, ``row``
    the array indices of the full image (origin at pixel [0, 0]). A reconstruction equal to
    ``truth * exp(0.7j)`` gets ``phase_offset_rad = -0.7``.
  - ``amplitude_scale = k``: the aligned amplitude is ``k * |reconstruction|``. A
    reconstruction with half the amplitude of the truth gets ``k = 2``.

- Resolution from the FRC is a **full period** ``1 / f`` in pixels (f in cycles/pixel), so the
  finest value is the Nyquist period 2 px. The half-period convention would be ``1 / (2 f)``.
- Metrics are computed in double precision and returned as plain Python ``float`` / ``int`` /
  ``bool``. The one value that may be NaN is an FRC resolution that is not reached (see
  :func:`frc_resolution`); the evaluate workflow writes it to JSON as null.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import window
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

from ptycho.errors import PtychoError

PSNR_CAP_DB = 100.0
"""PSNR reported for a perfect (or near-perfect) match, so that ``metrics.json`` stays finite."""

FRC_THRESHOLDS = {"0.5": 0.5, "1_7": 1.0 / 7.0}
"""FRC thresholds reported by :func:`compare` (key suffix -> threshold)."""

NYQUIST_RESOLUTION_PX = 2.0
"""Full-period resolution at the Nyquist frequency 0.5 cycles/pixel."""

_MAX_REGISTRATION_ITERATIONS = 10
_MIN_REGISTRATION_BOX_PX = 8  # below this the Hann-windowed crop holds too few pixels to register


class MetricsError(PtychoError, ValueError):
    """Inputs to an evaluation are inconsistent (shapes, empty region, zero reference)."""


# --------------------------------------------------------------------------------------------
# Region


def scanned_region(coverage: np.ndarray, fraction: float = 0.5, margin_px: int = 0) -> np.ndarray:
    """The well-covered part of the object: where metrics are meaningful.

    coverage: (H, W) real, >= 0, e.g. the sum of |probe|^2 (or of window counts) over the scan.
    A pixel is in the region when ``coverage >= fraction * level``, with ``level`` the 90th
    percentile of the covered (> 0) pixels rather than the maximum: probe-intensity weighted
    coverage has sharp peaks where scan points crowd, and a peak would shrink the region to a
    few pixels. Holes inside the region (dips between scan points) are filled. The region is then
    eroded by ``margin_px`` pixels with a disk of that radius (``scipy.ndimage.binary_erosion``,
    outside of the array counts as not covered): a pixel survives only if every pixel within
    Euclidean distance ``margin_px`` of it is in the region. A 20 x 20 square with
    ``margin_px=3`` becomes a 14 x 14 square.

    Returns (H, W) bool.
    """
    coverage = np.asarray(coverage)
    if coverage.ndim != 2:
        raise MetricsError(f"coverage: expected a 2-D (H, W) array, got shape {coverage.shape}")
    if not np.all(np.isfinite(coverage)):
        raise MetricsError("coverage: contains non-finite values")
    if not 0.0 < fraction <= 1.0:
        raise MetricsError(f"fraction: expected 0 < fraction <= 1, got {fraction}")
    if margin_px < 0 or int(margin_px) != margin_px:
        raise MetricsError(f"margin_px: expected a non-negative integer, got {margin_px}")
    peak = float(coverage.max()) if coverage.size else 0.0
    if peak <= 0.0:
        raise MetricsError(f"coverage: maximum is {peak}; no pixel was scanned")
    level = float(np.percentile(coverage[coverage > 0], 90))
    region = ndimage.binary_fill_holes(coverage >= fraction * level)
    margin_px = int(margin_px)
    if margin_px > 0:
        offsets = np.arange(-margin_px, margin_px + 1)
        disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= margin_px**2
        region = ndimage.binary_erosion(region, structure=disk, border_value=0)
    return region


def _bounding_box(region: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    if rows.size == 0:
        raise MetricsError("region: is empty (lower `fraction` or `margin_px`)")
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _check_pair(reconstruction: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None) -> None:
    if reconstruction.ndim != 2 or reconstruction.shape != truth.shape:
        raise MetricsError(
            f"reconstruction and truth: expected two 2-D arrays of the same shape, got "
            f"{reconstruction.shape} and {truth.shape}"
        )
    if region is not None and region.shape != truth.shape:
        raise MetricsError(f"region: expected shape {truth.shape} (the images'), got {region.shape}")


# --------------------------------------------------------------------------------------------
# Alignment


@dataclass(frozen=True)
class Alignment:
    """Correction applied to a reconstruction to bring it onto the truth (see module docstring).

    phase_offset_rad: constant phase added to the reconstruction, rad.
    phase_ramp: (a, b) phase slope added along x = column and y = row, rad/px; (0, 0) unless
        ramp removal was requested.
    amplitude_scale: factor k multiplying the reconstruction's amplitude (dimensionless).
    shift_px: (dx, dy) by which the reconstruction's content was moved, px; (0, 0) unless
        registration was requested.
    """

    phase_offset_rad: float
    phase_ramp: tuple[float, float]
    amplitude_scale: float
    shift_px: tuple[float, float]


def _fourier_shift(image: np.ndarray, shift_xy: tuple[float, float]) -> np.ndarray:
    """Move the content of a complex image by +(dx, dy) px, periodically (content wraps around)."""
    dx, dy = shift_xy
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), (dy, dx)))


def _register(
    reconstruction: np.ndarray, truth: np.ndarray, box: tuple[slice, slice], upsample_factor: int
) -> tuple[float, float]:
    """Shift (dx, dy) that moves the reconstruction's content onto the truth, inside box.

    Both images are cut to the region's bounding box, their (window-weighted) mean is removed
    and they are multiplied by a Hann window, so that the unscanned surroundings and the box
    edges do not drive the correlation. A fixed window common to both images biases a single
    estimate towards zero shift (measured: ~10 % of the shift), so the estimate is refined
    iteratively: shift the full reconstruction by the running total (Fourier shift), measure
    the residual, until the residual is below one upsampled pixel. At convergence the two
    windowed crops coincide and the bias vanishes.

    skimage's default ``normalization="phase"`` whitens the cross-power spectrum; on smooth
    objects with noise this gives the noise-only high frequencies full weight and the peak
    wanders by tenths of a pixel, so plain cross-correlation (``normalization=None``) is used.
    skimage's masked mode (``reference_mask``) would handle the region exactly but is real-only
    and integer-pixel, hence the window instead.
    """
    reference = truth[box]
    if min(reference.shape) < _MIN_REGISTRATION_BOX_PX:
        raise MetricsError(
            f"register: the region's bounding box is {reference.shape[0]} x {reference.shape[1]} px; "
            f"registration needs at least {_MIN_REGISTRATION_BOX_PX} x {_MIN_REGISTRATION_BOX_PX}"
        )
    weights = window("hann", reference.shape)

    def prepared(image: np.ndarray) -> np.ndarray:
        return (image - np.sum(image * weights) / np.sum(weights)) * weights

    reference = prepared(reference)
    total = np.zeros(2)  # (dy, dx), skimage's axis order
    for _ in range(_MAX_REGISTRATION_ITERATIONS):
        moved = _fourier_shift(reconstruction, (total[1], total[0]))
        step, _, _ = phase_cross_correlation(
            reference, prepared(moved[box]), upsample_factor=upsample_factor, normalization=None
        )
        total += step
        if np.max(np.abs(step)) <= 1.0 / upsample_factor:
            break
    return float(total[1]), float(total[0])


def _global_phase(reconstruction: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    # argmin_phi sum |t - exp(i phi) r|^2 = argmax_phi Re(exp(-i phi) sum t conj(r)),
    # i.e. phi = angle(sum t conj(r)): the least-squares global phase, weighted by |t||r|, and
    # free of the 2 pi wrapping that averaging angle(t) - angle(r) would suffer.
    return float(np.angle(np.sum(truth[region] * np.conj(reconstruction[region]))))


def _phase_ramp(reconstruction: np.ndarray, truth: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """Slopes (a, b) in rad/px of the phase of truth * conj(reconstruction) on the region.

    A direct plane fit to the wrapped phase difference fails once the ramp wraps across the
    region (a 0.1 rad/px ramp wraps within 60 px). So the slope is first taken from
    neighbour-pixel phase differences, angle(sum z[x+1] conj(z[x])), which wrap only if the
    ramp exceeds pi per pixel; after removing that estimate and the offset, the residual phase
    is small and unwrapped, and a least-squares plane fit on it refines the slope.
    """
    rows, cols = np.nonzero(region)
    z = truth * np.conj(reconstruction)
    pairs_x = region[:, 1:] & region[:, :-1]
    pairs_y = region[1:, :] & region[:-1, :]
    a = float(np.angle(np.sum((z[:, 1:] * np.conj(z[:, :-1]))[pairs_x]))) if pairs_x.any() else 0.0
    b = float(np.angle(np.sum((z[1:, :] * np.conj(z[:-1, :]))[pairs_y]))) if pairs_y.any() else 0.0
    residual = z[rows, cols] * np.exp(-1j * (a * cols + b * rows))
    residual = residual * np.exp(-1j * np.angle(np.sum(residual)))
    design = np.stack([cols, rows, np.ones_like(cols)], axis=1).astype(float)
    # least squares needs >= 3 non-collinear pixels; lstsq returns the minimum-norm solution otherwise
    (da, db, _), *_ = np.linalg.lstsq(design, np.angle(residual), rcond=None)
    return a + float(da), b + float(db)


def align(
    reconstruction: np.ndarray,
    truth: np.ndarray,
    region: np.ndarray,
    remove_phase_ramp: bool = False,
    register: bool = False,
    upsample_factor: int = 20,
) -> tuple[np.ndarray, Alignment]:
    """Remove the ambiguities of ptychography before comparing a reconstruction with the truth.

    reconstruction, truth: (H, W) complex, same pixel grid. region: (H, W) bool, the pixels
    that drive every fit (typically :func:`scanned_region`).

    Steps, in order:

    1. ``register``: sub-pixel shift of the reconstruction onto the truth, estimated by
       cross-correlation of the complex images in the region's bounding box (see
       ``_register``; precision 1/upsample_factor px) and applied to the whole reconstruction
       by Fourier shift (periodic: content leaving one edge re-enters at the other, which lies
       outside the scanned region for a well-chosen region).
    2. Global phase offset: ``phi = angle(sum_region truth * conj(rec))``, the least-squares
       optimum of ``sum_region |truth - exp(i phi) rec|^2``; rec is multiplied by exp(i phi).
    3. ``remove_phase_ramp``: the linear phase a * col + b * row of truth * conj(rec) on the
       region (robust estimate, see ``_phase_ramp``) is added to rec, then the offset of step 2
       is recomputed (the ramp, being referred to pixel [0, 0], carries a constant).
    4. Amplitude scale: ``k = sum |t||r| / sum |r|^2`` over the region, the least-squares
       optimum of ``sum_region (|truth| - k |rec|)^2``; rec is multiplied by k. An all-zero
       reconstruction keeps k = 1 (nothing to scale; its metrics then show the failure).

    Returns the aligned reconstruction, (H, W) complex128, and the :class:`Alignment` applied.
    """
    reconstruction = np.asarray(reconstruction).astype(np.complex128)
    truth = np.asarray(truth).astype(np.complex128)
    region = np.asarray(region, dtype=bool)
    _check_pair(reconstruction, truth, region)
    box = _bounding_box(region)
    if upsample_factor < 1:
        raise MetricsError(f"upsample_factor: expected an integer >= 1, got {upsample_factor}")

    shift_xy = (0.0, 0.0)
    if register:
        shift_xy = _register(reconstruction, truth, box, int(upsample_factor))
        reconstruction = _fourier_shift(reconstruction, shift_xy)

    offset = _global_phase(reconstruction, truth, region)
    reconstruction = reconstruction * np.exp(1j * offset)

    ramp = (0.0, 0.0)
    if remove_phase_ramp:
        ramp = _phase_ramp(reconstruction, truth, region)
        rows, cols = np.indices(truth.shape)
        reconstruction = reconstruction * np.exp(1j * (ramp[0] * cols + ramp[1] * rows))
        extra = _global_phase(reconstruction, truth, region)
        reconstruction = reconstruction * np.exp(1j * extra)
        offset = float(np.angle(np.exp(1j * (offset + extra))))

    rec_amplitude = np.abs(reconstruction[region])
    power = float(np.sum(rec_amplitude**2))
    scale = float(np.sum(np.abs(truth[region]) * rec_amplitude) / power) if power > 0.0 else 1.0
    reconstruction = reconstruction * scale

    alignment = Alignment(
        phase_offset_rad=float(offset),
        phase_ramp=(float(ramp[0]), float(ramp[1])),
        amplitude_scale=scale,
        shift_px=(float(shift_xy[0]), float(shift_xy[1])),
    )
    return reconstruction, alignment


# --------------------------------------------------------------------------------------------
# Fourier ring correlation


def _centred_square(image: np.ndarray, side: int) -> np.ndarray:
    top = (image.shape[0] - side) // 2
    left = (image.shape[1] - side) // 2
    return image[top : top + side, left : left + side]


def frc(image_a: np.ndarray, image_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two real or complex (H, W) images on the same grid.

    Both images are cropped to the centred n x n square, n = min(H, W), and multiplied by a
    Hann window (``skimage.filters.window("hann")``, radially symmetric, zero at the square's
    edges and corners): without it the jump between opposite edges of a non-periodic crop puts
    a bright cross in both spectra that correlates at every frequency. The window's own
    spectrum is concentrated in rings 0 and 1 (99.7 % of its power for n = 96), so the mean of
    the images leaks essentially into those two rings. Rings are one frequency index wide:
    ring r holds the frequencies (kx, ky) (integers, zero at the centre) with
    round(hypot(kx, ky)) == r, for r = 0 ... n // 2; corner frequencies beyond n // 2 are unused.

        FRC(r) = Re sum_ring F_a conj(F_b) / sqrt(sum_ring |F_a|^2 * sum_ring |F_b|^2)

    (0 where a ring has no power in either image).

    Returns (frequencies, values), each (n // 2 + 1,): frequencies = r / n in cycles/pixel, from
    0 to 0.5 (0.5 - 1/(2n) for odd n), at the ring centres.
    """
    image_a = np.asarray(image_a)
    image_b = np.asarray(image_b)
    if image_a.ndim != 2 or image_a.shape != image_b.shape:
        raise MetricsError(f"frc: expected two 2-D images of the same shape, got {image_a.shape} and {image_b.shape}")
    side = min(image_a.shape)
    if side < 2:
        raise MetricsError(f"frc: images of shape {image_a.shape} are too small (need at least 2 x 2)")
    hann = window("hann", (side, side))
    spectrum_a = np.fft.fftshift(np.fft.fft2(_centred_square(image_a, side).astype(np.complex128) * hann))
    spectrum_b = np.fft.fftshift(np.fft.fft2(_centred_square(image_b, side).astype(np.complex128) * hann))
    k = np.arange(side) - side // 2
    radius = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    n_rings = side // 2 + 1
    inside = radius < n_rings
    ring = radius[inside]
    cross = np.bincount(ring, weights=np.real(spectrum_a * np.conj(spectrum_b))[inside], minlength=n_rings)
    power_a = np.bincount(ring, weights=(np.abs(spectrum_a) ** 2)[inside], minlength=n_rings)
    power_b = np.bincount(ring, weights=(np.abs(spectrum_b) ** 2)[inside], minlength=n_rings)
    denominator = np.sqrt(power_a * power_b)
    values = np.divide(cross, denominator, out=np.zeros(n_rings), where=denominator > 0)
    frequencies = np.arange(n_rings) / side
    return frequencies, values


def frc_resolution(frequencies: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """Full-period resolution in pixels, 1 / f, where the FRC first drops below threshold.

    f is the first crossing after the zero-frequency ring: for the first ring i >= 1 with
    ``curve[i] < threshold``, f is interpolated linearly between rings i - 1 and i (or is
    ring 1's frequency if ring 0 itself is already below). If the curve never drops below the
    threshold the resolution is **not reached** and NaN is returned, never the Nyquist period
    2 px: a perfect reconstruction stays above it, but so does a failed one on a crop of a few
    rings (the Hann window's own spectrum fills rings 0 and 1 and leaks the images' means into
    the others), and the two cannot be told apart from the curve. ``compare`` reports NaN with
    ``frc.reached_<threshold>: false``; ``metrics.json`` holds null. A period of p px resolves
    features (half-periods) of p / 2 px. Thresholds in use: 0.5 and 1/7.
    """
    frequencies = np.asarray(frequencies, dtype=float)
    curve = np.asarray(curve, dtype=float)
    if frequencies.shape != curve.shape or frequencies.ndim != 1:
        raise MetricsError(f"frc_resolution: frequencies {frequencies.shape} and curve {curve.shape} must be equal 1-D")
    below = np.flatnonzero(curve[1:] < threshold) + 1
    if below.size == 0:
        return float("nan")
    i = int(below[0])
    if curve[i - 1] >= threshold:  # always true for i >= 2; ring 0 may already be below
        fraction = (curve[i - 1] - threshold) / (curve[i - 1] - curve[i])
        frequency = frequencies[i - 1] + fraction * (frequencies[i] - frequencies[i - 1])
    else:
        frequency = frequencies[i]
    return float(1.0 / frequency)


# --------------------------------------------------------------------------------------------
# Image metrics


def _ssim_window(shape: tuple[int, int]) -> int:
    side = min(shape)
    if side < 3:
        raise MetricsError(f"ssim: image of shape {shape} is smaller than the smallest 3 x 3 window")
    return min(7, side if side % 2 == 1 else side - 1)


def image_metrics(
    estimate: np.ndarray, reference: np.ndarray, data_range: float, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Error metrics of a real (H, W) estimate against a real (H, W) reference.

    Callers pass the bounding box of the evaluated region; ``mask`` ((H, W) bool, optional)
    selects the pixels used by MAE, RMSE, PSNR and Pearson, while SSIM needs whole windows and
    uses the full images (7 x 7 window, smaller for images under 7 px a side).

    - ``mae``, ``rmse``: in the images' units.
    - ``psnr``: 20 log10(data_range / rmse) dB, capped at ``PSNR_CAP_DB`` = 100 dB (also when
      rmse = 0) so that the value stays finite in JSON.
    - ``ssim``: ``skimage.metrics.structural_similarity`` with the explicit data_range.
    - ``pearson``: correlation coefficient of the pixel values, defined as 0.0 when either image
      is constant. A flat (collapsed) output near the mean of the reference can have a modest
      MAE, but it has Pearson 0: this is the metric that flags that failure.
    """
    estimate = np.asarray(estimate, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if estimate.ndim != 2 or estimate.shape != reference.shape:
        raise MetricsError(
            f"image_metrics: expected two 2-D images of the same shape, got {estimate.shape} and {reference.shape}"
        )
    if not data_range > 0:
        raise MetricsError(f"image_metrics: data_range must be > 0, got {data_range}")
    if mask is None:
        mask = np.ones(estimate.shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != estimate.shape:
        raise MetricsError(f"image_metrics: mask shape {mask.shape} differs from image shape {estimate.shape}")
    if not mask.any():
        raise MetricsError("image_metrics: mask selects no pixel")

    est, ref = estimate[mask], reference[mask]
    error = est - ref
    mae = float(np.mean(np.abs(error)))
    rmse = float(np.sqrt(np.mean(error**2)))
    psnr = PSNR_CAP_DB if rmse == 0.0 else min(PSNR_CAP_DB, float(20.0 * np.log10(data_range / rmse)))
    window_px = _ssim_window(estimate.shape)
    ssim = structural_similarity(reference, estimate, data_range=float(data_range), win_size=window_px)
    ssim = float(np.clip(ssim, -1.0, 1.0))  # rounding can put a perfect match at 1 + 1e-14
    est_dev, ref_dev = est - est.mean(), ref - ref.mean()
    norm = float(np.sqrt(np.sum(est_dev**2) * np.sum(ref_dev**2)))
    # a "constant" image after float rounding still has tiny deviations; compare to its scale
    scale = max(np.max(np.abs(est)), np.max(np.abs(ref)), np.finfo(float).tiny)
    flat = np.ptp(est) <= 1e-12 * scale or np.ptp(ref) <= 1e-12 * scale
    pearson = 0.0 if flat or norm == 0.0 else float(np.sum(est_dev * ref_dev) / norm)
    return {"mae": mae, "rmse": rmse, "psnr": psnr, "ssim": ssim, "pearson": pearson}


def _data_range(values: np.ndarray) -> float:
    spread = float(np.max(values) - np.min(values))
    return spread if spread > 0.0 else 1.0


# --------------------------------------------------------------------------------------------
# Full evaluation


def compare(
    reconstruction: np.ndarray,
    truth: np.ndarray,
    coverage: np.ndarray,
    fraction: float = 0.5,
    margin_px: int = 0,
    remove_phase_ramp: bool = False,
    register: bool = False,
) -> tuple[dict[str, float | int], tuple[np.ndarray, np.ndarray]]:
    """Evaluate a reconstructed object against the ground truth on the well-scanned region.

    reconstruction, truth: (H, W) complex on the same pixel grid; coverage: (H, W) real.

    region (:func:`scanned_region`) -> :func:`align` -> crop both to the region's bounding box ->
    amplitude metrics (|.|) and phase metrics on the region's pixels (:func:`image_metrics`,
    data_range = max - min of the truth over the region, 1.0 if that is 0) -> FRC of the
    complex images in the bounding box.

    The reconstruction's phase is taken on the 2 pi branch nearest the truth,
    ``angle(truth) + angle(rec * conj(truth))``: it equals ``angle(rec)`` modulo 2 pi, but a
    pixel at +pi - eps against a truth at -pi + eps counts as an error of 2 eps, not 2 pi.

    Returns ``(metrics, (frequencies, frc_values))``. ``metrics`` is a flat dict, JSON-ready:
    ``amplitude.{mae,rmse,psnr,ssim,pearson}``, ``phase.{...}`` (rad),
    ``frc.resolution_px_0.5``, ``frc.resolution_px_1_7`` (full period, px; NaN when the curve
    never drops below the threshold) with ``frc.reached_0.5``, ``frc.reached_1_7`` (bool),
    ``alignment.{phase_offset_rad,amplitude_scale,shift_x_px,shift_y_px,ramp_x,ramp_y}``
    (the correction applied to the reconstruction; ramps in rad/px) and ``region_px`` (int).
    """
    reconstruction = np.asarray(reconstruction)
    truth = np.asarray(truth)
    coverage = np.asarray(coverage)
    _check_pair(reconstruction, truth)
    if coverage.shape != truth.shape:
        raise MetricsError(f"coverage: expected shape {truth.shape} (the object's), got {coverage.shape}")
    region = scanned_region(coverage, fraction=fraction, margin_px=margin_px)
    aligned, alignment = align(reconstruction, truth, region, remove_phase_ramp=remove_phase_ramp, register=register)

    box = _bounding_box(region)
    mask = region[box]
    rec = aligned[box]
    ref = truth[box].astype(np.complex128)

    ref_amplitude = np.abs(ref)
    amplitude = image_metrics(np.abs(rec), ref_amplitude, _data_range(ref_amplitude[mask]), mask=mask)
    ref_phase = np.angle(ref)
    rec_phase = ref_phase + np.angle(rec * np.conj(ref))
    phase = image_metrics(rec_phase, ref_phase, _data_range(ref_phase[mask]), mask=mask)

    frequencies, values = frc(rec, ref)

    metrics: dict[str, float | int] = {}
    metrics.update({f"amplitude.{name}": value for name, value in amplitude.items()})
    metrics.update({f"phase.{name}": value for name, value in phase.items()})
    for suffix, threshold in FRC_THRESHOLDS.items():
        resolution = frc_resolution(frequencies, values, threshold)
        metrics[f"frc.resolution_px_{suffix}"] = resolution  # NaN when not reached
        metrics[f"frc.reached_{suffix}"] = bool(np.isfinite(resolution))
    metrics.update(
        {
            "alignment.phase_offset_rad": alignment.phase_offset_rad,
            "alignment.amplitude_scale": alignment.amplitude_scale,
            "alignment.shift_x_px": alignment.shift_px[0],
            "alignment.shift_y_px": alignment.shift_px[1],
            "alignment.ramp_x": alignment.phase_ramp[0],
            "alignment.ramp_y": alignment.phase_ramp[1],
            "region_px": int(region.sum()),
        }
    )
    return metrics, (frequencies, values)


# --------------------------------------------------------------------------------------------
# Data consistency (no ground truth needed)


def _check_amplitudes(measured: np.ndarray, simulated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    measured = np.asarray(measured, dtype=float)
    simulated = np.asarray(simulated, dtype=float)
    if measured.shape != simulated.shape:
        raise MetricsError(f"measured {measured.shape} and simulated {simulated.shape} amplitudes differ in shape")
    return measured, simulated


def r_factor(measured_amplitudes: np.ndarray, simulated_amplitudes: np.ndarray) -> float:
    """R-factor sum |A_meas - A_sim| / sum A_meas over all patterns and pixels (any equal shapes).

    Diffraction amplitudes (sqrt of counts), e.g. (M, N, N). 0 for a perfect fit.
    """
    measured, simulated = _check_amplitudes(measured_amplitudes, simulated_amplitudes)
    total = float(np.sum(measured))
    if total <= 0.0:
        raise MetricsError(f"r_factor: measured amplitudes sum to {total}; expected > 0")
    return float(np.sum(np.abs(measured - simulated)) / total)


def normalised_error(measured: np.ndarray, simulated: np.ndarray) -> float:
    """Normalised error sqrt(sum (A_meas - A_sim)^2 / sum A_meas^2) of diffraction amplitudes."""
    measured, simulated = _check_amplitudes(measured, simulated)
    total = float(np.sum(measured**2))
    if total <= 0.0:
        raise MetricsError("normalised_error: measured amplitudes have zero energy; expected > 0")
    return float(np.sqrt(np.sum((measured - simulated) ** 2) / total))
