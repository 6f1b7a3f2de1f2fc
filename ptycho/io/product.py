"""Our reconstructions as ptychodus products (``product.h5``), for the `infer` and `baseline`
stages (``ptycho.io.ptychodus`` reads such products; this module only writes, so a stage that
writes a product does not import the reader).

Export (:func:`write_product`): a reconstruction becomes a ``product.h5`` with the inverse map,
x_m = (x - x0 - W/2) * pixel_width + center_x_m with center_x_m = (x0 + W/2) * pixel_width, so
that x_m = x * pixel_width (+ the offset the reader removed, ``position_offset_m``), and beside
it ``<product stem>_diffraction.h5``: the patterns of exactly the scan it reconstructs (the test
split, not the whole scan; ptychodus pairs positions and patterns by index and interpolates
positions for patterns that have none), as counts, with its bad pixels. Both attributes
``ptycho_diffraction_file`` and ``comments`` name it.

Geometry (:func:`export_geometry`). ptychodus derives the object pixel from the energy, the
distance and the diffraction file's detector pixel, lambda z / (N p), and loads an empty object
and probe when it cannot (energy or distance 0). So the export always writes a consistent
far-field geometry: the scan's own when it has one; else the missing quantities are nominal
(``NOMINAL_ENERGY_EV``, ``NOMINAL_DETECTOR_PIXEL_M``, ``NOMINAL_OBJECT_PIXEL_M``) and the
distance is derived from them. Nominal values are listed in the root attribute
``ptycho_nominal_geometry`` and explained in ``ptycho_units``: positions and pixel sizes are then
in "nominal metres" (object pixels times the nominal pixel size), meaningful only relative to
each other.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptycho.data import PtychoDataset
from ptycho.files import atomic_path, write_atomically
from ptycho.rowfile import array_chunks
from ptycho.io import units


PAIRED_DIFFRACTION_SUFFIX = "_diffraction.h5"

NOMINAL_ENERGY_EV = 10_000.0
"""Photon energy written for a scan without one (a hard X-ray value; recorded as nominal)."""

NOMINAL_DETECTOR_PIXEL_M = 75e-6
"""Detector pixel written for a scan without one (a common hybrid-pixel detector pitch)."""

NOMINAL_OBJECT_PIXEL_M = 10e-9
"""Object pixel written for a scan without units (recorded as nominal)."""


def paired_diffraction_path(product: Path) -> Path:
    """The diffraction file written beside an exported product: ``<stem>_diffraction.h5``."""
    return product.with_name(product.stem + PAIRED_DIFFRACTION_SUFFIX)


def export_geometry(metadata: dict[str, Any], size: int) -> dict[str, Any]:
    """A consistent far-field geometry for ptychodus: object pixel = wavelength z / (N p), per axis.

    The scan's wavelength and object pixel, else nominal ones; the scan's distance with the
    detector pixel derived from it, else a nominal detector pixel with the distance derived.
    Keys: ``energy_ev``, ``distance_m``, ``object_pixel_m`` (x, y), ``detector_pixel_m`` (x, y),
    ``nominal`` (names of the nominal quantities, empty when the scan had them all), ``units``
    (a sentence for the ``ptycho_units`` attribute).
    """
    def usable(value: Any) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value) and value > 0

    nominal: list[str] = []
    pixel = metadata.get("object_pixel_size_m")
    if isinstance(pixel, list) and len(pixel) == 2 and all(usable(p) for p in pixel):
        object_pixel = (float(pixel[0]), float(pixel[1]))
    else:
        object_pixel = (NOMINAL_OBJECT_PIXEL_M, NOMINAL_OBJECT_PIXEL_M)
        nominal.append("object_pixel_m")
    energy_ev = metadata.get("photon_energy_eV")
    if not usable(energy_ev):
        energy_ev = units.energy_ev_from_wavelength(metadata["wavelength_m"]) if usable(metadata.get("wavelength_m")) else None
    if energy_ev is None:
        energy_ev = NOMINAL_ENERGY_EV
        nominal.append("photon_energy_eV")
    wavelength = units.wavelength_from_energy_ev(energy_ev)
    distance = metadata.get("detector_distance_m")
    if usable(distance):
        detector = tuple(wavelength * distance / (size * p) for p in object_pixel)
    else:  # one distance for both axes: the detector pixel takes the object pixel's aspect ratio
        detector = (NOMINAL_DETECTOR_PIXEL_M, NOMINAL_DETECTOR_PIXEL_M * object_pixel[0] / object_pixel[1])
        distance = object_pixel[0] * size * detector[0] / wavelength
        nominal += ["detector_pixel_m", "detector_object_distance_m (derived from the nominal values)"]
    if nominal:
        described = (f"nominal geometry ({'; '.join(nominal)}): the scan lacks these units, so nominal values "
                     f"({NOMINAL_ENERGY_EV:g} eV, {NOMINAL_DETECTOR_PIXEL_M:g} m detector pixel, {NOMINAL_OBJECT_PIXEL_M:g} m "
                     "object pixel) stand in for them, consistent with each other"
                     + ("; positions and sizes are meaningful only relative to each other" if "object_pixel_m" in nominal else ""))
    else:
        described = "the scan's energy, distance and object pixel (detector pixel = wavelength z / (N object pixel))"
    return {
        "energy_ev": float(energy_ev), "distance_m": float(distance),
        "object_pixel_m": object_pixel, "detector_pixel_m": tuple(float(p) for p in detector),
        "nominal": nominal, "units": described,
    }


def product_bytes(
    *, object_: np.ndarray, origin: tuple[int, int], probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray,
    scan_index: np.ndarray, metadata: dict[str, Any], name: str, comments: str, losses: list[float] | None = None,
    diffraction_file: str = "",
) -> bytes:
    """The bytes of a ptychodus ``product.h5`` holding a reconstruction (module docstring).

    object_ (H, W) complex in the canvas frame at ``origin`` = (x0, y0); probe (N, N) or
    (K, N, N); positions (M,) in the same object-pixel units. Byte-deterministic (no time stamps).
    """
    modes = probe[None] if probe.ndim == 2 else probe
    geometry = export_geometry(metadata, modes.shape[-1])
    pixel_width, pixel_height = geometry["object_pixel_m"]
    offset = metadata.get("position_offset_m", [0.0, 0.0]) if "object_pixel_m" not in geometry["nominal"] else [0.0, 0.0]
    height, width = object_.shape
    x0, y0 = origin
    center_x = (x0 + width / 2) * pixel_width + offset[0]
    center_y = (y0 + height / 2) * pixel_height + offset[1]
    energy_ev, distance = geometry["energy_ev"], geometry["distance_m"]
    buffer = io.BytesIO()
    options = {"track_times": False}
    with h5py.File(buffer, "w", track_order=False) as h5:
        h5.attrs["name"] = name
        h5.attrs["comments"] = comments
        h5.attrs["detector_object_distance_m"] = distance
        h5.attrs["photon_energy_eV"] = energy_ev
        h5.attrs["probe_energy_eV"] = energy_ev  # the name before ptychodus 1.7
        h5.attrs["probe_photon_count"] = float(np.sum(np.abs(modes.astype(np.complex128)) ** 2))
        h5.attrs["exposure_time_s"] = 0.0
        h5.attrs["mass_attenuation_m2_per_kg"] = 0.0
        h5.attrs["tomography_angle_deg"] = 0.0
        h5.attrs["far_field"] = True  # ptychodus's regime flag; ptycho is a far-field model
        h5.attrs["ptycho_units"] = geometry["units"]
        h5.attrs["ptycho_nominal_geometry"] = json.dumps(geometry["nominal"])
        if diffraction_file:
            h5.attrs["ptycho_diffraction_file"] = diffraction_file
        h5.attrs["ptycho_metadata"] = json.dumps(metadata, sort_keys=True)
        h5.create_dataset("probe_position_indexes", data=np.asarray(scan_index, dtype=np.int64), **options)
        h5.create_dataset("probe_position_x_m", data=np.asarray(xcoords, dtype=np.float64) * pixel_width + offset[0], **options)
        h5.create_dataset("probe_position_y_m", data=np.asarray(ycoords, dtype=np.float64) * pixel_height + offset[1], **options)
        probe_set = h5.create_dataset("probe", data=modes[None].astype(np.complex64), **options)
        probe_set.attrs["pixel_width_m"] = pixel_width
        probe_set.attrs["pixel_height_m"] = pixel_height
        object_set = h5.create_dataset("object", data=object_[None].astype(np.complex64), **options)
        object_set.attrs["center_x_m"] = center_x
        object_set.attrs["center_y_m"] = center_y
        object_set.attrs["pixel_width_m"] = pixel_width
        object_set.attrs["pixel_height_m"] = pixel_height
        h5.create_dataset("object_layer_spacing_m", data=np.zeros(0, dtype=np.float64), **options)
        values = np.asarray(losses if losses else [], dtype=np.float64)
        h5.create_dataset("loss_epochs", data=np.arange(len(values), dtype=np.int64), **options)
        h5.create_dataset("loss_values", data=values, **options)
    return buffer.getvalue()


def write_diffraction(path: str | Path, *, amplitudes, scan_index: np.ndarray, mask: np.ndarray | None, metadata: dict[str, Any]) -> None:
    """Write, atomically, a ptychodus ``diffraction.h5`` holding these patterns (M, N, N) as counts, by index.

    Detector pixel from :func:`export_geometry` (the one that makes the product's geometry
    consistent); ``bad_pixels`` = not ``mask``. Byte-deterministic. ``amplitudes`` (an array or a
    ``RowFile``) is written chunk by chunk, so memory stays at one chunk however long the scan.
    """
    geometry = export_geometry(metadata, amplitudes.shape[-1])
    options = {"track_times": False}
    with atomic_path(path) as temp, h5py.File(temp, "w", track_order=False) as h5:
        h5.create_dataset("indexes", data=np.asarray(scan_index, dtype=np.int64), **options)
        patterns = h5.create_dataset("patterns", shape=amplitudes.shape, dtype=np.float32, **options)
        for start, rows in array_chunks(amplitudes):
            patterns[start : start + len(rows)] = np.square(rows, dtype=np.float32)
        patterns.attrs["detector_pixel_width_m"] = geometry["detector_pixel_m"][0]
        patterns.attrs["detector_pixel_height_m"] = geometry["detector_pixel_m"][1]
        bad = np.zeros(amplitudes.shape[-2:], dtype=bool) if mask is None else ~np.asarray(mask, dtype=bool)
        h5.create_dataset("bad_pixels", data=bad, **options)


def write_product(path: str | Path, reconstruction, data: PtychoDataset, losses: list[float] | None = None) -> Path:
    """Write `reconstruction` (ptycho.reconstruction.Reconstruction) of `data` as a ptychodus product.h5, atomically,
    with the matching diffraction file beside it (:func:`paired_diffraction_path`, returned).

    The probe is the reconstruction's own when it has one, else the data's modes.
    """
    path = Path(path)
    diffraction = paired_diffraction_path(path)
    probe = reconstruction.probe if reconstruction.probe is not None else data.all_probe_modes
    write_diffraction(diffraction, amplitudes=data.amplitudes, scan_index=data.scan_index, mask=data.mask, metadata=data.metadata)
    write_atomically(path, product_bytes(
        object_=reconstruction.object, origin=reconstruction.origin, probe=probe,
        xcoords=data.xcoords, ycoords=data.ycoords, scan_index=data.scan_index, metadata=data.metadata,
        name=reconstruction.method,
        comments=f"written by ptycho from {reconstruction.method}; its patterns are in {diffraction.name} (this scan only)",
        losses=losses, diffraction_file=diffraction.name,
    ))
    return diffraction
