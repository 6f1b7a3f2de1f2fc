"""Reader of CXI files (Coherent X-ray Imaging data bank format, HDF5).

Paths read (the first one present wins):

- patterns: ``/entry_1/data_1/data`` (often a link to ``instrument_1/detector_1/data``), else
  ``/entry_1/instrument_1/detector_1/data``; (M, N, N) photon counts, taken as centred (checked);
- positions: ``/entry_1/sample_1/geometry_1/translation``, else ``/entry_1/data_1/translation``,
  (M, 3) or (M, 2) metres, x = column 0, y = column 1;
- photon energy ``/entry_1/instrument_1/source_1/energy`` (joules), else
  ``source_1/wavelength`` (metres);
- ``detector_1/distance``, ``detector_1/x_pixel_size``, ``detector_1/y_pixel_size`` (metres);
- ptychodus's split pair: a file without patterns (its ``product.cxi``: positions, probe, object)
  is read with ``diffraction.cxi`` beside it, and a file without positions with ``product.cxi``
  beside it; positions are matched to patterns by ``/entry_1/ptychodus/probe_position_indexes``.
  The units come from the diffraction file, else from the product;
- mask ``detector_1/mask``: a bit field (CXI 1.6, the pixel-mask table; :data:`MASK_BITS`). A
  pixel is invalid when any bit is set other than the four that only inform (in a crystallographic
  peak mask, artifact corrected, peak for the hit finder, background corrected): invalid,
  saturated, hot, dead, shadowed, to be ignored, bad, out of resolution limits, missing, noisy,
  failed correction, and any bit the table does not name. ptychodus 1.7.0 counts every set bit;
  the two differ only for the four informational bits. The bits found and how they were counted
  are recorded in ``metadata["mask_bits"]``;
- probe ``source_1/illumination``, else ``/entry_1/image_1/data``: complex (N, N), (K, N, N)
  incoherent modes, or ptychodus's (OPR, K, N, N), of which OPR mode 0 (all K modes) is used; a
  probe that cannot serve is reported (then estimated), never dropped silently.

Translation sign: tools disagree whether ``translation`` is the probe position on the sample or
the sample's motion (its negative). ``prepare.cxi_translation: probe`` (default, what ptychodus
writes) uses x = +translation, ``sample`` uses x = -translation; the choice is recorded.
Metres become object pixels with dx = wavelength z / (N p) per axis; positions are then shifted
so that the smallest window corner is at 0 (``position_offset_m`` records the shift).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptycho.config import CxiTranslation, PrepareConfig
from ptycho.errors import DataError
from ptycho.io import hdf5, safety, units
from ptycho.io.raw import Finding, RawScan

DATA_PATHS = ("/entry_1/data_1/data", "/entry_1/instrument_1/detector_1/data")
TRANSLATION_PATHS = ("/entry_1/sample_1/geometry_1/translation", "/entry_1/data_1/translation")
SOURCE = "/entry_1/instrument_1/source_1"
DETECTOR = "/entry_1/instrument_1/detector_1"
PROBE_PATHS = (f"{SOURCE}/illumination", "/entry_1/image_1/data")
MASK_BITS = {
    0x1: "invalid", 0x2: "saturated", 0x4: "hot", 0x8: "dead", 0x10: "shadowed", 0x20: "in peak mask",
    0x40: "to be ignored", 0x80: "bad", 0x100: "out of resolution limits", 0x200: "missing", 0x400: "noisy",
    0x800: "artifact corrected", 0x1000: "failed artifact correction", 0x2000: "peak for hit finder",
    0x4000: "photon background corrected",
}
"""CXI 1.6 pixel-mask bits by value."""

INFORMATIONAL_BITS = 0x20 | 0x800 | 0x2000 | 0x4000
"""Bits that describe a usable pixel (peak regions, corrections applied): not counted as invalid."""


def valid_pixels(mask_value: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(N, N) bool valid pixels of a CXI bit mask, and the record of the bits found and how they counted."""
    bits = np.asarray(mask_value).astype(np.int64)
    invalid = (bits & ~INFORMATIONAL_BITS) != 0
    found: dict[str, str] = {}
    for bit in range(63):
        value = 1 << bit
        count = int(np.count_nonzero(bits & value))
        if count:
            name = MASK_BITS.get(value, "not named by CXI 1.6")
            role = "ignored (informational)" if value & INFORMATIONAL_BITS else "invalid"
            found[f"0x{value:x} {name}"] = f"{count} px, {role}"
    return ~invalid, {"rule": "any CXI bit other than 0x20, 0x800, 0x2000, 0x4000 marks a pixel invalid", "found": found}


PAIR_NAMES = {"patterns": "diffraction.cxi", "positions": "product.cxi"}
"""ptychodus's split CXI files: the companion looked for beside a file that lacks patterns or positions."""

POSITION_INDEXES = "/entry_1/ptychodus/probe_position_indexes"


def _first_present(h5, paths: tuple[str, ...]) -> tuple[str, np.ndarray] | tuple[None, None]:
    for path in paths:
        value = hdf5.optional(h5, path)
        if value is not None:
            return path, value
    return None, None


