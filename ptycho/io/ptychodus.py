"""ptychodus products: read a product with its diffraction file, write our reconstructions as one.

Layout (ptychodus 1.7.0, ``ptychodus.api.io``; older versions noted):

- ``product.h5``: root attributes ``detector_object_distance_m``, ``photon_energy_eV`` (older:
  ``probe_energy_eV``), ``probe_photon_count``, ``name``, ``comments``, ...; datasets
  ``probe_position_indexes``, ``probe_position_x_m``, ``probe_position_y_m`` (metres);
  ``probe`` (OPR, modes, N, N) complex with attributes ``pixel_width_m``, ``pixel_height_m``;
  ``object`` (layers, H, W) complex with ``center_x_m``, ``center_y_m``, ``pixel_width_m``,
  ``pixel_height_m``; ``object_layer_spacing_m``, ``loss_epochs``, ``loss_values``.
- ``product.npz``: the same, attributes flattened (``probe_pixel_width_m``,
  ``object_center_x_m``, ``object_pixel_width_m``, ...).
- ``diffraction.h5``: ``patterns`` (M, N, N) counts with attributes ``detector_pixel_width_m``,
  ``detector_pixel_height_m``; ``indexes`` (M,); ``bad_pixels`` (N, N), True = bad.

A scan is a folder holding ``product.h5`` (or ``product.npz``) and ``diffraction.h5`` (the
ptychodus workflow layout), or the product file with ``diffraction.h5`` beside it. Positions
are matched to patterns by index; the OPR mode 0 of the probe and layer 0 of the object are used.

Half-pixel convention. ptychodus 1.7.0 maps a position to the object pixel
x_px = (x_m - center_x_m) / pixel_width_m + (W - 1) / 2 and centres an N-pixel window on it at
window index (N - 1) / 2 (``ObjectGeometry.map_coordinates_probe_to_object``,
``interpolate._calculate_support_frac``); here the window's index N/2 sits on the position
(DESIGN.md §2), so x = x_px + 1/2 = (x_m - center_x_m) / pixel_width_m + W / 2. Older versions
used W / 2 with a window from x_px - N/2, which gives the same x. Rows likewise. The probe
array needs no shift. Pinned by a bright-pixel test (tests/test_io_ptychodus.py).

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

from ptycho.config import PrepareConfig
from ptycho.data import PtychoDataset, read_npz
from ptycho.errors import DataError
from ptycho.files import write_atomically
from ptycho.io import hdf5, units
from ptycho.io.raw import Finding, RawScan

PRODUCT_NAMES = ("product.h5", "product.npz")
DIFFRACTION_NAME = "diffraction.h5"
PAIRED_DIFFRACTION_SUFFIX = "_diffraction.h5"
ENERGY_KEYS = ("photon_energy_eV", "probe_energy_eV")

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


def scan_files(path: Path) -> tuple[Path, Path]:
    """(product, diffraction) of a ptychodus scan given as a folder or as its product file."""
    if path.is_dir():
        products = [path / name for name in PRODUCT_NAMES if (path / name).is_file()]
        if not products:
            raise DataError(f"{path}: no {' or '.join(PRODUCT_NAMES)} in this folder (a ptychodus scan folder holds one and {DIFFRACTION_NAME})")
        product = products[0]
    elif path.is_file():
        product = path
    else:
        raise DataError(f"{path}: file not found")
    if product.name == DIFFRACTION_NAME or product.name.endswith(PAIRED_DIFFRACTION_SUFFIX):
        raise DataError(f"{path}: give the product file (or the folder), not its diffraction file")
    # the file written beside this product (an export of ours) wins over the folder's diffraction.h5
    candidates = (paired_diffraction_path(product), product.parent / DIFFRACTION_NAME)
    for diffraction in candidates:
        if diffraction.is_file():
            return product, diffraction
    raise DataError(
        f"{candidates[-1]}: file not found (the diffraction patterns that go with {product}; "
        f"also looked for {candidates[0].name})"
    )


def _far_field(value: Any, source: str) -> bool | None:
    """ptychodus's ``far_field`` flag (1.7.0; absent before, which ptychodus reads as True), or None when absent."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "biu":
        raise DataError(f"{source}: key 'far_field': expected a boolean, found {array.dtype} of shape {array.shape}")
    return bool(array.reshape(()))


