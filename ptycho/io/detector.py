"""Detector crop and binning, with the probe, mask and positions transformed consistently.

Far-field sampling (DESIGN.md §2): an N x N detector of pixel p at distance z sees an object
window of N object pixels of size dx = wavelength z / (N p). Patterns are centred (zero
frequency at [N/2, N/2]); positions are in object pixels.

- **Crop** to N' (centred, [N/2 - N'/2, N/2 + N'/2)): the zero frequency lands on [N'/2, N'/2];
  the detector pixel is unchanged, so object pixels grow by N/N' and positions (object pixels)
  scale by N'/N. The probe is resampled on the coarser grid by cropping its far field: with
  F = fft2(P, "ortho") on N x N (spatial origin at index 0), keeping the N' lowest frequencies
  and ifft2(., "ortho") on N' x N' gives P'[c'] = (N / N') P(c' N / N') for a probe whose far
  field lies inside the crop, so probe pixel N'/2 sits where pixel N/2 was, and
  |F(P' O')| on the cropped detector equals the cropped |F(P O)|: the amplitudes keep their
  scale. A reference object is resampled the same way (``fourier_resample_object``: its
  spectrum cut to the same band, O'[c'] = O(c' N / N'), no amplitude factor), so that
  simulating with P', O' and the scaled positions gives the cropped patterns (exactly when
  the exit waves' spectra lie inside the crop; tests/test_io_detector.py) and ``evaluate``
  scores against the truth on the coarser grid.
- **Automatic crop** (``auto_crop_size``): the smallest even centred crop that keeps a set share
  of the mean pattern's counts; what lies outside is mostly noise at the default dose, and the
  network's cost falls with the square of the pattern size.
- **Bin** b x b (sum of intensities over blocks [b i, b i + b)): the detector pixel grows by b,
  the object pixel is unchanged and the object window shrinks to N/b pixels; positions are
  unchanged. The summed counts are the far field of the exit wave cut to the central N/b window,
  so the probe is cut to its central N/b x N/b window ([N/2 - N/(2b), N/2 + N/(2b))): valid only
  when the probe fits in it; the share of sum |P|^2 lost is measured and reported. The zero
  frequency sits in the first pixel of its block, i.e. (b - 1)/(2b) binned pixels before the
  centre [N'/2, N'/2] (a quarter pixel for b = 2): the data then equal the window's far field of
  an object times exp(-2 pi i (b - 1)/(2b) (x + y)/N'), a linear phase ramp that the
  reconstruction absorbs (evaluation can remove it, ``evaluate.remove_phase_ramp``). Measured in
  tests/test_io_detector.py: 3.5 % amplitude misfit with the ramp, 17 % without, for b = 2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from ptycho.data import MIN_PATTERN_SIZE, PtychoDataset


def centred_slice(size: int, new_size: int) -> slice:
    """Indices [size/2 - new_size/2, size/2 + new_size/2): keeps index size/2 at new_size/2."""
    start = size // 2 - new_size // 2
    return slice(start, start + new_size)


def crop_patterns(intensities: np.ndarray, new_size: int) -> np.ndarray:
    """(M, H, W) -> (M, new_size, new_size): the centred crop (zero frequency stays centred)."""
    rows = centred_slice(intensities.shape[-2], new_size)
    cols = centred_slice(intensities.shape[-1], new_size)
    return np.ascontiguousarray(intensities[..., rows, cols])


def bin_patterns(intensities: np.ndarray, factor: int) -> np.ndarray:
    """(..., N, N) intensities -> (..., N/b, N/b): sums over b x b blocks [b i, b i + b)."""
    *lead, rows, cols = intensities.shape
    blocks = intensities.reshape(*lead, rows // factor, factor, cols // factor, factor)
    return blocks.sum(axis=(-3, -1))


def bin_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """(N, N) bool -> (N/b, N/b): a binned pixel is valid only when all its b x b pixels are."""
    rows, cols = mask.shape
    return mask.reshape(rows // factor, factor, cols // factor, factor).all(axis=(1, 3))


def fourier_crop_probe(probe: np.ndarray, new_size: int) -> np.ndarray:
    """(K, N, N) -> (K, N', N') resampled at N / N' times the pixel size (module docstring)."""
    size = probe.shape[-1]
    spectrum = np.fft.fftshift(np.fft.fft2(probe, norm="ortho"), axes=(-2, -1))
    kept = spectrum[..., centred_slice(size, new_size), centred_slice(size, new_size)]
    return np.fft.ifft2(np.fft.ifftshift(kept, axes=(-2, -1)), norm="ortho").astype(np.complex64)


