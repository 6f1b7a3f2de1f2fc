"""The dataset contract: one typed object for ptychographic data and the canonical NPZ file.

Canonical NPZ (DESIGN.md section 5), read without pickle by a bounded reader (``read_npz``: the
file is untrusted, every header is checked before anything is allocated):

=============  =========  =========  ===================================================
key            shape      dtype      meaning
=============  =========  =========  ===================================================
diffraction    (M, N, N)  float32    amplitude = sqrt(counts), zero frequency centred
xcoords        (M,)       float64    column of the probe-window centre, object pixels
ycoords        (M,)       float64    row of the probe-window centre, object pixels
probeGuess     (N, N)     complex64  probe
objectGuess    (H, W)     complex64  ground-truth / reference object (optional)
scan_index     (M,)       int64      scan order (optional; default arange(M))
metadata       ()         str        JSON object (optional; default {})
mask           (N, N)     bool       detector pixels to trust: True = valid (optional;
                                     default all valid). Masked pixels hold amplitude 0
                                     and are left out of the baseline's amplitude
                                     constraint, the training losses and the R-factor.
probe_modes    (K, N, N)  complex64  incoherent probe modes, K >= 2 (optional); mode 0
                                     equals ``probeGuess``; intensities add over modes
=============  =========  =========  ===================================================

Units (ptycho.io writes them when a file states them): ``metadata`` keys
``wavelength_m``, ``detector_distance_m``, ``detector_pixel_size_m`` ([x, y]) and
``object_pixel_size_m`` ([x, y], = wavelength * distance / (N * detector pixel)).

Conventions (DESIGN.md section 2): the object is indexed ``[row, col]``; the probe window of
pattern i covers columns ``x_i - N/2 ... x_i + N/2 - 1`` and rows ``y_i - N/2 ... y_i + N/2 - 1``.

Readers also accept what PtychoPINN-style files hold: the key ``diff3d`` for ``diffraction``,
the legacy (N, N, M) order, and intensities declared by ``metadata["diffraction_quantity"] ==
"intensity"``. These are converted once, here, and the conversion is recorded in ``metadata``.

Every problem with a file or dataset raises :class:`ptycho.errors.DataError` with a message
``"<file>: key '<key>': <problem>"``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import tokenize
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ptycho.archive import ZIP_ERRORS, checked_infos, open_zip, parse_json, read_into
from ptycho.errors import DataError, InputWarning
from ptycho.files import write_npz
from ptycho.rowfile import RowFile, array_chunks

MIN_PATTERN_SIZE = 16
"""Smallest pattern size N the network can use: its encoder pools N in log2(N) - 3 blocks down to
an 8 x 8 bottleneck (ptycho.model.Architecture.levels), so N = 16 is the smallest with one block."""

MIN_PATTERNS = 2
"""Fewest patterns a dataset may hold: training needs one to fit and one to validate, and a single
position is not a ptychographic scan."""

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

DIFFRACTION_QUANTITIES = ("amplitude", "intensity")
"""Allowed values of ``metadata["diffraction_quantity"]`` in a file."""

_REQUIRED_KEYS = ("xcoords", "ycoords", "probeGuess")
_KEYS = ("diffraction", "diff3d", *_REQUIRED_KEYS, "objectGuess", "scan_index", "metadata", "mask", "probe_modes")  # what load_dataset reads

# Which source dtype kinds may be cast to a target kind without losing meaning
# (b: bool, i: int, u: unsigned, f: float, c: complex). Bool or string data is never numbers.
_CASTABLE_KINDS = {"f": "iuf", "c": "iufc", "i": "iu"}


@dataclass(frozen=True, eq=False)  # eq=False: `==` on arrays has no single truth value
class PtychoDataset:
    """Diffraction patterns, scan positions, probe and (optionally) object of one scan.

    Fields are stored as given (no conversion); call :func:`validate` to check them.

    amplitudes: (M, N, N) float32, diffraction amplitude sqrt(counts), zero frequency centred:
                an array, or a ``ptycho.rowfile.RowFile`` that reads the patterns from their file
                batch by batch (``load_dataset(..., by_rows=True)``); indexing either gives an array.
    xcoords:    (M,) float64, column of the probe-window centre, object pixels.
    ycoords:    (M,) float64, row of the probe-window centre, object pixels.
    probe:      (N, N) complex64.
    object:     (H, W) complex64 ground truth or reference, or None.
    scan_index: (M,) int64, scan order of each pattern.
    metadata:   JSON-serialisable dict (nphotons, units, provenance, conversions done).
    mask:       (N, N) bool, True = valid detector pixel, or None (all valid).
    probe_modes: (K, N, N) complex64 incoherent probe modes (K >= 2, mode 0 == probe), or
                None (one coherent probe). Consumers that use only ``probe`` miss the power
                of modes 1..K-1.
    """

    amplitudes: np.ndarray | RowFile
    xcoords: np.ndarray
    ycoords: np.ndarray
    probe: np.ndarray
    object: np.ndarray | None
    scan_index: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    probe_modes: np.ndarray | None = None

    @property
    def all_probe_modes(self) -> np.ndarray:
        """(K, N, N) complex64: every probe mode (K = 1 for a single coherent probe)."""
        return self.probe[None] if self.probe_modes is None else self.probe_modes

    @property
    def n_patterns(self) -> int:
        """M, the number of diffraction patterns."""
        return int(self.amplitudes.shape[0])

    @property
    def pattern_size(self) -> int:
        """N, the side of a (square) diffraction pattern in pixels."""
        return int(self.amplitudes.shape[-1])

    def subset(self, indices: Any) -> PtychoDataset:
        """The patterns selected by `indices`: (K,) integer positions or an (M,) boolean mask.

        Probe, object and metadata are kept (metadata is copied so the two datasets do not
        share a mutable dict).
        """
        index = np.asarray(indices)
        if index.ndim != 1:
            raise DataError(f"subset: key 'indices': expected a 1-D index array, found shape {index.shape}")
        if index.size == 0:
            index = index.astype(np.int64)  # np.asarray([]) is float, which cannot index
        return replace(
            self,
            amplitudes=self.amplitudes[index],
            xcoords=self.xcoords[index],
            ycoords=self.ycoords[index],
            scan_index=self.scan_index[index],
            metadata=copy.deepcopy(self.metadata),
        )


def pixel_size_of(data: PtychoDataset) -> tuple[float, float] | None:
    """The object pixel (x, y) in metres from ``metadata["object_pixel_size_m"]``, or None."""
    pixel = data.metadata.get("object_pixel_size_m")
    if isinstance(pixel, list) and len(pixel) == 2 and all(isinstance(p, (int, float)) and p > 0 for p in pixel):
        return float(pixel[0]), float(pixel[1])
    return None


def _error(source: str, key: str, problem: str) -> DataError:
    return DataError(f"{source}: key '{key}': {problem}")


def _check_array(value: Any, source: str, key: str, layout: tuple[str, ...], dtype: Any) -> None:
    """Raise unless `value` is an ndarray with len(layout) axes and exactly `dtype`."""
    expected = "(" + ", ".join(layout) + (",)" if len(layout) == 1 else ")")
    if not isinstance(value, np.ndarray):
        raise _error(source, key, f"expected a numpy array of shape {expected}, found {type(value).__name__}")
    if value.ndim != len(layout):
        raise _error(
            source, key, f"expected a {len(layout)}-D array of shape {expected}, found shape {value.shape}"
        )
    if value.dtype != np.dtype(dtype):
        raise _error(source, key, f"expected dtype {np.dtype(dtype).name}, found {value.dtype}")


def _check_finite(value: np.ndarray, source: str, key: str, what: str) -> None:
    bad = ~np.isfinite(value)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise _error(
            source, key, f"{int(bad.sum())} non-finite {what} value(s) (NaN or inf), first at index {first}"
        )


def _check_non_negative(value: np.ndarray, source: str, key: str, what: str) -> None:
    bad = value < 0
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise _error(
            source,
            key,
            f"{int(bad.sum())} negative {what} value(s), first at index {first} ({float(value[first]):g})",
        )


def validate(dataset: PtychoDataset, source: str, *, diffraction_key: str = "diffraction") -> None:
    """Check that `dataset` is consistent; raise DataError naming `source`, the key and the problem.

    Checks shapes and exact dtypes of every field, finite and non-negative amplitudes, even
    square patterns of at least ``MIN_PATTERN_SIZE``, at least ``MIN_PATTERNS`` patterns, not
    all of them zero, one position per pattern, a finite probe of shape (N, N) that is not zero
    everywhere, distinct non-negative scan indices, JSON-serialisable metadata that does not
    claim to hold intensities, and (when an object is present) that every probe window lies
    inside it. `diffraction_key` is the name used for the patterns in messages
    (the file may have called them ``diff3d``).
    """
    amplitudes = dataset.amplitudes
    if isinstance(amplitudes, RowFile):  # patterns read from their file: the same checks, chunk by chunk
        if amplitudes.ndim != 3:
            raise _error(source, diffraction_key, f"expected a 3-D array of shape (M, N, N), found shape {amplitudes.shape}")
        if amplitudes.dtype != np.float32:
            raise _error(source, diffraction_key, f"expected dtype float32, found {amplitudes.dtype}")
    else:
        _check_array(amplitudes, source, diffraction_key, ("M", "N", "N"), np.float32)
    m, rows, cols = amplitudes.shape
    if rows != cols:
        raise _error(source, diffraction_key, f"patterns must be square (N, N), found {rows}x{cols}")
    n = rows
    if n == 0 or n % 2:
        raise _error(source, diffraction_key, f"pattern size must be even and positive, found N={n}")
    if n < MIN_PATTERN_SIZE:
        raise _error(
            source, diffraction_key, f"pattern size N={n} is below the minimum of {MIN_PATTERN_SIZE} the network can use"
        )
    if m == 0:
        raise _error(source, diffraction_key, "holds no patterns (M=0)")
    if m < MIN_PATTERNS:
        raise _error(
            source, diffraction_key, f"holds {m} pattern(s); a scan needs at least {MIN_PATTERNS} "
            "(training fits some and validates on others)"
        )
    _check_pattern_values(amplitudes, source, diffraction_key)

    for key, coords in (("xcoords", dataset.xcoords), ("ycoords", dataset.ycoords)):
        _check_array(coords, source, key, ("M",), np.float64)
        if coords.shape[0] != m:
            raise _error(
                source, key, f"has {coords.shape[0]} positions but '{diffraction_key}' has {m} patterns"
            )
        _check_finite(coords, source, key, "coordinate")

    _check_array(dataset.probe, source, "probeGuess", ("N", "N"), np.complex64)
    if dataset.probe.shape != (n, n):
        raise _error(
            source,
            "probeGuess",
            f"probe shape {dataset.probe.shape} does not match the patterns: expected {(n, n)}",
        )
    _check_finite(dataset.probe, source, "probeGuess", "probe")
    if not dataset.probe.any():
        raise _error(source, "probeGuess", "the probe is zero everywhere")

    if dataset.object is not None:
        _check_array(dataset.object, source, "objectGuess", ("H", "W"), np.complex64)
        _check_finite(dataset.object, source, "objectGuess", "object")

    _check_array(dataset.scan_index, source, "scan_index", ("M",), np.int64)
    if dataset.scan_index.shape[0] != m:
        raise _error(
            source,
            "scan_index",
            f"has {dataset.scan_index.shape[0]} entries but '{diffraction_key}' has {m} patterns",
        )
    if (dataset.scan_index < 0).any():
        first = int(np.argmax(dataset.scan_index < 0))
        raise _error(source, "scan_index", f"negative scan index {int(dataset.scan_index[first])} at position {first}")
    unique, counts = np.unique(dataset.scan_index, return_counts=True)
    if (counts > 1).any():
        repeated = unique[counts > 1]
        raise _error(
            source, "scan_index", f"{repeated.size} scan index value(s) occur more than once, e.g. {int(repeated[0])}"
        )

    _check_metadata(dataset.metadata, source)

    if dataset.mask is not None:
        _check_array(dataset.mask, source, "mask", ("N", "N"), np.bool_)
        if dataset.mask.shape != (n, n):
            raise _error(source, "mask", f"shape {dataset.mask.shape} does not match the patterns: expected {(n, n)}")
        if not dataset.mask.any():
            raise _error(source, "mask", "marks every detector pixel invalid")

    if dataset.probe_modes is not None:
        _check_array(dataset.probe_modes, source, "probe_modes", ("K", "N", "N"), np.complex64)
        if dataset.probe_modes.shape[1:] != (n, n) or dataset.probe_modes.shape[0] < 2:
            raise _error(
                source, "probe_modes", f"expected (K, {n}, {n}) with K >= 2, found shape {dataset.probe_modes.shape}"
            )
        _check_finite(dataset.probe_modes, source, "probe_modes", "probe")
        if not np.array_equal(dataset.probe_modes[0], dataset.probe):
            raise _error(source, "probe_modes", "mode 0 differs from 'probeGuess'; they must be the same array")

    if dataset.object is not None:
        _check_positions_inside(dataset, source)


def _check_pattern_values(amplitudes: np.ndarray | RowFile, source: str, key: str) -> None:
    """Finite, non-negative amplitudes, not all zero: ``_check_finite`` and ``_check_non_negative``
    with the same messages, in one pass of chunks (a pattern file is read once, never whole)."""
    counts = {"non-finite": 0, "negative": 0}
    first: dict[str, tuple[tuple[int, ...], float]] = {}
    nonzero = False
    for start, chunk in array_chunks(amplitudes):
        for kind, bad in (("non-finite", ~np.isfinite(chunk)), ("negative", chunk < 0)):
            found = int(bad.sum())
            if found and kind not in first:
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                first[kind] = ((index[0] + start, *index[1:]), float(chunk[index]))
            counts[kind] += found
        nonzero = nonzero or bool(chunk.any())
    if counts["non-finite"]:
        raise _error(
            source, key, f"{counts['non-finite']} non-finite amplitude value(s) (NaN or inf), first at index {first['non-finite'][0]}"
        )
    if counts["negative"]:
        index, value = first["negative"]
        raise _error(source, key, f"{counts['negative']} negative amplitude value(s), first at index {index} ({value:g})")
    if not nonzero:
        raise _error(source, key, f"all {amplitudes.shape[0]} patterns are zero everywhere; there is nothing to reconstruct from")


def _check_metadata(metadata: Any, source: str) -> None:
    if not isinstance(metadata, dict):
        raise _error(source, "metadata", f"expected a dict, found {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)  # strict JSON, so any reader can parse the file
    except (TypeError, ValueError) as exc:
        raise _error(source, "metadata", f"is not JSON-serialisable: {exc}") from exc
    # A dataset always holds amplitudes; a stale "intensity" here would make the next load
    # take the square root a second time.
    quantity = metadata.get("diffraction_quantity", "amplitude")
    if quantity != "amplitude":
        raise _error(
            source, "metadata.diffraction_quantity", f"a dataset holds amplitudes, found {quantity!r}"
        )


def _check_positions_inside(dataset: PtychoDataset, source: str) -> None:
    """Every probe window [x - N/2, x + N/2 - 1] x [y - N/2, y + N/2 - 1] inside the object."""
    height, width = dataset.object.shape
    half = dataset.pattern_size // 2
    x, y = dataset.xcoords, dataset.ycoords
    x_out = (x - half < 0) | (x + half - 1 > width - 1)
    y_out = (y - half < 0) | (y + half - 1 > height - 1)
    outside = x_out | y_out
    if outside.any():
        i = int(np.argmax(outside))
        key = "xcoords" if x_out[i] else "ycoords"
        raise _error(
            source,
            key,
            f"{int(outside.sum())} of {outside.size} positions put the probe window outside the object "
            f"(objectGuess shape {(height, width)} = (H, W), N={dataset.pattern_size}: need "
            f"{half} <= x <= {width - half} and {half} <= y <= {height - half}); "
            f"first at index {i}: x={x[i]:g}, y={y[i]:g}",
        )


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
                raise _error(source, info.filename, "is not a .npy array member of the NPZ")
        wanted = None if keys is None else set(keys)
        used = [info for info in infos if wanted is None or info.filename[: -len(".npy")] in wanted]
        in_place = [info for info in used if info.filename[: -len(".npy")] in by_rows and info.compress_type == zipfile.ZIP_STORED]
        for info in used:
            if info.file_size > MAX_INFLATION_FREE_BYTES and info.file_size > MAX_INFLATION * max(info.compress_size, 1):
                raise _error(
                    source, info.filename[: -len(".npy")],
                    f"inflates from {info.compress_size} to {info.file_size} bytes, more than {MAX_INFLATION}-fold: a "
                    "zip bomb, or an array that is almost all one value (store it uncompressed, np.savez, if it is real)",
                )
        total = sum(info.file_size for info in used if info not in in_place)
        if total > MAX_NPZ_BYTES:
            raise DataError(
                f"{source}: not a valid NPZ file: its arrays declare {total} bytes, more than the "
                f"{MAX_NPZ_BYTES} allowed (ptycho.data.MAX_NPZ_BYTES)"
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
        raise _error(source, key, f"npy format version {version[0]}.{version[1]} is not read (1.0 and 2.0 are)")
    if dtype.hasobject:
        # An object array would be unpickled; refused before anything is read.
        raise _error(
            source, key, "holds pickled Python objects (an object array); pickled data is refused "
            "because unpickling can execute code"
        )
    if dtype.kind not in _NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise _error(source, key, f"dtype {dtype} is not read; numbers and strings only")
    if any(extent < 0 for extent in shape):
        raise _error(source, key, f"header declares a negative extent in shape {shape}")
    return shape, fortran_order, dtype


def _read_sized_header(handle, info: zipfile.ZipInfo, source: str, key: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``_read_header``, the check that the header accounts exactly for the member's size, and the header's length."""
    shape, fortran_order, dtype = _read_header(handle, source, key)
    header_bytes = handle.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if header_bytes + nbytes != info.file_size:
        raise _error(
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
            raise _error(source, key, "the zip's local header of this member is missing or corrupt")
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
        raise _error(
            source,
            "metadata",
            f"expected a 0-d string array holding JSON, found dtype {value.dtype} shape {value.shape}",
        )
    text = value.item()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(source, "metadata", f"invalid JSON: not UTF-8 text ({exc})") from exc
    parsed = parse_json(text, f"{source}: key 'metadata': invalid JSON", DataError, max_bytes=MAX_METADATA_BYTES)
    if not isinstance(parsed, dict):
        raise _error(source, "metadata", f"JSON must be an object, found {type(parsed).__name__}")
    return parsed


def cast(value: np.ndarray, source: str, key: str, dtype: Any) -> np.ndarray:
    """`value` as a C-contiguous array of `dtype`, refusing casts that change meaning."""
    target = np.dtype(dtype)
    if value.dtype.kind not in _CASTABLE_KINDS[target.kind]:
        if value.dtype.kind == "c":
            problem = f"complex-typed values ({value.dtype}); expected real numbers"
        else:
            problem = f"dtype {value.dtype} cannot be read as {target.name}"
        raise _error(source, key, problem)
    # asarray, not ascontiguousarray: the latter turns a 0-d array into 1-D and would hide it.
    return np.asarray(value, dtype=target, order="C")


def _diffraction_key(arrays: dict[str, np.ndarray], source: str) -> str:
    present = [key for key in ("diffraction", "diff3d") if key in arrays]
    if not present:
        raise _error(source, "diffraction", "missing (also looked for the legacy key 'diff3d')")
    if len(present) == 2:
        raise _error(source, "diffraction", "ambiguous: the file holds both 'diffraction' and 'diff3d'")
    return present[0]


def _resolve_quantity(metadata: dict[str, Any], override: str | None, source: str) -> str:
    if override is not None:
        quantity, origin = override, "the diffraction_quantity argument"
    else:
        quantity, origin = metadata.get("diffraction_quantity", "amplitude"), "the file"
    if quantity not in DIFFRACTION_QUANTITIES:
        raise _error(
            source,
            "metadata.diffraction_quantity",
            f"expected one of {', '.join(repr(q) for q in DIFFRACTION_QUANTITIES)}, "
            f"found {quantity!r} (from {origin})",
        )
    return quantity


def load_dataset(path: str | os.PathLike[str], diffraction_quantity: str | None = None, *, by_rows: bool = False) -> PtychoDataset:
    """Read and validate the canonical NPZ at `path` (never unpickling anything).

    `diffraction_quantity` ("amplitude" or "intensity") overrides what the file declares in
    ``metadata["diffraction_quantity"]`` (default "amplitude"). Intensities are checked
    (finite, non-negative) and converted once to amplitudes by sqrt; legacy (N, N, M) patterns
    are transposed to (M, N, N). Both conversions are recorded in ``metadata``.

    `by_rows`: leave the patterns in the file and read them batch by batch (the dataset's
    ``amplitudes`` is then a ``ptycho.rowfile.RowFile``), so that memory does not grow with the
    number of patterns. This needs ``diffraction`` stored uncompressed as float32 (M, N, N)
    amplitudes, which is how ``save_dataset`` (the ``prepare`` stage) writes it; any other file
    is read into memory, with an ``InputWarning`` that says why.
    """
    path = Path(path)
    source = str(path)
    arrays = read_npz(path, _KEYS, by_rows=("diffraction",) if by_rows else ())
    metadata = parse_metadata(arrays, source)
    diff_key = _diffraction_key(arrays, source)
    patterns = arrays[diff_key]
    if by_rows:
        reason = _not_by_rows(patterns, path, arrays, metadata, diffraction_quantity)
        if reason:
            warnings.warn(f"{source}: key '{diff_key}': {reason}; the patterns are read into memory", InputWarning, stacklevel=2)
            if isinstance(patterns, RowFile):
                arrays[diff_key] = np.asarray(patterns)
        else:
            return _dataset_by_rows(patterns, arrays, metadata, source)
    for key in _REQUIRED_KEYS:
        if key not in arrays:
            raise _error(source, key, "missing")

    xcoords = cast(arrays["xcoords"], source, "xcoords", np.float64)
    ycoords = cast(arrays["ycoords"], source, "ycoords", np.float64)
    raw = cast(arrays[diff_key], source, diff_key, np.float32)

    # Legacy (N, N, M): only when the first two axes are equal and the last one differs from
    # them and equals the number of positions; a cube (N, N, N) is read as canonical.
    if raw.ndim == 3 and xcoords.ndim == 1:
        n0, n1, n2 = raw.shape
        if n0 == n1 and n2 != n0 and n2 == xcoords.shape[0]:
            raw = np.ascontiguousarray(np.transpose(raw, (2, 0, 1)))
            metadata["converted_from_order"] = "NNM"

    quantity = _resolve_quantity(metadata, diffraction_quantity, source)
    if quantity == "intensity":
        # Checked here because sqrt would turn a negative count into NaN without a word.
        _check_finite(raw, source, diff_key, "intensity")
        _check_non_negative(raw, source, diff_key, "intensity")
        amplitudes = np.sqrt(raw)
        metadata["converted_from"] = "intensity"
    else:
        amplitudes = raw
    if quantity == "intensity" or "diffraction_quantity" in metadata:
        metadata["diffraction_quantity"] = "amplitude"  # what the dataset now holds

    n_patterns = amplitudes.shape[0] if amplitudes.ndim > 0 else 0
    if "scan_index" in arrays:
        scan_index = cast(arrays["scan_index"], source, "scan_index", np.int64)
    else:
        scan_index = np.arange(n_patterns, dtype=np.int64)
    obj = None
    if "objectGuess" in arrays:
        obj = cast(arrays["objectGuess"], source, "objectGuess", np.complex64)
    mask = _mask(arrays, source)
    probe_modes = None
    if "probe_modes" in arrays:
        probe_modes = cast(arrays["probe_modes"], source, "probe_modes", np.complex64)

    dataset = PtychoDataset(
        amplitudes=amplitudes,
        xcoords=xcoords,
        ycoords=ycoords,
        probe=cast(arrays["probeGuess"], source, "probeGuess", np.complex64),
        object=obj,
        scan_index=scan_index,
        metadata=metadata,
        mask=mask,
        probe_modes=probe_modes,
    )
    validate(dataset, source, diffraction_key=diff_key)
    return dataset


def _not_by_rows(
    patterns: np.ndarray | RowFile, path: Path, arrays: dict[str, Any], metadata: dict[str, Any], quantity: str | None
) -> str:
    """Why the patterns of this file cannot be read by rows ("" when they can)."""
    if not isinstance(patterns, RowFile):
        return "not stored uncompressed in C order (prepare writes it so; re-run prepare, or save_dataset the data)"
    if "diff3d" in arrays:
        return "the file also holds 'diff3d'"
    if patterns.dtype != np.float32 or patterns.ndim != 3:
        return f"{patterns.dtype} {patterns.shape} instead of float32 (M, N, N)"
    if _resolve_quantity(metadata, quantity, str(path)) != "amplitude":
        return "holds intensities, which are converted to amplitudes in memory"
    if patterns.shape[1] != patterns.shape[2]:  # legacy (N, N, M) order, or not patterns at all
        return f"shape {patterns.shape} is not (M, N, N)"
    return ""


def _dataset_by_rows(patterns: RowFile, arrays: dict[str, Any], metadata: dict[str, Any], source: str) -> PtychoDataset:
    """The dataset of a canonical file whose float32 amplitudes stay in the file (``load_dataset``)."""
    for key in _REQUIRED_KEYS:
        if key not in arrays:
            raise _error(source, key, "missing")
    if "diffraction_quantity" in metadata:
        metadata["diffraction_quantity"] = "amplitude"
    dataset = PtychoDataset(
        amplitudes=patterns,
        xcoords=cast(arrays["xcoords"], source, "xcoords", np.float64),
        ycoords=cast(arrays["ycoords"], source, "ycoords", np.float64),
        probe=cast(arrays["probeGuess"], source, "probeGuess", np.complex64),
        object=cast(arrays["objectGuess"], source, "objectGuess", np.complex64) if "objectGuess" in arrays else None,
        scan_index=cast(arrays["scan_index"], source, "scan_index", np.int64) if "scan_index" in arrays else np.arange(patterns.shape[0], dtype=np.int64),
        metadata=metadata,
        mask=_mask(arrays, source),
        probe_modes=cast(arrays["probe_modes"], source, "probe_modes", np.complex64) if "probe_modes" in arrays else None,
    )
    validate(dataset, source)
    return dataset


def _mask(arrays: dict[str, Any], source: str) -> np.ndarray | None:
    if "mask" not in arrays:
        return None
    mask = arrays["mask"]
    if mask.dtype != np.bool_:
        raise _error(source, "mask", f"expected dtype bool (True = valid pixel), found {mask.dtype}")
    return mask


def save_dataset(dataset: PtychoDataset, path: str | os.PathLike[str]) -> None:
    """Validate `dataset`, then write it atomically as the canonical NPZ at exactly `path`.

    ``diffraction`` is stored uncompressed, so that the stages that follow can read it batch by
    batch from the file (``load_dataset(..., by_rows=True)``); the other keys are deflated. The
    zip has fixed time stamps (identical data give identical bytes) and is written atomically
    (``ptycho.files``) chunk by chunk, so a crash never leaves a partial file at `path` and
    patterns that are themselves read by rows are never held whole. Parent folders are created.
    Nothing is written when validation fails.
    """
    path = Path(path)
    validate(dataset, str(path))
    arrays = {
        "diffraction": dataset.amplitudes,
        "xcoords": dataset.xcoords,
        "ycoords": dataset.ycoords,
        "probeGuess": dataset.probe,
    }
    if dataset.object is not None:
        arrays["objectGuess"] = dataset.object
    arrays["scan_index"] = dataset.scan_index
    # A 0-d unicode array: stored as plain .npy, no pickle. Sorted keys make the bytes stable.
    arrays["metadata"] = np.array(json.dumps(dataset.metadata, sort_keys=True, allow_nan=False))
    if dataset.mask is not None:
        arrays["mask"] = dataset.mask
    if dataset.probe_modes is not None:
        arrays["probe_modes"] = dataset.probe_modes

    write_npz(path, arrays, stored=("diffraction",))
