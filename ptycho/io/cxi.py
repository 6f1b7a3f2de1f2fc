"""Reader of CXI files (Coherent X-ray Imaging data bank format, HDF5).

Paths read (the first one present wins):

- patterns: ``/entry_1/data_1/data`` (often a link to ``instrument_1/detector_1/data``), else
  ``/entry_1/instrument_1/detector_1/data``; (M, N, N) photon counts, taken as centred (checked);
- positions: ``/entry_1/sample_1/geometry_1/translation``, else ``/entry_1/data_1/translation``,
  (M, 3) or (M, 2) metres, x = column 0, y = column 1;
- photon energy ``/entry_1/instrument_1/source_1/energy`` (joules), else
  ``source_1/wavelength`` (metres);
- ``detector_1/distance``, ``detector_1/x_pixel_size``, ``detector_1/y_pixel_size`` (metres);
- mask ``detector_1/mask``: bit 0x1 set = invalid pixel (CXI spec);
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
INVALID_BIT = 0x1


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
        if patterns.ndim != 3 or 0 in patterns.shape:
            raise DataError(f"{source}: key '{data_path}': expected (M, N, N) patterns, found shape {patterns.shape}")
        translation_path, translation = _first(h5, TRANSLATION_PATHS, source, "the scan positions")
        translation = np.asarray(translation, dtype=np.float64)
        if translation.ndim != 2 or translation.shape[1] < 2 or translation.shape[0] != patterns.shape[0]:
            raise DataError(
                f"{source}: key '{translation_path}': expected ({patterns.shape[0]}, 3) positions in metres for "
                f"{patterns.shape[0]} patterns, found shape {translation.shape}"
            )
        if translation.size and np.all(np.isfinite(translation)):  # non-finite values are reported by the dataset check
            safety.plausible(float(np.max(np.abs(translation[:, :2]))), source, translation_path, "position_m")
        energy = hdf5.optional(h5, f"{SOURCE}/energy")
        wavelength_value = hdf5.optional(h5, f"{SOURCE}/wavelength")
        if energy is not None:
            energy_j = hdf5.scalar(energy, source, f"{SOURCE}/energy")
            if energy_j > 1e-12:  # an X-ray photon carries ~1e-15 J; 8000 is eV, not J
                raise DataError(
                    f"{source}: key '{SOURCE}/energy': {energy_j:g} is far too large for joules (CXI's unit; "
                    f"{energy_j:g} eV would be {energy_j * units.ELECTRON_VOLT_J:.4g} J); fix the file's energy"
                )
            wavelength = units.wavelength_from_energy_j(safety.plausible(energy_j, source, f"{SOURCE}/energy", "photon_energy_J"))
        elif wavelength_value is not None:
            wavelength = safety.plausible(hdf5.scalar(wavelength_value, source, f"{SOURCE}/wavelength"), source, f"{SOURCE}/wavelength", "wavelength_m")
        else:
            raise DataError(f"{source}: key '{SOURCE}/energy': missing (and no '{SOURCE}/wavelength'); needed to convert positions to pixels")
        distance = hdf5.scalar(hdf5.dataset(h5, f"{DETECTOR}/distance", source), source, f"{DETECTOR}/distance")
        safety.plausible(distance, source, f"{DETECTOR}/distance", "distance_m")
        pixel = tuple(
            safety.plausible(hdf5.scalar(hdf5.dataset(h5, key, source), source, key), source, key, "detector_pixel_m")
            for key in (f"{DETECTOR}/{axis}_pixel_size" for axis in ("x", "y"))
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
    mask = None
    if mask_value is not None:
        if mask_value.shape != patterns.shape[-2:]:
            raise DataError(f"{source}: key '{DETECTOR}/mask': shape {mask_value.shape} differs from the patterns' {patterns.shape[-2:]}")
        mask = (mask_value.astype(np.int64) & INVALID_BIT) == 0
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
        },
        findings=tuple(findings),
    )
