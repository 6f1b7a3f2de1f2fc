"""Writing files safely: atomically (never a partial file) and byte-deterministically, and the
bytes of the reports the stages write (CSV, JSON).

Deterministic bytes matter to DVC: an output whose content did not change must hash the same,
or every downstream stage re-runs for nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from ptycho.rowfile import RowFile, array_chunks

FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def temp_path(path: str | Path) -> Path:
    """A fresh temp file name beside ``path``: ``.<name>.<hex id>.tmp`` in the same folder, so
    that a rename puts it in place atomically (``remove_stale_temp_files`` knows the pattern)."""
    path = Path(path)
    return path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"


def remove_stale_temp_files(*paths: str | Path) -> None:
    """Delete the temp files (``temp_path``) that a killed run left beside these outputs."""
    for path in map(Path, paths):
        if path.parent.is_dir():
            pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]+\.tmp")
            for temp in path.parent.iterdir():
                if pattern.fullmatch(temp.name) and temp.is_file():
                    temp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file name to write (by any writer, e.g. h5py) that appears at ``path`` only when the
    block ends without error: then it is fsynced and renamed over ``path``; on an error it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path)
    try:
        yield temp
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write that appears at ``path`` only when the block ends without error
    (``atomic_path``); on an error ``path`` is left as it was."""
    with atomic_path(path) as temp:
        # 0o666 minus the umask, like an ordinary file (mkstemp would leave it 0600).
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            yield handle


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file in the destination folder, fsync, then rename over ``path``."""
    with atomic_file(path) as handle:
        handle.write(data)


def zip_member(name: str, compressed: bool = True) -> zipfile.ZipInfo:
    """A zip entry with a fixed time stamp and permissions, so equal content gives equal bytes."""
    info = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
    info.create_system = 3  # unix
    return info


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy header of a C-ordered array (format 1.0, or 2.0 when the header needs it)."""
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be saved when allow_pickle=False")
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # header longer than format 1.0 allows
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def write_npz_to(handle: BinaryIO, arrays: dict[str, Any], stored: Iterable[str] = ()) -> None:
    """Write arrays as an NPZ (readable by np.load, no pickle) into an open, seekable binary file.

    Members are written in the given order with fixed times, chunk by chunk (at most
    ``rowfile.CHUNK_BYTES`` of an array in memory at a time, beyond the array itself), so an
    array may also be a ``ptycho.rowfile.RowFile`` that is never read whole. Members named in
    ``stored`` are written uncompressed, so that readers can read their rows in place
    (``ptycho.data.load_dataset(..., by_rows=True)``); the others are deflated (level 6).
    Equal arrays give equal bytes.
    """
    stored = set(stored)
    with zipfile.ZipFile(handle, "w") as archive:
        for name, array in arrays.items():
            if not isinstance(array, RowFile):
                array = np.asanyarray(array)
            dtype = np.dtype(array.dtype)
            header = _npy_header(tuple(array.shape), dtype)
            info = zip_member(f"{name}.npy", compressed=name not in stored)
            info.file_size = len(header) + math.prod(array.shape) * dtype.itemsize  # zip64 chosen up front when needed
            with archive.open(info, "w") as member:
                member.write(header)
                if array.ndim == 0:
                    member.write(np.ascontiguousarray(array).tobytes())
                    continue
                for _, chunk in array_chunks(array):
                    member.write(np.ascontiguousarray(chunk).data)


def write_npz(path: str | Path, arrays: dict[str, Any], stored: Iterable[str] = ()) -> None:
    """Write arrays as a byte-deterministic NPZ, atomically and chunk by chunk (``write_npz_to``)."""
    with atomic_file(path) as handle:
        write_npz_to(handle, arrays, stored)


def csv_bytes(rows: list[dict[str, float]]) -> bytes:
    """Rows as CSV; columns in the order they first appear."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def _finite_or_none(value):
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, recursively."""
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def json_bytes(report: dict) -> bytes:
    """A metrics report as JSON: sorted keys, a number that is not finite written as null (JSON has
    no NaN or Infinity; DVC and other readers refuse them)."""
    return (json.dumps(_finite_or_none(report), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