def _product_h5(path: Path) -> dict[str, Any]:
    source = str(path)
    with hdf5.open_hdf5(path) as h5:
        attrs = dict(h5.attrs)
        energy = next((attrs[key] for key in ENERGY_KEYS if key in attrs), None)
        if energy is None:
            raise DataError(f"{source}: key 'photon_energy_eV': missing (also looked for the older 'probe_energy_eV')")
        if "detector_object_distance_m" not in attrs:
            raise DataError(f"{source}: key 'detector_object_distance_m': missing")
        probe_item, object_item = h5.get("probe"), h5.get("object")
        for name, item in (("probe", probe_item), ("object", object_item)):
            if not isinstance(item, h5py.Dataset):
                raise DataError(f"{source}: key '{name}': missing")
        object_attrs = dict(object_item.attrs)
        probe_attrs = dict(probe_item.attrs)
        return {
            "nominal_geometry": str(attrs.get("ptycho_nominal_geometry", "[]")),  # our own exports say which units are nominal
            "far_field": _far_field(attrs.get("far_field"), source),
            "energy_ev": hdf5.scalar(energy, source, "photon_energy_eV"),
            "distance_m": hdf5.scalar(attrs["detector_object_distance_m"], source, "detector_object_distance_m"),
            "indexes": hdf5.dataset(h5, "probe_position_indexes", source),
            "x_m": hdf5.dataset(h5, "probe_position_x_m", source),
            "y_m": hdf5.dataset(h5, "probe_position_y_m", source),
            "probe": np.asarray(probe_item[()]),
            "object": np.asarray(object_item[()]),
            "probe_pixel": tuple(probe_attrs.get(f"pixel_{axis}_m") for axis in ("width", "height")),
            "object_pixel": tuple(object_attrs.get(f"pixel_{axis}_m") for axis in ("width", "height")),
            "center": tuple(object_attrs.get(f"center_{axis}_m") for axis in ("x", "y")),
        }


def _product_npz(path: Path) -> dict[str, Any]:
    source = str(path)
    arrays = read_npz(path)
    energy = next((arrays[key] for key in ENERGY_KEYS if key in arrays), None)
    if energy is None:
        raise DataError(f"{source}: key 'photon_energy_eV': missing (also looked for the older 'probe_energy_eV')")
    for key in ("detector_object_distance_m", "probe_position_indexes", "probe_position_x_m", "probe_position_y_m", "probe", "object"):
        if key not in arrays:
            raise DataError(f"{source}: key '{key}': missing")
    return {
        "far_field": _far_field(arrays.get("far_field"), source),
        "energy_ev": hdf5.scalar(energy, source, "photon_energy_eV"),
        "distance_m": hdf5.scalar(arrays["detector_object_distance_m"], source, "detector_object_distance_m"),
        "indexes": arrays["probe_position_indexes"],
        "x_m": arrays["probe_position_x_m"],
        "y_m": arrays["probe_position_y_m"],
        "probe": arrays["probe"],
        "object": arrays["object"],
        "probe_pixel": tuple(arrays.get(f"probe_pixel_{axis}_m") for axis in ("width", "height")),
        "object_pixel": tuple(arrays.get(f"object_pixel_{axis}_m") for axis in ("width", "height")),
        "center": tuple(arrays.get(f"object_center_{axis}_m") for axis in ("x", "y")),
    }


