"""The bounded NPZ reader: the members of an untrusted ``.npz`` read without pickle, every
header checked before anything is allocated (the zip level is ``ptycho.archive``'s).

Used by ``ptycho.data`` for the canonical file and by the NPZ-based scan readers of ``ptycho.io``.
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ptycho.archive import ZIP_ERRORS, checked_infos, open_zip, parse_json, read_into
from ptycho.errors import DataError
from ptycho.rowfile import RowFile

MAX_NPZ_BYTES = 8 << 30
"""Largest total (uncompressed) size of the arrays of one NPZ file: 8 GiB, 130 000 patterns of
128 x 128 float32. A file that declares more is refused before anything is read."""

MAX_INFLATION = 500
MAX_INFLATION_FREE_BYTES = 64 << 20
"""A member larger than 64 MiB may inflate at most 500-fold. Measured on simulated amplitudes
(float32 sqrt of counts, N = 32): 6-fold at 1e6 photons per pattern, 28-fold at 1e3, 183-fold
at 10 (99 % zeros). 1 GiB of zeros deflates 1030-fold (the most deflate can do): a zip bomb
like that is refused before seconds of decompression are spent on it."""

MAX_NPZ_MEMBERS = 64
MAX_METADATA_BYTES = 1 << 20
_MAX_NPY_HEADER = 10000  # numpy's own default limit on a .npy header
_NPY_KINDS = "biufcUS"  # bool, integers, floats, complex, strings; never objects or records

# Which source dtype kinds may be cast to a target kind without losing meaning
# (b: bool, i: int, u: unsigned, f: float, c: complex). Bool or string data is never numbers.
_CASTABLE_KINDS = {"f": "iuf", "c": "iufc", "i": "iu"}


def key_error(source: str, key: str, problem: str) -> DataError:
    return DataError(f"{source}: key '{key}': {problem}")


def read_npz(
    path: str | os.PathLike[str], keys: Iterable[str] | None = None, *, by_rows: Iterable[str] = ()
) -> dict[str, np.ndarray | RowFile]:
    """The members ``keys`` (all when None) of the NPZ at `path`, read without pickle, each
    checked before it is allocated.

    The file is untrusted: member names, compression and declared sizes are checked first (see
    ``ptycho.archive``); each ``.npy`` header's dtype and shape must account exactly for the
    member's size, and the arrays read stay under ``MAX_NPZ_BYTES`` together, so a header that
    claims 10**9 patterns, or a zip bomb beyond the cap, is refused before memory is allocated.
    Members not asked for are checked (header only) but not read.

    Members named in ``by_rows`` that are stored uncompressed in C order (as ``save_dataset``
    writes ``diffraction``) are not read: they come back as a ``ptycho.rowfile.RowFile`` that
    reads rows from the file on demand, after one streaming pass has checked the member's
    CRC-32. They are not held in memory, so they do not count towards ``MAX_NPZ_BYTES``.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise DataError(f"{source}: file not found")
    if not path.is_file():
        raise DataError(f"{source}: not a file")
    # np.load on a non-zip would try the .npy or pickle readers and report "pickled data",
    # which is misleading for, say, a text file; say what it is instead.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{source}: not a valid NPZ file (not a zip archive)")
    arrays: dict[str, np.ndarray | RowFile] = {}
    where = f"{source}: not a valid NPZ file"
    by_rows = set(by_rows)
    with open_zip(path, where, DataError) as archive:
        infos = checked_infos(archive, where, DataError, max_members=MAX_NPZ_MEMBERS, strict_names=False)
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise key_error(source, info.filename, "is not a .npy array member of the NPZ")
        wanted = None if keys is None else set(keys)
        used = [info for info in infos if wanted is None or info.filename[: -len(".npy")] in wanted]
        in_place = [info for info in used if info.filename[: -len(".npy")] in by_rows and info.compress_type == zipfile.ZIP_STORED]
        for info in used:
            if info.file_size > MAX_INFLATION_FREE_BYTES and info.file_size > MAX_INFLATION * max(info.compress_size, 1):
                raise key_error(
                    source, info.filename[: -len(".npy")],
                    f"inflates from {info.compress_size} to {info.file_size} bytes, more than {MAX_INFLATION}-fold: a "
                    "zip bomb, or an array that is almost all one value (store it uncompressed, np.savez, if it is real)",
                )
        total = sum(info.file_size for info in used if info not in in_place)
        if total > MAX_NPZ_BYTES:
            raise DataError(
                f"{source}: not a valid NPZ file: its arrays declare {total} bytes, more than the "
                f"{MAX_NPZ_BYTES} allowed (ptycho.npzfile.MAX_NPZ_BYTES)"
            )
        for info in infos:
            # Every header is checked (an object array anywhere is refused); only the arrays
            # this contract uses are read, so a large unrelated member costs nothing.
            if info in in_place:
                array = _rows_in_place(archive, info, path, source)
            else:
                array = _read_npy(archive, info, source, read_data=info in used)
            if array is not None:
                arrays[info.filename[: -len(".npy")]] = array
    return arrays


