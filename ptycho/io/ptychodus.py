"""ptychodus products: read a product with its diffraction file.

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

Export: ``ptycho.io.product`` writes our reconstructions as products (the inverse of this
reader's position map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptycho.config import PrepareConfig
from ptycho.npzfile import read_npz
from ptycho.errors import DataError
from ptycho.io import hdf5, safety, units
from ptycho.io.product import PAIRED_DIFFRACTION_SUFFIX, paired_diffraction_path
from ptycho.io.raw import Finding, RawScan

PRODUCT_NAMES = ("product.h5", "product.npz")
DIFFRACTION_NAME = "diffraction.h5"
ENERGY_KEYS = ("photon_energy_eV", "probe_energy_eV")


def scan_files(path: Path) -> tuple[Path, Path]:
    """(product, diffraction) of a ptychodus scan given as a folder or as its product file."""
    if path.is_dir():
        products = [path / name for name in PRODUCT_NAMES if (path / name).is_file()]
        if not products:
            raise DataError(f"{path}: no {' or '.join(PRODUCT_NAMES)} in this folder (a ptychodus scan folder holds one and {DIFFRACTION_NAME})")
        product = products[0]
    else:
        product = safety.regular_file(path)
    if product.name == DIFFRACTION_NAME or product.name.endswith(PAIRED_DIFFRACTION_SUFFIX):
        raise DataError(f"{path}: give the product file (or the folder), not its diffraction file")
    # the file written beside this product (an export of ours) wins over the folder's diffraction.h5
    candidates = (paired_diffraction_path(product), product.parent / DIFFRACTION_NAME)
    for diffraction in candidates:
        if diffraction.exists():
            return product, safety.regular_file(diffraction)
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


def _indexes(values: Any, source: str, key: str) -> np.ndarray:
    """Whole numbers as int64 (M,), or DataError naming the key."""
    values = np.asarray(values).reshape(-1)
    if values.dtype.kind not in "iuf" or not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or np.any(np.abs(values) > 2**53):
        raise DataError(f"{source}: key '{key}': expected whole-number indexes, found {values.dtype} values such as {values[:3]}")
    return values.astype(np.int64)


def read(path: Path, config: PrepareConfig) -> RawScan:
    """Read a ptychodus product and its diffraction file (module docstring)."""
    del config
    product_path, diffraction_path = scan_files(Path(path))
    source = f"{product_path} + {diffraction_path.name}"
    product = _product_npz(product_path) if product_path.suffix == ".npz" else _product_h5(product_path)
    for key, quantity in (("energy_ev", "photon_energy_eV"), ("distance_m", "distance_m")):
        if product[key] != 0:  # 0: unknown (as ptycho's own export writes a scan without units)
            safety.plausible(product[key], str(product_path), {"energy_ev": "photon_energy_eV"}.get(key, "detector_object_distance_m"), quantity)
    with hdf5.open_hdf5(diffraction_path) as h5:
        patterns_item = h5.get("patterns")
        if not isinstance(patterns_item, h5py.Dataset):
            raise DataError(f"{diffraction_path}: key 'patterns': missing")
        patterns = np.asarray(patterns_item[()])
        pattern_attrs = dict(patterns_item.attrs)
        pattern_indexes = hdf5.dataset(h5, "indexes", str(diffraction_path)) if "indexes" in h5 else np.arange(len(patterns))
        bad_pixels = hdf5.optional(h5, "bad_pixels")
    if patterns.ndim != 3 or 0 in patterns.shape:
        raise DataError(f"{diffraction_path}: key 'patterns': expected (M, N, N), found shape {patterns.shape}")
    pattern_indexes = _indexes(pattern_indexes, str(diffraction_path), "indexes")
    if len(pattern_indexes) != len(patterns):
        raise DataError(f"{diffraction_path}: key 'indexes': {len(pattern_indexes)} indexes for {len(patterns)} patterns")
    size = patterns.shape[-1]

    findings: list[Finding] = []
    indexes = _indexes(product["indexes"], str(product_path), "probe_position_indexes")
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
    for key, value in (("object", obj), ("probe", np.asarray(product["probe"]))):
        if value.size == 0:
            raise DataError(f"{product_path}: key '{key}': empty, shape {value.shape}")
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
        return safety.plausible(number, str(product_path), key, "object_pixel_m")

    pixel_width = positive(product["object_pixel"][0], "object.pixel_width_m")
    pixel_height = positive(product["object_pixel"][1], "object.pixel_height_m")
    center_x = hdf5.scalar(product["center"][0], str(product_path), "object.center_x_m") if product["center"][0] is not None else 0.0
    center_y = hdf5.scalar(product["center"][1], str(product_path), "object.center_y_m") if product["center"][1] is not None else 0.0
    height, width = obj.shape
    detector_pixel = None
    if "detector_pixel_width_m" in pattern_attrs and "detector_pixel_height_m" in pattern_attrs:
        detector_pixel = tuple(
            safety.plausible(hdf5.scalar(pattern_attrs[key], str(diffraction_path), key), str(diffraction_path), key, "detector_pixel_m")
            for key in ("detector_pixel_width_m", "detector_pixel_height_m")
        )
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
