"""Arrays kept in a file and read by rows: the patterns of a prepared scan, the patches inference spills.

A row file holds M rows of one shape and dtype (a row: one (N, N) diffraction pattern, one
(h, w) placed patch), contiguous and in C order, at a byte offset of a file. Rows are read
with plain reads into fresh arrays, never through a memory map: the pages of a map count
towards the process's resident memory once touched, so a map read batch by batch still ends
up resident in full (819 MB for 50,000 patterns of 64 x 64), while pages that were only read
stay in the kernel's page cache, which the kernel reclaims when memory runs short. Memory is
therefore what the caller holds: the rows it asked for.

``RowFile`` reads (an existing file: an uncompressed NPZ member) and ``ScratchRows`` appends
then reads (an anonymous temporary file, gone when closed or when the process ends).
"""

from __future__ import annotations

import math
import os
import tempfile
import weakref
from typing import Any, BinaryIO, Iterator

import numpy as np

CHUNK_BYTES = 64 << 20
"""Rows per chunk in ``array_chunks``: as many as fit in 64 MiB (at least one)."""


class RowFile:
    """M rows of ``row_shape`` and ``dtype`` at byte ``offset`` of an open binary file.

    Indexing reads: ``rows[i]`` one row, ``rows[a:b]`` a range, ``rows[index]`` the rows of an
    integer array of any shape (result shape ``index.shape + row_shape``) or of a boolean mask
    (M,); each gives a new in-memory array. ``np.asarray(rows)`` reads everything (for code
    that needs the whole array; the batch-wise paths never do). ``shape``, ``dtype``,
    ``ndim`` and ``len`` are those of the (M, *row_shape) array the file holds.
    """

    def __init__(
        self, handle: BinaryIO, offset: int, shape: tuple[int, ...], dtype: Any, *, source: str,
        error: type[Exception] = OSError,
    ):
        self._handle = handle
        self._error = error
        self.offset = int(offset)
        self.shape = tuple(int(extent) for extent in shape)
        self.dtype = np.dtype(dtype)
        self.source = source
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], offset: int, shape: tuple[int, ...], dtype: Any, *, source: str,
        error: type[Exception] = OSError,
    ) -> RowFile:
        """The rows of the file at ``path`` (opened for reading; closed with the object).

        ``error``: the exception type for a file that turns out shorter than it should be.
        """
        handle = open(path, "rb", buffering=0)  # raw reads straight into the arrays
        rows = cls(handle, offset, shape, dtype, source=source, error=error)
        weakref.finalize(rows, handle.close)
        return rows

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"RowFile({self.source!r}, shape={self.shape}, dtype={self.dtype})"

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` ... ``stop - 1`` as a new array ((stop - start), *row_shape)."""
        count = self.shape[0]
        if not 0 <= start <= stop <= count:
            raise IndexError(f"{self.source}: rows {start}:{stop} outside 0:{count}")
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        self._read_into(out, start)
        return out

    def _read_into(self, out: np.ndarray, start: int) -> None:
        view = memoryview(out.reshape(-1).view(np.uint8))
        self._handle.seek(self.offset + start * self.row_bytes)
        done = 0
        while done < len(view):
            got = self._handle.readinto(view[done:])
            if not got:
                raise self._error(f"{self.source}: the file ends {len(view) - done} bytes early (rows from {start}); was it truncated?")
            done += got

    def take(self, index: np.ndarray) -> np.ndarray:
        """The rows of an integer array ``index`` (any shape; repeats allowed): index.shape + row_shape.

        Runs of consecutive rows are read with one read each.
        """
        index = np.asarray(index)
        flat = index.reshape(-1).astype(np.int64)
        count = self.shape[0]
        flat = np.where(flat < 0, flat + count, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= count):
            raise IndexError(f"{self.source}: row index out of range 0:{count}")
        unique, inverse = np.unique(flat, return_inverse=True)
        rows = np.empty((len(unique), *self.shape[1:]), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for run in np.split(np.arange(len(unique)), breaks):
            if len(run):
                self._read_into(rows[run[0] : run[-1] + 1], int(unique[run[0]]))
        return rows[inverse.reshape(-1)].reshape(*index.shape, *self.shape[1:])

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            position = int(index) + (self.shape[0] if index < 0 else 0)
            if not 0 <= position < self.shape[0]:
                raise IndexError(f"{self.source}: row {int(index)} outside 0:{self.shape[0]}")
            return self.read(position, position + 1)[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            return self.read(start, max(start, stop)) if step == 1 else self.take(np.arange(start, stop, step))
        index = np.asarray(index)
        if index.dtype == np.bool_:
            if index.shape != (self.shape[0],):
                raise IndexError(f"{self.source}: boolean index of shape {index.shape} for {self.shape[0]} rows")
            return self.take(np.flatnonzero(index))
        if index.dtype.kind in "iu":
            return self.take(index)
        raise TypeError(f"{self.source}: rows are indexed by an integer, a slice, an integer array or a boolean mask, not {index.dtype}")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        everything = self.read(0, self.shape[0])
        return everything if dtype is None else everything.astype(dtype)



def array_chunks(array: np.ndarray | RowFile, max_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows) for consecutive chunks along axis 0 of an array or a ``RowFile``.

    A chunk holds as many rows as fit in ``max_bytes`` (default ``CHUNK_BYTES``; at least one
    row). An in-memory array gives views; a ``RowFile`` reads each chunk, so memory stays at
    one chunk however long the file.
    """
    max_bytes = CHUNK_BYTES if max_bytes is None else max_bytes
    count = int(array.shape[0])
    row_bytes = max(1, math.prod(array.shape[1:]) * np.dtype(array.dtype).itemsize)
    step = max(1, max_bytes // row_bytes)
    for start in range(0, count, step):
        yield start, array[start : min(start + step, count)]


class ScratchRows:
    """Rows appended to an anonymous temporary file and read back by range (a ``RowFile``).

    The file lives in ``folder`` (default: the system's temporary folder, ``TMPDIR``); it has
    no name on disk on systems that allow it and disappears when closed, so an interrupted run
    leaves nothing behind. Use as a context manager, or call ``close``.
    """

    def __init__(self, row_shape: tuple[int, ...], dtype: Any, *, folder: str | os.PathLike[str] | None = None):
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self._handle = tempfile.TemporaryFile(dir=folder, buffering=0)
        self.count = 0

    def append(self, rows: np.ndarray) -> None:
        """Write rows (k, *row_shape) of ``dtype`` after the ones already written."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"scratch rows: expected rows of shape {self.row_shape}, got {rows.shape[1:]}")
        self._handle.seek(0, os.SEEK_END)
        view = memoryview(rows.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            done += self._handle.write(view[done:])
        self.count += rows.shape[0]

    def rows(self) -> RowFile:
        """What has been written so far, for reading."""
        return RowFile(self._handle, 0, (self.count, *self.row_shape), self.dtype, source="scratch file")

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ScratchRows:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