def _read_header(handle: Any, source: str, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a ``.npy`` stream, checked: no objects, no negative extent."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle, max_header_size=_MAX_NPY_HEADER)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle, max_header_size=_MAX_NPY_HEADER)
    else:
        raise key_error(source, key, f"npy format version {version[0]}.{version[1]} is not read (1.0 and 2.0 are)")
    if dtype.hasobject:
        # An object array would be unpickled; refused before anything is read.
        raise key_error(
            source, key, "holds pickled Python objects (an object array); pickled data is refused "
            "because unpickling can execute code"
        )
    if dtype.kind not in _NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise key_error(source, key, f"dtype {dtype} is not read; numbers and strings only")
    if any(extent < 0 for extent in shape):
        raise key_error(source, key, f"header declares a negative extent in shape {shape}")
    return shape, fortran_order, dtype


def _read_sized_header(handle, info: zipfile.ZipInfo, source: str, key: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``_read_header``, the check that the header accounts exactly for the member's size, and the header's length."""
    shape, fortran_order, dtype = _read_header(handle, source, key)
    header_bytes = handle.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if header_bytes + nbytes != info.file_size:
        raise key_error(
            source, key, f"header declares shape {_short(shape)} {dtype} ({nbytes} bytes), but the member "
            f"holds {info.file_size - header_bytes} bytes of data"
        )
    return shape, fortran_order, dtype, header_bytes


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, *, read_data: bool) -> np.ndarray | None:
    """One ``.npy`` member: header parsed and checked, then (``read_data``) the data read into
    one allocation; None when the data are not read."""
    key = info.filename[: -len(".npy")]
    try:
        with archive.open(info) as handle:
            shape, fortran_order, dtype, _ = _read_sized_header(handle, info, source, key)
            if not read_data:
                return None
            array = np.empty(shape, dtype=dtype, order="F" if fortran_order else "C")
            flat = (array.T if fortran_order else array).reshape(-1)  # a view: the array's memory in file order
            read_into(handle, memoryview(flat.view(np.uint8)), f"{source}: not a valid NPZ file: key '{key}'", DataError)
    except (*ZIP_ERRORS, SyntaxError, RecursionError, tokenize.TokenError) as exc:
        # numpy's header parser reports a malformed header as ValueError (or, from its
        # tokenizer, TokenError); zipfile a corrupt or truncated member as BadZipFile,
        # zlib.error or EOFError.
        raise DataError(f"{source}: not a valid NPZ file: key '{key}': {type(exc).__name__}: {_short(str(exc), 200)}") from exc
    return array


def _rows_in_place(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, source: str) -> np.ndarray | RowFile:
    """A stored (uncompressed) ``.npy`` member as a ``RowFile`` on its bytes inside the zip.

    The header is checked as by ``_read_npy`` and the whole member is streamed once through
    zipfile, which checks its CRC-32 (a corrupt file is refused here, not met half-way through
    a reconstruction). A Fortran-ordered or 0-d member is read into memory instead.
    """
    key = info.filename[: -len(".npy")]
    try:
        with archive.open(info) as handle:
            shape, fortran_order, dtype, header_bytes = _read_sized_header(handle, info, source, key)
            while handle.read(1 << 20):  # zipfile checks the CRC-32 at the end of the member
                pass
        if fortran_order or len(shape) == 0:
            return _read_npy(archive, info, source, read_data=True)
        # The member's data start after its local header (30 bytes, name, extra field): read
        # from the file itself, since the local extra field may differ from the central one.
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)
        # Local file header: signature, 5 x 2-byte fields, CRC, 2 sizes, name length, extra length.
        signature, *_, name_length, extra_length = struct.unpack("<4s2B4HL2L2H", local)
        if signature != b"PK\x03\x04":
            raise key_error(source, key, "the zip's local header of this member is missing or corrupt")
        start = info.header_offset + 30 + name_length + extra_length
    except (*ZIP_ERRORS, SyntaxError, RecursionError, tokenize.TokenError) as exc:
        raise DataError(f"{source}: not a valid NPZ file: key '{key}': {type(exc).__name__}: {_short(str(exc), 200)}") from exc
    return RowFile.open(path, start + header_bytes, shape, dtype, source=f"{source}: key '{key}'", error=DataError)


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_metadata(arrays: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    if "metadata" not in arrays:
        return {}
    value = arrays["metadata"]
    if value.ndim != 0 or value.dtype.kind not in "US":
        raise key_error(
            source,
            "metadata",
            f"expected a 0-d string array holding JSON, found dtype {value.dtype} shape {value.shape}",
        )
    text = value.item()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise key_error(source, "metadata", f"invalid JSON: not UTF-8 text ({exc})") from exc
    parsed = parse_json(text, f"{source}: key 'metadata': invalid JSON", DataError, max_bytes=MAX_METADATA_BYTES)
    if not isinstance(parsed, dict):
        raise key_error(source, "metadata", f"JSON must be an object, found {type(parsed).__name__}")
    return parsed


def cast(value: np.ndarray, source: str, key: str, dtype: Any) -> np.ndarray:
    """`value` as a C-contiguous array of `dtype`, refusing casts that change meaning."""
    target = np.dtype(dtype)
    if value.dtype.kind not in _CASTABLE_KINDS[target.kind]:
        if value.dtype.kind == "c":
            problem = f"complex-typed values ({value.dtype}); expected real numbers"
        else:
            problem = f"dtype {value.dtype} cannot be read as {target.name}"
        raise key_error(source, key, problem)
    # asarray, not ascontiguousarray: the latter turns a 0-d array into 1-D and would hide it.
    return np.asarray(value, dtype=target, order="C")
