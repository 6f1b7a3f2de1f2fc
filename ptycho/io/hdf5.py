"""Small, strict helpers to read HDF5 inputs (CXI, ptychodus) with errors naming file and path.

A file is checked whole when it is opened (``ptycho.io.safety.check_hdf5``: no links to other
files, no declared sizes beyond what it stores); a key is checked when it is read (numbers only,
read errors as DataError naming the key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptycho.errors import DataError
from ptycho.io import safety


def open_hdf5(path: Path) -> h5py.File:
    """The HDF5 file at `path` opened read-only and checked whole (module docstring), or DataError saying why not."""
    safety.regular_file(path)
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: cannot be opened as HDF5 ({error})") from error
    try:
        safety.check_hdf5(h5, str(path))
    except DataError:
        h5.close()
        raise
    return h5


def _numbers(item: h5py.Dataset, source: str, name: str) -> np.ndarray:
    """The values of a numeric dataset; DataError naming the key for strings, records or a read error."""
    dtype = item.dtype
    if dtype.kind not in "biufc" or dtype.fields is not None:
        raise DataError(f"{source}: key '{name}': holds {dtype} values, expected numbers")
    try:
        return np.asarray(item[()])
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        raise DataError(f"{source}: key '{name}': cannot be read ({type(error).__name__}: {error})") from error


def dataset(h5: h5py.File, name: str, source: str) -> np.ndarray:
    """The array at `name` (links followed), or DataError naming it."""
    item = h5.get(name)
    if not isinstance(item, h5py.Dataset):
        found = "missing" if item is None else f"a {type(item).__name__}, not a dataset"
        raise DataError(f"{source}: key '{name}': {found}")
    return _numbers(item, source, name)


def optional(h5: h5py.File, name: str) -> np.ndarray | None:
    """The array at `name`, or None when there is no dataset there."""
    item = h5.get(name)
    return _numbers(item, h5.filename, name) if isinstance(item, h5py.Dataset) else None


def scalar(value: Any, source: str, key: str) -> float:
    """A finite float from a 0-d (or single-element) array or attribute value."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        raise DataError(f"{source}: key '{key}': expected one number, found {array.dtype} of shape {array.shape}")
    number = float(array.reshape(()))
    if not np.isfinite(number):
        raise DataError(f"{source}: key '{key}': not finite ({number})")
    return number
