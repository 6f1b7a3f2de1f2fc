"""Reader of CXI files (Coherent X-ray Imaging data bank format, HDF5).

Paths read (the first one present wins):

- patterns: ``/entry_1/data_1/data`` (often a link to ``instrument_1/detector_1/data``), else
  ``/entry_1/instrument_1/detector_1/data``; (M, N, N) photon counts, taken as centred (checked);
- positions: ``/entry_1/sample_1/geometry_1/translation``, else ``/entry_1/data_1/translation``,
  (M, 3) or (M, 2) metres, x = column 0, y = column 1;
- photon energy ``/entry_1/instrument_1/source_1/energy`` (joules), else
  ``source_1/wavelength`` (metres);
- ``detector_1/distance``, ``detector_1/x_pixel_size``, ``detector_1/y_pixel_size`` (metres);
- mask ``detector_1/mask``: a bit field (CXI 1.6, the pixel-mask table; :data:`MASK_BITS`). A
  pixel is invalid when any bit is set other than the four that only inform (in a crystallographic
  peak mask, artifact corrected, peak for the hit finder, background corrected): invalid,
  saturated, hot, dead, shadowed, to be ignored, bad, out of resolution limits, missing, noisy,
  failed correction, and any bit the table does not name. ptychodus 1.7.0 counts every set bit;
  the two differ only for the four informational bits. The bits found and how they were counted
  are recorded in ``metadata["mask_bits"]``;
- probe ``source_1/illumination``, else ``/entry_1/image_1/data`` when it is (N, N) or
  (K, N, N) complex (ptychodus writes its probe there).

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
from ptycho.io import hdf5, units
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


def _first(h5, paths: tuple[str, ...], source: str, what: str) -> tuple[str, np.ndarray]:
    for path in paths:
        value = hdf5.optional(h5, path)
        if value is not None:
            return path, value
    raise DataError(f"{source}: key '{paths[0]}': missing ({what}; also looked at {', '.join(paths[1:])})")


def read(path: Path, config: PrepareConfig) -> RawScan:
    """Read a CXI scan (module docstring) without converting the patterns."""
    source = str(path)
    findings: list[Finding] = []
    with hdf5.open_hdf5(path) as h5:
        data_path, patterns = _first(h5, DATA_PATHS, source, "the diffraction patterns")
        if patterns.ndim != 3:
            raise DataError(f"{source}: key '{data_path}': expected (M, N, N) patterns, found shape {patterns.shape}")
        translation_path, translation = _first(h5, TRANSLATION_PATHS, source, "the scan positions")
        translation = np.asarray(translation, dtype=np.float64)
        if translation.ndim != 2 or translation.shape[1] < 2 or translation.shape[0] != patterns.shape[0]:
            raise DataError(
                f"{source}: key '{translation_path}': expected ({patterns.shape[0]}, 3) positions in metres for "
                f"{patterns.shape[0]} patterns, found shape {translation.shape}"
            )
        energy = hdf5.optional(h5, f"{SOURCE}/energy")
        wavelength_value = hdf5.optional(h5, f"{SOURCE}/wavelength")
        if energy is not None:
            energy_j = hdf5.scalar(energy, source, f"{SOURCE}/energy")
            if energy_j > 1e-12:  # an X-ray photon carries ~1e-15 J; 8000 is eV, not J
                raise DataError(
                    f"{source}: key '{SOURCE}/energy': {energy_j:g} is far too large for joules (CXI's unit; "
                    f"{energy_j:g} eV would be {energy_j * units.ELECTRON_VOLT_J:.4g} J); fix the file's energy"
                )
            wavelength = units.wavelength_from_energy_j(energy_j)
        elif wavelength_value is not None:
            wavelength = hdf5.scalar(wavelength_value, source, f"{SOURCE}/wavelength")
        else:
            raise DataError(f"{source}: key '{SOURCE}/energy': missing (and no '{SOURCE}/wavelength'); needed to convert positions to pixels")
        distance = hdf5.scalar(hdf5.dataset(h5, f"{DETECTOR}/distance", source), source, f"{DETECTOR}/distance")
        pixel = tuple(
            hdf5.scalar(hdf5.dataset(h5, f"{DETECTOR}/{axis}_pixel_size", source), source, f"{DETECTOR}/{axis}_pixel_size")
            for axis in ("x", "y")
        )
        mask_value = hdf5.optional(h5, f"{DETECTOR}/mask")
        probe = None
        probe_path = ""
        for candidate in PROBE_PATHS:
            value = hdf5.optional(h5, candidate)
            if value is not None and np.iscomplexobj(value) and value.shape[-2:] == patterns.shape[-2:] and value.ndim in (2, 3):
                probe, probe_path = (value[None] if value.ndim == 2 else value).astype(np.complex64), candidate
                break

    size = patterns.shape[-1]
    unit_keys = units.units_metadata(wavelength_m=wavelength, distance_m=distance, detector_pixel_m=pixel, size=size)
    if "object_pixel_size_m" not in unit_keys:
        raise DataError(f"{source}: key '{DETECTOR}/distance': energy, distance and pixel sizes must be > 0 to place the positions")
    dx, dy = unit_keys["object_pixel_size_m"]
    sign = 1.0 if config.cxi_translation is CxiTranslation.PROBE else -1.0
    x_m, y_m = sign * translation[:, 0], sign * translation[:, 1]
    offset = (float(np.min(x_m)) - size / 2 * dx, float(np.min(y_m)) - size / 2 * dy)
    mask, mask_bits = None, None
    if mask_value is not None:
        if mask_value.shape != patterns.shape[-2:]:
            raise DataError(f"{source}: key '{DETECTOR}/mask': shape {mask_value.shape} differs from the patterns' {patterns.shape[-2:]}")
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
        metadata={
            **unit_keys,
            "source_format": "cxi",
            "positions": f"{translation_path} x {'+1 (probe position)' if sign > 0 else '-1 (sample motion)'} "
            "(prepare.cxi_translation), / object pixel size",
            "position_offset_m": [offset[0], offset[1]],
            **({"probe_origin": probe_path} if probe is not None else {}),
            **({"mask_bits": mask_bits} if mask_bits is not None else {}),
        },
        findings=tuple(findings),
    )
