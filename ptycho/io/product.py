"""Our reconstructions as ptychodus products (``product.h5``), for the `infer` and `baseline`
stages (``ptycho.io.ptychodus`` reads such products; this module only writes, so a stage that
writes a product does not import the reader).

Export (:func:`write_product`): a reconstruction becomes a ``product.h5`` with the inverse map,
x_m = (x - x0 - W/2) * pixel_width + center_x_m with center_x_m = (x0 + W/2) * pixel_width, so
that x_m = x * pixel_width (+ the offset the reader removed, ``position_offset_m``). Pixel sizes
come from ``metadata["object_pixel_size_m"]``; without units 1 px is written as 1 m and the root
attribute ``ptycho_units`` says so.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptycho.data import PtychoDataset
from ptycho.files import write_atomically


def product_bytes(
    *, object_: np.ndarray, origin: tuple[int, int], probe: np.ndarray, xcoords: np.ndarray, ycoords: np.ndarray,
    scan_index: np.ndarray, metadata: dict[str, Any], name: str, comments: str, losses: list[float] | None = None,
) -> bytes:
    """The bytes of a ptychodus ``product.h5`` holding a reconstruction (module docstring).

    object_ (H, W) complex in the canvas frame at ``origin`` = (x0, y0); probe (N, N) or
    (K, N, N); positions (M,) in the same object-pixel units. Byte-deterministic (no time stamps).
    """
    pixel = metadata.get("object_pixel_size_m")
    known = isinstance(pixel, list) and len(pixel) == 2
    pixel_width, pixel_height = (float(pixel[0]), float(pixel[1])) if known else (1.0, 1.0)
    offset = metadata.get("position_offset_m", [0.0, 0.0]) if known else [0.0, 0.0]
    height, width = object_.shape
    x0, y0 = origin
    center_x = (x0 + width / 2) * pixel_width + offset[0]
    center_y = (y0 + height / 2) * pixel_height + offset[1]
    modes = probe[None] if probe.ndim == 2 else probe
    energy_ev = float(metadata.get("photon_energy_eV", 0.0))
    distance = float(metadata.get("detector_distance_m", 0.0))
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
        h5.attrs["ptycho_units"] = (
            "object and probe pixel sizes from the scan's wavelength, distance and detector pixel"
            if known else "physical units unknown: 1 object pixel is written as 1 m; energy and distance are 0"
        )
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


def write_product(path: str | Path, reconstruction, data: PtychoDataset, losses: list[float] | None = None) -> None:
    """Write `reconstruction` (ptycho.reconstruction.Reconstruction) of `data` as a ptychodus product.h5, atomically.

    The probe is the reconstruction's own when it has one, else the data's modes.
    """
    probe = reconstruction.probe if reconstruction.probe is not None else data.all_probe_modes
    write_atomically(path, product_bytes(
        object_=reconstruction.object, origin=reconstruction.origin, probe=probe,
        xcoords=data.xcoords, ycoords=data.ycoords, scan_index=data.scan_index, metadata=data.metadata,
        name=reconstruction.method, comments=f"written by ptycho from {reconstruction.method}", losses=losses,
    ))