def read(path: Path, config: PrepareConfig) -> RawScan:
    """Read a ptychodus product and its diffraction file (module docstring)."""
    del config
    product_path, diffraction_path = scan_files(Path(path))
    source = f"{product_path} + {diffraction_path.name}"
    product = _product_npz(product_path) if product_path.suffix == ".npz" else _product_h5(product_path)
    with hdf5.open_hdf5(diffraction_path) as h5:
        patterns_item = h5.get("patterns")
        if not isinstance(patterns_item, h5py.Dataset):
            raise DataError(f"{diffraction_path}: key 'patterns': missing")
        patterns = np.asarray(patterns_item[()])
        pattern_attrs = dict(patterns_item.attrs)
        pattern_indexes = hdf5.dataset(h5, "indexes", str(diffraction_path)) if "indexes" in h5 else np.arange(len(patterns))
        bad_pixels = hdf5.optional(h5, "bad_pixels")
    if patterns.ndim != 3:
        raise DataError(f"{diffraction_path}: key 'patterns': expected (M, N, N), found shape {patterns.shape}")
    size = patterns.shape[-1]

    findings: list[Finding] = []
    indexes = np.asarray(product["indexes"]).astype(np.int64).reshape(-1)
    x_m = np.asarray(product["x_m"], dtype=np.float64).reshape(-1)
    y_m = np.asarray(product["y_m"], dtype=np.float64).reshape(-1)
    if not len(indexes) == len(x_m) == len(y_m):
        raise DataError(f"{product_path}: key 'probe_position_indexes': {len(indexes)} indexes for {len(x_m)} x and {len(y_m)} y positions")
    row_of = {int(index): row for row, index in enumerate(np.asarray(pattern_indexes).reshape(-1))}
    missing = [int(i) for i in indexes if int(i) not in row_of]
    if missing:
        raise DataError(f"{diffraction_path}: key 'indexes': {len(missing)} positions of the product have no pattern (first index {missing[0]})")
    rows = np.array([row_of[int(i)] for i in indexes], dtype=np.int64)
    if len(rows) < len(patterns):
        findings.append(Finding("indexes", f"{len(patterns) - len(rows)} patterns have no position in the product and are left out", "add their positions to the product if you need them"))

    obj = np.asarray(product["object"])
    while obj.ndim > 2 and obj.shape[0] == 1:
        obj = obj[0]
    if obj.ndim == 3:
        findings.append(Finding("object", f"{obj.shape[0]} layers; layer 0 is used", "multislice objects are not supported"))
        obj = obj[0]
    if obj.ndim != 2 or not np.iscomplexobj(obj):
        raise DataError(f"{product_path}: key 'object': expected a complex (layers, H, W) array, found {obj.dtype} {obj.shape}")
    probe = np.asarray(product["probe"])
    if probe.ndim == 4:
        probe = probe[0]  # OPR mode 0
    if probe.ndim == 2:
        probe = probe[None]
    if probe.ndim != 3 or probe.shape[-2:] != (size, size) or not np.iscomplexobj(probe):
        raise DataError(f"{product_path}: key 'probe': expected complex (OPR, modes, {size}, {size}), found {product['probe'].dtype} {product['probe'].shape}")

    def positive(value: Any, key: str) -> float:
        if value is None:
            raise DataError(f"{product_path}: key '{key}': missing")
        number = hdf5.scalar(value, str(product_path), key)
        if number <= 0:
            raise DataError(f"{product_path}: key '{key}': must be > 0, found {number:g}")
        return number

    pixel_width = positive(product["object_pixel"][0], "object.pixel_width_m")
    pixel_height = positive(product["object_pixel"][1], "object.pixel_height_m")
    center_x = hdf5.scalar(product["center"][0], str(product_path), "object.center_x_m") if product["center"][0] is not None else 0.0
    center_y = hdf5.scalar(product["center"][1], str(product_path), "object.center_y_m") if product["center"][1] is not None else 0.0
    height, width = obj.shape
    detector_pixel = None
    if "detector_pixel_width_m" in pattern_attrs and "detector_pixel_height_m" in pattern_attrs:
        detector_pixel = (hdf5.scalar(pattern_attrs["detector_pixel_width_m"], str(diffraction_path), "detector_pixel_width_m"),
                          hdf5.scalar(pattern_attrs["detector_pixel_height_m"], str(diffraction_path), "detector_pixel_height_m"))
    wavelength = units.wavelength_from_energy_ev(product["energy_ev"]) if product["energy_ev"] > 0 else None
    unit_keys = units.units_metadata(wavelength_m=wavelength, distance_m=product["distance_m"], detector_pixel_m=detector_pixel, size=size)
    if "object_pixel_size_m" in unit_keys:
        expected = unit_keys["object_pixel_size_m"]
        if not np.allclose(expected, (pixel_width, pixel_height), rtol=0.01):
            findings.append(Finding(
                "object.pixel_width_m", f"the product's object pixel ({pixel_width:.4g}, {pixel_height:.4g}) m differs from "
                f"wavelength z / (N p) = ({expected[0]:.4g}, {expected[1]:.4g}) m",
                "check the product's energy, distance and the detector pixel size (positions use the product's pixel)",
            ))
    unit_keys["object_pixel_size_m"] = [pixel_width, pixel_height]

    metadata: dict[str, Any] = {
        **unit_keys,
        "source_format": "ptychodus",
        **({"far_field": product["far_field"]} if product["far_field"] is not None else {}),
        **({"nominal_geometry": product["nominal_geometry"]} if product.get("nominal_geometry", "[]") != "[]" else {}),
        "positions": "x = (x_m - center_x_m) / pixel_width_m + W/2 (ptychodus 1.7.0's (W - 1)/2 pixel plus its half-pixel window centre)",
        "position_offset_m": [center_x - width / 2 * pixel_width, center_y - height / 2 * pixel_height],
    }
    if np.ptp(np.abs(obj)) <= 1e-6 * max(float(np.abs(obj).max()), 1e-30) and np.ptp(np.angle(obj)) <= 1e-6:
        metadata["reference_object"] = "dropped: the product's object is constant (an initial guess)"
        obj = None
    else:
        metadata["reference_object"] = f"{product_path.name}: object layer 0 (a reconstruction or reference, not necessarily the truth)"
    mask = None if bad_pixels is None else ~np.asarray(bad_pixels, dtype=bool)
    return RawScan(
        source=source,
        pattern_key="patterns",
        patterns=patterns[rows],
        quantity="intensity",
        quantity_origin="ptychodus: diffraction.h5 patterns are photon counts",
        centred=True,
        xcoords=(x_m - center_x) / pixel_width + width / 2,
        ycoords=(y_m - center_y) / pixel_height + height / 2,
        probe=probe.astype(np.complex64),
        object=None if obj is None else obj.astype(np.complex64),
        mask=mask,
        scan_index=indexes,
        metadata=metadata,
        findings=tuple(findings),
    )


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