def fourier_resample_object(obj: np.ndarray, size: int, new_size: int) -> np.ndarray:
    """(H, W) -> (H', W') band-limited resampling at k = size / new_size times the pixel size.

    O'[c'] = O(c' k) (spatial origin at index 0, as ``fourier_crop_probe``), by keeping the
    centred H' x W' block of the spectrum of the object's first H' k x W' k pixels, with H' the
    largest side for which H' k is a whole number of pixels (the dropped last rows and columns
    hold no coarse pixel centre that a whole grid would need). No N/N' factor: an object is a
    transmission, and its mean is kept.
    """
    step = new_size // math.gcd(size, new_size)  # H' must be a multiple of this for H' k to be whole
    height, width = ((side * new_size // size) // step * step for side in obj.shape)
    trimmed = obj[: height * size // new_size, : width * size // new_size]
    spectrum = np.fft.fftshift(np.fft.fft2(trimmed))
    kept = spectrum[centred_slice(trimmed.shape[0], height), centred_slice(trimmed.shape[1], width)]
    return (np.fft.ifft2(np.fft.ifftshift(kept)) * (height * width / trimmed.size)).astype(np.complex64)


def auto_crop_size(mean_intensity: np.ndarray, share: float, minimum: int) -> tuple[int, float]:
    """(smallest even centred crop side >= ``minimum`` holding ``share`` of the counts of the
    mean pattern (N, N), the share it holds); N itself when no smaller crop does."""
    size = mean_intensity.shape[-1]
    total = float(np.sum(mean_intensity, dtype=np.float64))
    if total <= 0:
        return size, 1.0
    for crop in range(max(minimum, 2), size, 2):
        window = centred_slice(size, crop)
        kept = float(np.sum(mean_intensity[window, window], dtype=np.float64)) / total
        if kept >= share:
            return crop, kept
    return size, 1.0


def central_window(probe: np.ndarray, new_size: int) -> tuple[np.ndarray, float]:
    """(K, N, N) -> ((K, N', N') central window, share of sum |P|^2 outside it)."""
    size = probe.shape[-1]
    window = np.ascontiguousarray(probe[..., centred_slice(size, new_size), centred_slice(size, new_size)])
    total = float(np.sum(np.abs(probe) ** 2))
    lost = 1.0 - float(np.sum(np.abs(window) ** 2)) / total if total > 0 else 0.0
    return window.astype(np.complex64), lost


def probe_from_patterns(intensities: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A first probe (1, N, N) for a file without one: the focus that explains the mean pattern.

    P0 = fftshift(ifft2(ifftshift(sqrt(mean I)), "ortho")): the flat-phase field whose far
    field has the mean measured amplitude, centred on pixel [N/2, N/2]; sum |P0|^2 = the mean
    counts per pattern (masked pixels count as 0). A focused-probe estimate: good for a probe
    near focus; refine it (``baseline.update_probe``) for anything else.
    """
    mean = np.mean(intensities, axis=0, dtype=np.float64)
    if mask is not None:
        mean = np.where(mask, mean, 0.0)
    field = np.fft.ifft2(np.fft.ifftshift(np.sqrt(mean)), norm="ortho")
    return np.fft.fftshift(field)[None].astype(np.complex64)


class CroppedScan(NamedTuple):
    """The pieces of a scan after a centred detector crop (``crop_scan``)."""

    patterns: np.ndarray
    mask: np.ndarray | None
    probe: np.ndarray | None
    xcoords: np.ndarray
    ycoords: np.ndarray
    object: np.ndarray | None
    metadata: dict


def crop_scan(
    patterns: np.ndarray, *, mask: np.ndarray | None, probe: np.ndarray | None, xcoords: np.ndarray, ycoords: np.ndarray,
    obj: np.ndarray | None, metadata: dict, crop: int, why: str,
) -> CroppedScan:
    """Patterns (M, N, N), amplitudes or intensities alike, centred-cropped to ``crop`` px, with the
    mask, probe (modes), positions, object pixel size and reference object on the coarser object
    grid (module docstring); ``why`` is recorded in the metadata. The one crop of both paths: the
    simulation's datasets (``crop_dataset``) and ingested files (``ptycho.io.ingest``)."""
    size = patterns.shape[-1]
    scale = crop / size
    metadata = dict(metadata)
    if "object_pixel_size_m" in metadata:
        metadata["object_pixel_size_m"] = [p / scale for p in metadata["object_pixel_size_m"]]
    metadata["detector_crop_px"] = crop_record(size, crop, why, obj is not None)
    return CroppedScan(
        patterns=crop_patterns(patterns, crop),
        mask=None if mask is None else crop_patterns(mask, crop),
        probe=None if probe is None else fourier_crop_probe(probe, crop),
        xcoords=xcoords * scale,
        ycoords=ycoords * scale,
        object=None if obj is None else fourier_resample_object(np.asarray(obj), size, crop),
        metadata=metadata,
    )


def crop_dataset(data: PtychoDataset, crop: int, why: str) -> PtychoDataset:
    """A scan in memory (the simulation) cropped by ``crop_scan``."""
    if crop == data.pattern_size:
        return data
    cropped = crop_scan(
        np.asarray(data.amplitudes), mask=data.mask, probe=data.all_probe_modes, xcoords=data.xcoords, ycoords=data.ycoords,
        obj=data.object, metadata=data.metadata, crop=crop, why=why,
    )
    return dataclasses.replace(
        data,
        amplitudes=cropped.patterns, xcoords=cropped.xcoords, ycoords=cropped.ycoords,
        probe=np.ascontiguousarray(cropped.probe[0]), probe_modes=cropped.probe if len(cropped.probe) > 1 else None,
        object=cropped.object, mask=cropped.mask, metadata=cropped.metadata,
    )


def crop_record(size: int, crop: int, why: str, has_object: bool) -> str:
    """The metadata line of a crop: sizes, what moved, why this size."""
    resampled = ", reference object Fourier-resampled" if has_object else ""
    return (f"{size} -> {crop} ({why}): object pixels x {size / crop:g}, positions x {crop / size:g}, "
            f"probe Fourier-cropped{resampled}")


def chosen_crop(mean_intensity: np.ndarray, setting: int | str, share: float) -> tuple[int, str]:
    """(crop side, why) for ``prepare.detector_crop_px`` = ``setting`` (auto, or pixels; 0 = none)."""
    size = mean_intensity.shape[-1]
    if setting == "auto":
        crop, kept = auto_crop_size(mean_intensity, share, MIN_PATTERN_SIZE)
        return crop, f"auto: keeps {100 * kept:.4f} % of the mean pattern's counts, detector_crop_share {share:g}"
    if setting:
        return int(setting), "prepare.detector_crop_px"
    return size, "none"
