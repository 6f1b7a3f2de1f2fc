"""Small, strict helpers to read HDF5 inputs (CXI, ptychodus) with errors naming file and path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptycho.errors import DataError


def open_hdf5(path: Path) -> h5py.File:
    """The HDF5 file at `path` opened read-only, or DataError saying why not."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: cannot be opened as HDF5 ({error})") from error


def dataset(h5: h5py.File, name: str, source: str) -> np.ndarray:
    """The array at `name` (links followed), or DataError naming it."""
    item = h5.get(name)
    if not isinstance(item, h5py.Dataset):
        found = "missing" if item is None else f"a {type(item).__name__}, not a dataset"
        raise DataError(f"{source}: key '{name}': {found}")
    return np.asarray(item[()])


def optional(h5: h5py.File, name: str) -> np.ndarray | None:
    """The array at `name`, or None when there is no dataset there."""
    item = h5.get(name)
    return np.asarray(item[()]) if isinstance(item, h5py.Dataset) else None


def scalar(value: Any, source: str, key: str) -> float:
    """A finite float from a 0-d (or single-element) array or attribute value."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        raise DataError(f"{source}: key '{key}': expected one number, found {array.dtype} of shape {array.shape}")
    number = float(array.reshape(()))
    if not np.isfinite(number):
        raise DataError(f"{source}: key '{key}': not finite ({number})")
    return number