def diffraction_bytes(*, amplitudes: np.ndarray, scan_index: np.ndarray, mask: np.ndarray | None, metadata: dict[str, Any]) -> bytes:
    """The bytes of a ptychodus ``diffraction.h5`` holding these patterns (M, N, N) as counts, by index.

    Detector pixel from :func:`export_geometry` (the one that makes the product's geometry
    consistent); ``bad_pixels`` = not ``mask``. Byte-deterministic.
    """
    geometry = export_geometry(metadata, amplitudes.shape[-1])
    buffer = io.BytesIO()
    options = {"track_times": False}
    with h5py.File(buffer, "w", track_order=False) as h5:
        h5.create_dataset("indexes", data=np.asarray(scan_index, dtype=np.int64), **options)
        patterns = h5.create_dataset("patterns", data=np.square(amplitudes, dtype=np.float32), **options)
        patterns.attrs["detector_pixel_width_m"] = geometry["detector_pixel_m"][0]
        patterns.attrs["detector_pixel_height_m"] = geometry["detector_pixel_m"][1]
        bad = np.zeros(amplitudes.shape[-2:], dtype=bool) if mask is None else ~np.asarray(mask, dtype=bool)
        h5.create_dataset("bad_pixels", data=bad, **options)
    return buffer.getvalue()


def write_product(path: str | Path, reconstruction, data: PtychoDataset, losses: list[float] | None = None) -> Path:
    """Write `reconstruction` (ptycho.reconstruction.Reconstruction) of `data` as a ptychodus product.h5, atomically,
    with the matching diffraction file beside it (:func:`paired_diffraction_path`, returned).

    The probe is the reconstruction's own when it has one, else the data's modes.
    """
    path = Path(path)
    diffraction = paired_diffraction_path(path)
    probe = reconstruction.probe if reconstruction.probe is not None else data.all_probe_modes
    write_atomically(diffraction, diffraction_bytes(
        amplitudes=data.amplitudes, scan_index=data.scan_index, mask=data.mask, metadata=data.metadata,
    ))
    write_atomically(path, product_bytes(
        object_=reconstruction.object, origin=reconstruction.origin, probe=probe,
        xcoords=data.xcoords, ycoords=data.ycoords, scan_index=data.scan_index, metadata=data.metadata,
        name=reconstruction.method,
        comments=f"written by ptycho from {reconstruction.method}; its patterns are in {diffraction.name} (this scan only)",
        losses=losses, diffraction_file=diffraction.name,
    ))
    return diffraction
