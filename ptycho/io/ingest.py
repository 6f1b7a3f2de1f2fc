"""The one conversion of a reader's :class:`RawScan` into the canonical :class:`PtychoDataset`.

Order (each step recorded in ``metadata``):

1. what the patterns hold: ``prepare.diffraction_quantity``, else what the file or its format
   states, else the data are read as amplitudes unless they look like counts (then the input
   check fails: whole-numbered values, see ``checks.count_like``);
2. intensities I (counts) from them, checked finite and non-negative;
3. near field refused (``ptycho.io.nearfield``: the file's ``far_field`` flag, else the frames'
   motion with the scan); zero frequency to the centre: ``prepare.zero_frequency``, else where the format puts it;
   then checked (``checks.zero_frequency_shares``: corners brighter than the centre fails);
4. detector crop, then binning (``ptycho.io.detector``), with probe, mask, positions, pixel
   sizes and reference object transformed alike; ``prepare.N`` must equal the size that results
   (with ``detector_crop_px: auto``, the size before the crop, which the data decide);
5. masked pixels set to 0 (already before step 2: a marker value in a masked pixel never fails a
   check); amplitudes A = sqrt(I), float32: the only square root taken;
6. the probe: the file's modes, or an estimate from the mean pattern; its scale checked
   against the counts and, with ``prepare.probe_scale: counts``, scaled to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptycho.config import DiffractionQuantity, PrepareConfig, ProbeScale, ZeroFrequency
from ptycho.data import PtychoDataset, validate
from ptycho.errors import DataError
from ptycho.io import checks, detector, nearfield
from ptycho.io.raw import RawScan


def _error(source: str, key: str, problem: str) -> DataError:
    return DataError(f"{source}: key '{key}': {problem}")


def _quantity(raw: RawScan, config: PrepareConfig, checker: checks.Checker) -> tuple[str, str]:
    if config.diffraction_quantity is not DiffractionQuantity.AUTO:
        return config.diffraction_quantity.value, "prepare.diffraction_quantity"
    if raw.quantity is not None:
        return raw.quantity, raw.quantity_origin
    reason = checks.count_like(raw.patterns, raw.mask)
    if reason is not None:
        checker.fail(
            raw.pattern_key,
            f"looks like photon counts ({reason}) but the file does not say whether it holds counts or amplitudes",
            "set prepare.diffraction_quantity: intensity (photon counts) or amplitude (sqrt of counts)",
        )
        return "amplitude", f"not stated, read as amplitude although count-like ({reason})"
    peak = float(np.max(raw.patterns if raw.mask is None else raw.patterns[:, np.asarray(raw.mask, dtype=bool)], initial=0.0))
    if peak > checks.LARGE_AMPLITUDE:
        checker.warn(
            raw.pattern_key,
            f"undeclared values up to {peak:g} are read as amplitudes ({peak ** 2:.3g} photons in one pixel)",
            "if they are counts, set prepare.diffraction_quantity: intensity",
        )
    return "amplitude", "not stated; read as amplitude (values are not count-like)"


def _check_values(values: np.ndarray, source: str, key: str, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise _error(source, key, f"{int(bad.sum())} non-finite {what} value(s) (NaN or inf), first at index {first}")
    negative = values < 0
    if negative.any():
        first = tuple(int(i) for i in np.argwhere(negative)[0])
        raise _error(
            source, key,
            f"{int(negative.sum())} negative {what} value(s), first at index {first} ({float(values[first]):g}); "
            "clip them to 0 or mark those pixels invalid in a mask",
        )


@dataclass
class _Scan:
    """The scan between the steps of ``to_dataset``: the arrays each step transforms, and the
    metadata that records what was done."""

    intensities: np.ndarray  # (M, N, N) float32 counts
    mask: np.ndarray | None  # (N, N) bool, True = valid
    probe: np.ndarray | None  # (K, N, N) complex64 modes, or None (estimated in step 6)
    xcoords: np.ndarray
    ycoords: np.ndarray
    object: np.ndarray | None
    metadata: dict[str, Any]


def to_dataset(raw: RawScan, config: PrepareConfig, *, probe_scale_factor: float | None = None) -> tuple[PtychoDataset, float]:
    """Convert and check one scan (the steps of the module docstring); returns (dataset, the
    factor the probe was multiplied by).

    `probe_scale_factor`: with ``probe_scale: counts``, use this factor (the training file's)
    instead of measuring one on this file. Raises DataError naming the file, key and problem
    (and the fix) for anything that cannot be read safely.
    """
    checker = checks.Checker(config.input_checks, raw.source)
    for finding in raw.findings:
        checker.warn(finding.key, finding.problem, finding.fix)
    scan = _intensities(raw, config, checker)  # steps 1 and 2
    _centre_zero_frequency(scan, raw, config, checker)  # step 3
    size = _crop_and_bin(scan, raw, config, checker)  # step 4
    amplitudes = _amplitudes(scan, size, raw.source)  # step 5
    factor = _probe(scan, amplitudes, size, raw, config, checker, probe_scale_factor)  # step 6
    scan.metadata["input_checks"] = checker.messages
    modes = scan.probe.astype(np.complex64)
    dataset = PtychoDataset(
        amplitudes=amplitudes,
        xcoords=scan.xcoords,
        ycoords=scan.ycoords,
        probe=np.ascontiguousarray(modes[0]),
        object=None if scan.object is None else np.asarray(scan.object, dtype=np.complex64),
        scan_index=np.arange(len(scan.xcoords), dtype=np.int64) if raw.scan_index is None else raw.scan_index.astype(np.int64),
        metadata={**scan.metadata, "diffraction_quantity": "amplitude"},
        mask=scan.mask,
        probe_modes=modes if modes.shape[0] > 1 else None,
    )
    validate(dataset, raw.source, diffraction_key=raw.pattern_key)
    return dataset, factor


def _intensities(raw: RawScan, config: PrepareConfig, checker: checks.Checker) -> _Scan:
    """Steps 1 and 2: what the patterns hold, and intensities (counts) from them, checked."""
    source, key = raw.source, raw.pattern_key
    metadata: dict[str, Any] = {key_: value for key_, value in raw.metadata.items() if key_ != "diffraction_quantity"}
    patterns = raw.patterns
    if patterns.dtype.kind not in "iuf":
        raise _error(source, key, f"dtype {patterns.dtype} cannot hold diffraction data; expected real numbers")
    if patterns.ndim != 3 or 0 in patterns.shape:
        raise _error(source, key, f"expected patterns of shape (M, N, N), found {patterns.shape}")
    if patterns.shape[1] != patterns.shape[2]:  # refused below too, but the zero-frequency check comes first
        raise _error(source, key, f"patterns are {patterns.shape[1]} x {patterns.shape[2]}; expected square (M, N, N) patterns")
    if raw.xcoords.shape != (patterns.shape[0],) or raw.ycoords.shape != (patterns.shape[0],):
        raise _error(source, "xcoords", f"{raw.xcoords.shape[0]} positions for {patterns.shape[0]} patterns")

    mask = None if raw.mask is None else np.asarray(raw.mask, dtype=bool)
    if mask is not None and mask.shape != patterns.shape[-2:]:
        raise _error(source, "mask", f"shape {mask.shape} does not match the {patterns.shape[-2]} x {patterns.shape[-1]} patterns")
    quantity, origin = _quantity(raw, config, checker)
    values = patterns.astype(np.float32)  # float32 holds counts below 2**24 exactly; half the memory of float64
    if mask is not None:
        # Masked pixels hold no measurement (often -1, 1e9 or NaN as a marker): zero them before any
        # check, so that a marker cannot fail a check (or ask to mask a pixel that already is).
        values[:, ~mask] = 0.0
    _check_values(values, source, key, quantity)
    intensities = values if quantity == "intensity" else np.square(values)
    metadata["diffraction_quantity_origin"] = f"{quantity}: {origin}"
    if quantity == "intensity":
        metadata["converted_from"] = "intensity"

    # Near field cannot be reconstructed here: the file's flag, else the frames' motion (ptycho.io.nearfield).
    metadata.update(nearfield.check(raw.metadata.get("far_field"), intensities, raw.xcoords, raw.ycoords, mask, checker, key))
    return _Scan(
        intensities=intensities,
        mask=mask,
        probe=None if raw.probe is None else np.asarray(raw.probe, dtype=np.complex64),
        xcoords=raw.xcoords.astype(np.float64),
        ycoords=raw.ycoords.astype(np.float64),
        object=raw.object,
        metadata=metadata,
    )


def _centre_zero_frequency(scan: _Scan, raw: RawScan, config: PrepareConfig, checker: checks.Checker) -> None:
    """Step 3: zero frequency to the centre, then checked."""
    if config.zero_frequency is ZeroFrequency.AUTO:
        shift = raw.centred is False
        why = {False: "the format stores it in the corners", True: "the format stores it centred"}.get(
            raw.centred, "assumed centred (the format does not say)"
        )
    else:
        shift, why = config.zero_frequency is ZeroFrequency.CORNERS, "prepare.zero_frequency"
    if shift:
        scan.intensities = np.fft.fftshift(scan.intensities, axes=(-2, -1))
        scan.mask = None if scan.mask is None else np.fft.fftshift(scan.mask)
    scan.metadata["zero_frequency"] = ("moved from the corners to the centre (fftshift): " if shift else "kept: ") + why
    centre, corners = checks.zero_frequency_shares(scan.intensities)
    if corners > centre:
        checker.fail(
            raw.pattern_key,
            f"the mean pattern holds {100 * corners:.0f} % of its energy near the corners and {100 * centre:.0f} % near "
            "the centre: the zero frequency is not centred",
            "set prepare.zero_frequency: " + ("centre (the file is already centred)" if shift else "corners (the file is not fftshifted)"),
        )


def _crop_and_bin(scan: _Scan, raw: RawScan, config: PrepareConfig, checker: checks.Checker) -> int:
    """Step 4: detector crop, then binning, with probe, mask, positions and pixel sizes alike;
    returns N, which must equal ``prepare.N``."""
    source, key, metadata = raw.source, raw.pattern_key, scan.metadata
    height, width = scan.intensities.shape[-2:]
    size_before_crop = height
    auto = config.detector_crop_px == "auto"
    if auto and config.detector_bin > 1:
        metadata["detector_crop_px"] = "auto: none, the patterns are binned (prepare.detector_bin); give a crop in px to crop them too"
    elif config.detector_crop_px:
        if height != width:
            raise _error(source, key, f"cropping {height} x {width} patterns is not supported; they must be square")
        if auto and height != config.N:
            raise _error(source, key, f"patterns are {height} x {height} px but prepare.N = {config.N} (with detector_crop_px: auto, "
                         f"N is the size before the crop); set prepare.N: {height}")
        mean = np.mean(scan.intensities, axis=0, dtype=np.float64)
        crop, why = detector.chosen_crop(mean if scan.mask is None else np.where(scan.mask, mean, 0.0), config.detector_crop_px, config.detector_crop_share)
        if crop > min(height, width):
            raise _error(source, key, f"prepare.detector_crop_px = {crop} exceeds the {height} x {width} patterns")
        if scan.probe is not None and scan.probe.shape[-2:] != (height, width):
            raise _error(source, "probe", f"probe {scan.probe.shape[-2:]} differs from the {height} x {width} patterns")
        if crop < height:
            cropped = detector.crop_scan(
                scan.intensities, mask=scan.mask, probe=scan.probe, xcoords=scan.xcoords, ycoords=scan.ycoords,
                obj=scan.object, metadata=metadata, crop=crop, why=why,
            )
            scan.intensities, scan.mask, scan.probe = cropped.patterns, cropped.mask, cropped.probe
            scan.xcoords, scan.ycoords, scan.object, scan.metadata = cropped.xcoords, cropped.ycoords, cropped.object, cropped.metadata
            metadata = scan.metadata
            height = width = crop
    if height != width:
        raise _error(source, key, f"patterns are {height} x {width}; crop them to a square with prepare.detector_crop_px")
    size = height

    if config.detector_bin > 1:
        factor = config.detector_bin
        if size % factor or (size // factor) % 2:
            raise _error(source, key, f"prepare.detector_bin = {factor} must divide N = {size} into an even size")
        binned = size // factor
        scan.intensities = detector.bin_patterns(scan.intensities, factor)
        scan.mask = None if scan.mask is None else detector.bin_mask(scan.mask, factor)
        lost = 0.0
        if scan.probe is not None:
            scan.probe, lost = detector.central_window(scan.probe, binned)
            if lost > 0.01:
                checker.warn(
                    "probe", f"binning by {factor} cuts the probe to its central {binned} x {binned} window and loses "
                    f"{100 * lost:.1f} % of sum |P|^2: the binned patterns are not its far field",
                    "crop instead (prepare.detector_crop_px) or bin less",
                )
        if "detector_pixel_size_m" in metadata:
            metadata["detector_pixel_size_m"] = [p * factor for p in metadata["detector_pixel_size_m"]]
        metadata["detector_bin"] = f"{factor} x {factor}: {size} -> {binned} px, object pixel unchanged, probe cut to its central window (lost {100 * lost:.2f} % of sum |P|^2)"
        size = binned

    if size != config.N and not (auto and config.detector_bin == 1 and size_before_crop == config.N):
        raise _error(
            source, key,
            f"patterns are {size} x {size} px (after crop/bin) but prepare.N = {config.N}; set prepare.N: {size}, "
            f"or reduce them with prepare.detector_crop_px or prepare.detector_bin",
        )
    return size


def _amplitudes(scan: _Scan, size: int, source: str) -> np.ndarray:
    """Step 5: masked pixels set to 0; amplitudes A = sqrt(I), float32 (the only square root taken)."""
    if scan.mask is not None:
        if scan.mask.shape != (size, size):
            raise _error(source, "mask", f"shape {scan.mask.shape} does not match the {size} x {size} patterns")
        scan.intensities = np.where(scan.mask, scan.intensities, np.float32(0.0))
        scan.metadata["mask"] = f"{int((~scan.mask).sum())} of {scan.mask.size} detector pixels invalid (set to 0, left out of fits)"
        if scan.mask.all():
            scan.mask = None
    return np.sqrt(scan.intensities).astype(np.float32)


def _probe(
    scan: _Scan, amplitudes: np.ndarray, size: int, raw: RawScan, config: PrepareConfig, checker: checks.Checker,
    probe_scale_factor: float | None,
) -> float:
    """Step 6: the file's modes, or an estimate from the mean pattern; its scale checked against
    the counts and, with ``prepare.probe_scale: counts``, scaled to them. Returns the factor."""
    if scan.probe is None:
        scan.probe = detector.probe_from_patterns(scan.intensities, scan.mask)
        scan.metadata["probe_origin"] = "estimated: fftshift(ifft2(ifftshift(sqrt(mean counts)))) (focused-probe guess)"
    elif scan.probe.ndim != 3 or scan.probe.shape[-2:] != (size, size) or scan.probe.shape[0] == 0:
        raise _error(raw.source, "probe", f"expected probe modes of shape (K, {size}, {size}), found {scan.probe.shape}")

    ratio = checks.probe_counts_ratio(amplitudes, scan.probe)
    factor = 1.0
    if config.probe_scale is ProbeScale.COUNTS:
        factor = probe_scale_factor if probe_scale_factor is not None else math.sqrt(ratio)
        scan.probe = (scan.probe * factor).astype(np.complex64)
        scan.metadata["probe_scale_factor"] = factor
    # With probe refinement at prepare the file's probe is replaced by one on the counts' scale: nothing to report
    elif config.probe_refinement_sweeps == 0 and not checks.PROBE_RATIO_RANGE[0] <= ratio <= checks.PROBE_RATIO_RANGE[1]:
        checker.warn(
            "probe", f"the patterns hold {ratio:.3g} times more counts than sum |P|^2 of the probe: it is not on the "
            "counts' scale (the network and the baseline calibrate it themselves; the file keeps it as it is)",
            "set prepare.probe_scale: counts to scale it to the data",
        )
    return factor
