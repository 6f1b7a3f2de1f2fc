"""Physical units of a far-field ptychography scan: photon energy, wavelength, pixel sizes.

Object (sample-plane) pixel size of a far-field geometry: dx = wavelength * z / (N * p), with
z the sample-detector distance, N the pattern side in pixels and p the detector pixel size,
each axis on its own. Energies in joules (CXI) or electronvolts (ptychodus).
"""

from __future__ import annotations

import math
from typing import Any

HC_J_M = 1.98644586e-25
"""Planck constant times the speed of light, J m (wavelength = HC_J_M / energy in J)."""

ELECTRON_VOLT_J = 1.602176634e-19
"""One electronvolt in joules."""


def wavelength_from_energy_j(energy_j: float) -> float:
    """Wavelength (m) of a photon of `energy_j` joules."""
    return HC_J_M / energy_j


def wavelength_from_energy_ev(energy_ev: float) -> float:
    """Wavelength (m) of a photon of `energy_ev` electronvolts."""
    return HC_J_M / (energy_ev * ELECTRON_VOLT_J)


def energy_ev_from_wavelength(wavelength_m: float) -> float:
    """Photon energy (eV) of light of wavelength `wavelength_m`."""
    return HC_J_M / wavelength_m / ELECTRON_VOLT_J


def object_pixel_size_m(wavelength_m: float, distance_m: float, size: int, detector_pixel_m: float) -> float:
    """Sample-plane pixel size (m) of an N x N far-field pattern: wavelength * z / (N * p)."""
    return wavelength_m * distance_m / (size * detector_pixel_m)


def units_metadata(
    *, wavelength_m: float | None, distance_m: float | None, detector_pixel_m: tuple[float, float] | None, size: int
) -> dict[str, Any]:
    """The ``metadata`` unit keys that these values allow (all finite and > 0), object pixel size derived.

    Keys: ``wavelength_m``, ``photon_energy_eV``, ``detector_distance_m``,
    ``detector_pixel_size_m`` ([x, y]) and, when all three are known, ``object_pixel_size_m`` ([x, y]).
    """
    def usable(value: float | None) -> bool:
        return value is not None and math.isfinite(value) and value > 0

    units: dict[str, Any] = {}
    if usable(wavelength_m):
        units["wavelength_m"] = float(wavelength_m)
        units["photon_energy_eV"] = energy_ev_from_wavelength(wavelength_m)
    if usable(distance_m):
        units["detector_distance_m"] = float(distance_m)
    if detector_pixel_m is not None and all(usable(p) for p in detector_pixel_m):
        units["detector_pixel_size_m"] = [float(detector_pixel_m[0]), float(detector_pixel_m[1])]
    if {"wavelength_m", "detector_distance_m", "detector_pixel_size_m"} <= units.keys():
        units["object_pixel_size_m"] = [
            object_pixel_size_m(units["wavelength_m"], units["detector_distance_m"], size, p)
            for p in units["detector_pixel_size_m"]
        ]
    return units
