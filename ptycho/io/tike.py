"""Reader of tike scans: an NPZ with ``data``, ``scan`` and ``probe`` (tike's test-data layout).

tike's conventions (``tike.ptycho`` docstrings): ``data`` (..., M, N, N) are detector counts
|fft2(probe * patch)|^2 with the zero frequency at [0, 0] (not fftshifted); ``scan``
(..., M, 2) is the **minimum corner** of the N x N probe grid in the object array, vertical
coordinate first (array axis -2), horizontal second; ``probe`` (..., SHARED, N, N) holds
incoherent modes. Leading singleton axes are dropped.

To the canonical frame (DESIGN.md §2): probe pixel [r, c] lies on object pixel
[scan_0 + r, scan_1 + c] in tike and on [y - N/2 + r, x - N/2 + c] here, so
x = scan[:, 1] + N/2 and y = scan[:, 0] + N/2, then shifted so that the smallest window corner
is at 0 (recorded as ``position_offset_px``). No units: a tike scan is in pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptycho.config import PrepareConfig
from ptycho.npzfile import cast, read_npz
from ptycho.errors import DataError
from ptycho.io.npz import probe_modes
from ptycho.io.raw import RawScan


def _squeeze_leading(value: np.ndarray, ndim: int, source: str, key: str, layout: str) -> np.ndarray:
    while value.ndim > ndim and value.shape[0] == 1:
        value = value[0]
    if value.ndim != ndim:
        raise DataError(f"{source}: key '{key}': expected {layout} (after dropping leading axes of length 1), found shape {value.shape}")
    return value


def read(path: Path, config: PrepareConfig) -> RawScan:
    """Read a tike scan (module docstring) without converting the patterns."""
    del config
    source = str(path)
    arrays = read_npz(path)
    for key in ("data", "scan"):
        if key not in arrays:
            raise DataError(f"{source}: key '{key}': missing (a tike scan holds 'data', 'scan' and 'probe')")
    data = _squeeze_leading(arrays["data"], 3, source, "data", "(M, N, N)")
    scan = cast(_squeeze_leading(arrays["scan"], 2, source, "scan", "(M, 2)"), source, "scan", np.float64)
    if scan.shape != (data.shape[0], 2):
        raise DataError(f"{source}: key 'scan': expected ({data.shape[0]}, 2) for {data.shape[0]} patterns, found {scan.shape}")
    size = data.shape[-1]
    x = scan[:, 1] + size / 2
    y = scan[:, 0] + size / 2
    offset = (float(np.min(scan[:, 1])), float(np.min(scan[:, 0])))
    probe = probe_modes(arrays["probe"], source, "probe") if "probe" in arrays else None
    return RawScan(
        source=source,
        pattern_key="data",
        patterns=data,
        quantity="intensity",
        quantity_origin="tike: 'data' are detector counts",
        centred=False,
        xcoords=x - offset[0],
        ycoords=y - offset[1],
        probe=probe,
        metadata={
            "source_format": "tike",
            "positions": "x = scan[:, 1] + N/2, y = scan[:, 0] + N/2 (tike: minimum corner, vertical first)",
            "position_offset_px": [offset[0], offset[1]],
        },
    )
