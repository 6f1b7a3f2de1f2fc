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

``load_dataset`` reads this contract only. What PtychoPINN-style files hold instead (the key
``diff3d``, the (N, N, M) order, intensities declared by ``metadata["diffraction_quantity"]``)
is converted once, by `prepare` (``ptycho.io.npz`` and ``ptycho.io.ingest``, which record the
conversions in ``metadata``); ``load_dataset`` refuses such a file with an error that says so.
The bounded NPZ reader is ``ptycho.npzfile``.

Every problem with a file or dataset raises :class:`ptycho.errors.DataError` with a message
``"<file>: key '<key>': <problem>"``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptycho.errors import DataError, InputWarning
from ptycho.files import write_npz
from ptycho.npzfile import cast, key_error as _error, parse_metadata, read_npz
from ptycho.rowfile import RowFile, array_chunks

MIN_PATTERN_SIZE = 16
"""Smallest pattern size N the network can use: its encoder pools N in log2(N) - 3 blocks down to
an 8 x 8 bottleneck (ptycho.model.Architecture.levels), so N = 16 is the smallest with one block."""

MIN_PATTERNS = 2
"""Fewest patterns a dataset may hold: training needs one to fit and one to validate, and a single
position is not a ptychographic scan."""

_REQUIRED_KEYS = ("xcoords", "ycoords", "probeGuess")
_KEYS = ("diffraction", "diff3d", *_REQUIRED_KEYS, "objectGuess", "scan_index", "metadata", "mask", "probe_modes")  # what load_dataset reads (diff3d: to refuse it)

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


_THROUGH_PREPARE = (
    "ptycho.data reads the canonical contract only; convert the file once with `prepare` (prepare.source: npz or "
    "auto: ptycho.io.npz reads PtychoPINN files, 'diff3d', the (N, N, M) order and intensities) and use the prepared file"
)


def _refuse_legacy(arrays: dict[str, Any], metadata: dict[str, Any], source: str) -> None:
    """A clear error for what PtychoPINN-style files hold instead of the canonical contract."""
    if "diff3d" in arrays:
        raise _error(source, "diff3d", f"a PtychoPINN key, not the canonical 'diffraction'; {_THROUGH_PREPARE}")
    quantity = metadata.get("diffraction_quantity", "amplitude")
    if quantity != "amplitude":
        raise _error(
            source, "metadata.diffraction_quantity",
            f"{ascii(quantity)[:80]}: a canonical file holds amplitudes ('amplitude'); for 'intensity' (counts), {_THROUGH_PREPARE}",
        )
    patterns, xcoords = arrays.get("diffraction"), arrays.get("xcoords")
    if patterns is not None and xcoords is not None and patterns.ndim == 3 and xcoords.ndim == 1:
        # (N, N, M): the first two axes equal, the last one not, and it counts the positions; a
        # cube (N, N, N) is read as canonical.
        n0, n1, n2 = patterns.shape
        if n0 == n1 and n2 != n0 and n2 == xcoords.shape[0]:
            raise _error(source, "diffraction", f"shape {patterns.shape} is PtychoPINN's (N, N, M) order, not (M, N, N); {_THROUGH_PREPARE}")


def load_dataset(path: str | os.PathLike[str], *, by_rows: bool = False) -> PtychoDataset:
    """Read and validate the canonical NPZ at `path` (never unpickling anything).

    The canonical contract only (module docstring): amplitudes under ``diffraction`` in
    (M, N, N) order. PtychoPINN-style files (``diff3d``, the (N, N, M) order, intensities) are
    converted once, by `prepare` (``ptycho.io.npz`` and ``ptycho.io.ingest``); here they are
    refused with an error that says so.

    `by_rows`: leave the patterns in the file and read them batch by batch (the dataset's
    ``amplitudes`` is then a ``ptycho.rowfile.RowFile``), so that memory does not grow with the
    number of patterns. This needs ``diffraction`` stored uncompressed as float32 (M, N, N),
    which is how ``save_dataset`` (the ``prepare`` stage) writes it; any other file is read
    into memory, with an ``InputWarning`` that says why.
    """
    path = Path(path)
    source = str(path)
    arrays = read_npz(path, _KEYS, by_rows=("diffraction",) if by_rows else ())
    metadata = parse_metadata(arrays, source)
    _refuse_legacy(arrays, metadata, source)
    for key in ("diffraction", *_REQUIRED_KEYS):
        if key not in arrays:
            raise _error(source, key, "missing")
    patterns = arrays["diffraction"]
    reason = _not_by_rows(patterns) if by_rows else ""
    if reason:
        warnings.warn(f"{source}: key 'diffraction': {reason}; the patterns are read into memory", InputWarning, stacklevel=2)
    if not by_rows or reason:
        patterns = cast(np.asarray(patterns) if isinstance(patterns, RowFile) else patterns, source, "diffraction", np.float32)
    n_patterns = patterns.shape[0] if patterns.ndim > 0 else 0
    dataset = PtychoDataset(
        amplitudes=patterns,
        xcoords=cast(arrays["xcoords"], source, "xcoords", np.float64),
        ycoords=cast(arrays["ycoords"], source, "ycoords", np.float64),
        probe=cast(arrays["probeGuess"], source, "probeGuess", np.complex64),
        object=cast(arrays["objectGuess"], source, "objectGuess", np.complex64) if "objectGuess" in arrays else None,
        scan_index=cast(arrays["scan_index"], source, "scan_index", np.int64) if "scan_index" in arrays else np.arange(n_patterns, dtype=np.int64),
        metadata=metadata,
        mask=_mask(arrays, source),
        probe_modes=cast(arrays["probe_modes"], source, "probe_modes", np.complex64) if "probe_modes" in arrays else None,
    )
    validate(dataset, source)
    return dataset


def _not_by_rows(patterns: np.ndarray | RowFile) -> str:
    """Why these patterns cannot be read by rows ("" when they can)."""
    if not isinstance(patterns, RowFile):
        return "not stored uncompressed in C order (prepare writes it so; re-run prepare, or save_dataset the data)"
    if patterns.dtype != np.float32 or patterns.ndim != 3:
        return f"{patterns.dtype} {patterns.shape} instead of float32 (M, N, N)"
    if patterns.shape[1] != patterns.shape[2]:
        return f"shape {patterns.shape} is not (M, N, N)"
    return ""


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