def _read_file(path: Path) -> dict[str, Any]:
    """Everything this reader uses that the CXI file at `path` holds (absent parts are None)."""
    source = str(path)
    with hdf5.open_hdf5(path) as h5:
        data_path, patterns = _first_present(h5, DATA_PATHS)
        translation_path, translation = _first_present(h5, TRANSLATION_PATHS)
        energy = hdf5.optional(h5, f"{SOURCE}/energy")
        wavelength = hdf5.optional(h5, f"{SOURCE}/wavelength")
        distance = hdf5.optional(h5, f"{DETECTOR}/distance")
        pixel = [hdf5.optional(h5, f"{DETECTOR}/{axis}_pixel_size") for axis in ("x", "y")]
        probe_path, probe = _first_present(h5, PROBE_PATHS)
        return {
            "source": source,
            "data_path": data_path, "patterns": patterns,
            "translation_path": translation_path, "translation": translation,
            "indexes": hdf5.optional(h5, POSITION_INDEXES),
            "energy_j": None if energy is None else hdf5.scalar(energy, source, f"{SOURCE}/energy"),
            "wavelength_m": None if wavelength is None else hdf5.scalar(wavelength, source, f"{SOURCE}/wavelength"),
            "distance_m": None if distance is None else hdf5.scalar(distance, source, f"{DETECTOR}/distance"),
            "pixel_m": None if None in pixel else tuple(hdf5.scalar(v, source, f"{DETECTOR}/{a}_pixel_size") for v, a in zip(pixel, "xy")),
            "mask": hdf5.optional(h5, f"{DETECTOR}/mask"),
            "probe_path": probe_path, "probe": probe,
        }


def _with_companion(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the file's parts, its ptychodus companion's) when the file lacks patterns or positions."""
    parts = _read_file(path)
    if parts["patterns"] is not None and parts["translation"] is not None:
        return parts, None
    lacking = "patterns" if parts["patterns"] is None else "positions"
    if parts["patterns"] is None and parts["translation"] is None:
        raise DataError(
            f"{path}: key '{DATA_PATHS[0]}': missing (the diffraction patterns; also looked at {DATA_PATHS[1]}), "
            f"and no positions ('{TRANSLATION_PATHS[0]}') either"
        )
    companion = path.parent / PAIR_NAMES[lacking]
    if companion == path or not companion.is_file():
        paths = DATA_PATHS if lacking == "patterns" else TRANSLATION_PATHS
        raise DataError(
            f"{path}: key '{paths[0]}': missing (the {'diffraction patterns' if lacking == 'patterns' else 'scan positions'}; "
            f"also looked at {paths[1]}), and no {PAIR_NAMES[lacking]} beside it to pair with (ptychodus writes product.cxi + diffraction.cxi)"
        )
    other = _read_file(companion)
    if other[lacking if lacking == "patterns" else "translation"] is None:
        raise DataError(f"{companion}: holds no {lacking} either: not the pair of {path.name}")
    return parts, other


def _probe_modes(value: np.ndarray | None, path: str | None, size: tuple[int, int], findings: list[Finding]) -> tuple[np.ndarray | None, str]:
    """(K, N, N) incoherent modes from a CXI probe: (N, N), (K, N, N) or ptychodus's (OPR, K, N, N), OPR mode 0."""
    if value is None:
        return None, ""
    note = path or ""
    if value.ndim == 4:
        note = f"{path}: OPR mode 0 of {value.shape[0]}, {value.shape[1]} incoherent mode(s)"
        value = value[0]
    if value.ndim == 2:
        value = value[None]
    if value.ndim != 3 or value.shape[-2:] != size or not np.iscomplexobj(value):
        findings.append(Finding(
            path or "probe", f"a probe of {value.dtype} {value.shape} cannot serve (expected complex (N, N), (K, N, N) "
            f"or (OPR, K, N, N) with N x N = {size}); the probe is estimated from the patterns instead",
            "store the probe as complex modes of the patterns' size",
        ))
        return None, ""
    return value.astype(np.complex64), note


