"""Is a scan near field? Read from the file where it says, measured from the patterns where it does not.

ptycho's forward model is the far field (DESIGN.md §2): a near-field (Fresnel, holographic)
measurement ingests without complaint and trains to plausible-looking but meaningless results.

- The file's word: ptychodus products carry ``far_field`` (a root attribute of ``product.h5``);
  readers put it in ``metadata["far_field"]`` with ``metadata["far_field_origin"]``.
- The data's word (:func:`measure`): in the near field a frame is a magnified, defocused image
  of the sample, so between two nearby scan positions its features **move** by the scan step
  (times the magnification, in detector pixels); in the far field the pattern of a shifted
  object does not move (a shift is a phase ramp there), only its speckle changes. For pairs
  of nearest-neighbour positions the frames' shift s (detector pixels) is measured by phase
  correlation of the flat-fielded frames (each divided by the mean frame, which takes out the
  illumination: it does not move in either regime), and fitted by one linear map of the scan
  step d (object pixels): s = A d, which absorbs the unknown magnification, rotation and axis
  flips. Near field: the fitted shifts are at least ``MIN_SHIFT_PX`` (median) and at least
  ``MIN_AGREEING_SHARE`` of the pairs agree with the fit within ``AGREEMENT_PX`` (or a quarter of the shift). Measured on
  the PETRA III P25 scan (near field, 200 frames): see tests/test_io_nearfield.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAIRS = 48
"""Frame pairs measured (nearest neighbours of evenly spaced frames): enough for a robust fit, cheap."""

MIN_PAIRS = 8
"""With fewer pairs (tiny scans) the test is not made."""

MIN_SHIFT_PX = 2.0
"""Median fitted shift (detector pixels) below which nothing moves (far field); integer peaks jitter by 1 px."""

AGREEMENT_PX = 1.0
"""A pair agrees with the fit when its measured shift is within this (or 25 % of the shift) of A d."""

MIN_AGREEING_SHARE = 0.6
"""Share of agreeing pairs that makes the motion systematic (near field)."""


@dataclass(frozen=True)
class Motion:
    """How frames move with the scan: the evidence for the near field, and the verdict."""

    pairs: int
    median_shift_px: float  # median |A d| over the pairs, detector pixels
    agreeing_share: float  # share of pairs whose measured shift agrees with A d
    near_field: bool

    def describe(self) -> str:
        return (f"between {self.pairs} pairs of neighbouring scan positions the frames shift by a median "
                f"{self.median_shift_px:.1f} detector px, and {100 * self.agreeing_share:.0f} % of the pairs agree "
                "with one linear map of the scan step")


def _flat_fielded(frames: np.ndarray, mean: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(K, N, N) frames / the mean frame - 1, zero where the mean or the mask has nothing, Hann-windowed."""
    valid = mean > 1e-6 * max(float(mean.max()), 1e-30)
    if mask is not None:
        valid &= mask
    relative = np.where(valid, frames / np.where(valid, mean, 1.0) - 1.0, 0.0)
    rows, cols = frames.shape[-2:]
    return relative * np.outer(np.hanning(rows), np.hanning(cols))


def frame_shift(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(dx, dy) integer shift, pixels, by which `second`'s content is `first`'s moved (phase correlation)."""
    product = np.fft.fft2(second) * np.conj(np.fft.fft2(first))
    magnitude = np.abs(product)
    correlation = np.fft.ifft2(product / (magnitude + 1e-3 * magnitude.max() + 1e-30)).real
    row, col = np.unravel_index(np.argmax(correlation), correlation.shape)
    rows, cols = correlation.shape
    dy = row - rows if row > rows // 2 else row
    dx = col - cols if col > cols // 2 else col
    return np.array([dx, dy], dtype=np.float64)


def measure(intensities: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray, mask: np.ndarray | None = None) -> Motion | None:
    """How the frames (M, N, N) move with the positions (M,) (module docstring); None for too few pairs."""
    positions = np.stack([xcoords, ycoords], axis=1).astype(np.float64)
    count = len(positions)
    if count < MIN_PAIRS + 1:
        return None
    chosen = np.unique(np.linspace(0, count - 1, min(PAIRS, count)).round().astype(int))
    steps, shifts, used = [], [], []
    for index in chosen:
        distance = np.hypot(*(positions - positions[index]).T)
        distance[index] = np.inf
        distance[distance == 0] = np.inf  # a repeated position says nothing about motion
        neighbour = int(np.argmin(distance))
        if np.isfinite(distance[neighbour]):
            used.append((int(index), neighbour))
    if len(used) < MIN_PAIRS:
        return None
    frames = sorted({i for pair in used for i in pair})
    mean = np.mean(intensities, axis=0, dtype=np.float64)  # the illumination, which does not move
    flat = dict(zip(frames, _flat_fielded(np.asarray(intensities[frames], dtype=np.float64), mean, mask)))
    for first, second in used:
        steps.append(positions[second] - positions[first])
        shifts.append(frame_shift(flat[first], flat[second]))
    steps_array, shifts_array = np.array(steps), np.array(shifts)
    linear_map, *_ = np.linalg.lstsq(steps_array, shifts_array, rcond=None)
    predicted = steps_array @ linear_map
    predicted_size = np.hypot(*predicted.T)
    error = np.hypot(*(shifts_array - predicted).T)
    agreeing = float(np.mean(error <= np.maximum(AGREEMENT_PX, 0.25 * predicted_size)))
    median_shift = float(np.median(predicted_size))
    near = median_shift >= MIN_SHIFT_PX and agreeing >= MIN_AGREEING_SHARE
    return Motion(pairs=len(used), median_shift_px=median_shift, agreeing_share=agreeing, near_field=near)


def check(raw_far_field: object, intensities: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray,
          mask: np.ndarray | None, checker, key: str) -> dict[str, object]:
    """Fail `checker` (``ptycho.io.checks.Checker``) for a near-field scan; the metadata to record.

    `raw_far_field`: the file's ``far_field`` flag (True, False, or None when it does not say).
    Only where the file does not say are the frames measured (:func:`measure`).
    """
    fix = "reconstruct it with a near-field (Fresnel) code: ptycho's forward model is the far field"
    if raw_far_field is False:
        checker.fail("far_field", "the file says the measurement is near field (far_field = False)", fix)
        return {"far_field": False, "far_field_check": "the file says near field (far_field = False)"}
    if raw_far_field is True:
        return {"far_field": True, "far_field_check": "the file says far field (far_field = True); frames not measured"}
    motion = measure(intensities, xcoords, ycoords, mask)
    if motion is None:
        return {"far_field_check": f"not measured: fewer than {MIN_PAIRS} pairs of distinct neighbouring positions"}
    if motion.near_field:
        checker.fail(
            key, f"the frames move with the scan, as in the near field ({motion.describe()}); in the far field a "
            "shifted sample moves nothing", fix + " (a far-field scan whose patterns are shadow images of a strongly "
            "defocused probe can look like this: then go on)",
        )
    regime = "near field" if motion.near_field else "far field"
    return {"far_field_check": f"{regime} by the data: {motion.describe()}"}