def read(path: Path, config: PrepareConfig) -> RawScan:
    """Read a CXI scan (module docstring) without converting the patterns."""
    parts, companion = _with_companion(path)
    data_parts = parts if parts["patterns"] is not None else companion
    position_parts = parts if parts["translation"] is not None else companion
    source = str(path) if companion is None else f"{position_parts['source']} + {Path(data_parts['source']).name}"
    findings: list[Finding] = []

    def holder(key: str) -> dict[str, Any]:  # the diffraction file when it has `key`, else the other file
        return data_parts if data_parts[key] is not None else position_parts

    def pick(key: str) -> Any:
        return holder(key)[key]

    data_path, patterns = data_parts["data_path"], data_parts["patterns"]
    if patterns.ndim != 3 or 0 in patterns.shape:
        raise DataError(f"{data_parts['source']}: key '{data_path}': expected (M, N, N) patterns, found shape {patterns.shape}")
    translation_path = position_parts["translation_path"]
    translation = np.asarray(position_parts["translation"], dtype=np.float64)
    if translation.ndim != 2 or translation.shape[1] < 2:
        raise DataError(f"{position_parts['source']}: key '{translation_path}': expected (M, 3) positions in metres, found shape {translation.shape}")
    indexes = None
    if companion is not None and position_parts["indexes"] is not None:
        indexes = np.asarray(position_parts["indexes"]).astype(np.int64).reshape(-1)
        if len(indexes) != len(translation) or indexes.min(initial=0) < 0 or indexes.max(initial=0) >= len(patterns):
            raise DataError(
                f"{position_parts['source']}: key '{POSITION_INDEXES}': {len(indexes)} indexes for {len(translation)} positions, "
                f"in [{indexes.min(initial=0)}, {indexes.max(initial=0)}], for {len(patterns)} patterns"
            )
        patterns = patterns[indexes]
    if translation.shape[0] != patterns.shape[0]:
        raise DataError(
            f"{position_parts['source']}: key '{translation_path}': expected ({patterns.shape[0]}, 3) positions in metres for "
            f"{patterns.shape[0]} patterns, found shape {translation.shape}"
        )
    if translation.size and np.all(np.isfinite(translation)):  # non-finite values are reported by the dataset check
        safety.plausible(float(np.max(np.abs(translation[:, :2]))), position_parts["source"], translation_path, "position_m")
    energy_j, wavelength_value = pick("energy_j"), pick("wavelength_m")
    if energy_j is not None:
        if energy_j > 1e-12:  # an X-ray photon carries ~1e-15 J; 8000 is eV, not J
            raise DataError(
                f"{source}: key '{SOURCE}/energy': {energy_j:g} is far too large for joules (CXI's unit; "
                f"{energy_j:g} eV would be {energy_j * units.ELECTRON_VOLT_J:.4g} J); fix the file's energy"
            )
        wavelength = units.wavelength_from_energy_j(safety.plausible(energy_j, source, f"{SOURCE}/energy", "photon_energy_J"))
    elif wavelength_value is not None:
        wavelength = safety.plausible(wavelength_value, source, f"{SOURCE}/wavelength", "wavelength_m")
    else:
        raise DataError(f"{source}: key '{SOURCE}/energy': missing (and no '{SOURCE}/wavelength'); needed to convert positions to pixels")
    distance, pixel = pick("distance_m"), pick("pixel_m")
    if distance is None:
        raise DataError(f"{source}: key '{DETECTOR}/distance': missing")
    if pixel is None:
        raise DataError(f"{source}: key '{DETECTOR}/x_pixel_size': missing (or y_pixel_size)")
    safety.plausible(distance, source, f"{DETECTOR}/distance", "distance_m")
    for axis, value in zip("xy", pixel):
        safety.plausible(value, source, f"{DETECTOR}/{axis}_pixel_size", "detector_pixel_m")
    probe_parts = holder("probe")
    probe, probe_note = _probe_modes(probe_parts["probe"], probe_parts["probe_path"], patterns.shape[-2:], findings)

    size = patterns.shape[-1]
    unit_keys = units.units_metadata(wavelength_m=wavelength, distance_m=distance, detector_pixel_m=pixel, size=size)
    if "object_pixel_size_m" not in unit_keys:
        raise DataError(f"{source}: key '{DETECTOR}/distance': energy, distance and pixel sizes must be > 0 to place the positions")
    dx, dy = unit_keys["object_pixel_size_m"]
    sign = 1.0 if config.cxi_translation is CxiTranslation.PROBE else -1.0
    x_m, y_m = sign * translation[:, 0], sign * translation[:, 1]
    offset = (float(np.min(x_m)) - size / 2 * dx, float(np.min(y_m)) - size / 2 * dy)
    mask_value = data_parts["mask"]
    mask, mask_bits = None, None
    if mask_value is not None:
        if mask_value.shape != patterns.shape[-2:]:
            raise DataError(f"{data_parts['source']}: key '{DETECTOR}/mask': shape {mask_value.shape} differs from the patterns' {patterns.shape[-2:]}")
        mask, mask_bits = valid_pixels(mask_value)
    return RawScan(
        source=source,
        pattern_key=data_path,
        patterns=patterns,
        quantity="intensity",
        quantity_origin="CXI: detector data are photon counts",
        centred=True,
        xcoords=(x_m - offset[0]) / dx,
        ycoords=(y_m - offset[1]) / dy,
        probe=probe,
        mask=mask,
        scan_index=indexes,
        metadata={
            **unit_keys,
            "source_format": "cxi" if companion is None else "cxi pair (ptychodus: product with positions and probe, diffraction with patterns)",
            "positions": f"{translation_path} x {'+1 (probe position)' if sign > 0 else '-1 (sample motion)'} "
            "(prepare.cxi_translation), / object pixel size"
            + (f"; matched to patterns by {POSITION_INDEXES}" if indexes is not None else ""),
            "position_offset_m": [offset[0], offset[1]],
            **({"probe_origin": probe_note} if probe is not None else {}),
            **({"mask_bits": mask_bits} if mask_bits is not None else {}),
        },
        findings=tuple(findings),
    )
