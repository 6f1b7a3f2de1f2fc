"""What a reader found in a file, before the one conversion to the canonical dataset.

Readers (one module per file family) only translate a layout: they return a :class:`RawScan`
with the patterns as stored, the file's own statements about them (intensity or amplitude,
centred or not), positions already in the canonical frame (probe-window centres in object
pixels, DESIGN.md §2), the probe modes, the mask and the units. ``ptycho.io.ingest`` then
converts and checks, once, for every format alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Finding:
    """A reader's suspicion about its file: `problem` with `key`, and the `fix` to tell the user."""

    key: str
    problem: str
    fix: str


@dataclass(frozen=True, eq=False)
class RawScan:
    """One scan as a reader found it.

    source: the file (or files) read, for messages.
    pattern_key: the patterns' name in the file, for messages.
    patterns: (M, N, N) real array as stored (any real dtype; counts or amplitudes).
    quantity: "intensity" or "amplitude" when the file or its format states it, else None.
    quantity_origin: who said so (recorded in metadata), e.g. "CXI: detector data are counts".
    centred: True when the format puts the zero frequency at [N/2, N/2], False when at [0, 0]
        (not fftshifted), None when the format does not say.
    xcoords, ycoords: (M,) float64 probe-window centres in object pixels (DESIGN.md §2).
    probe: (K, N, N) complex incoherent modes, or None (then estimated at ingestion).
    object: (H, W) complex reference object in the frame of the positions, or None.
    mask: (N, N) bool, True = valid pixel, or None.
    scan_index: (M,) int64 or None.
    metadata: units (ptycho.io.units keys), provenance, conventions applied.
    findings: suspicions to report through the input checks.
    """

    source: str
    pattern_key: str
    patterns: np.ndarray
    quantity: str | None
    quantity_origin: str
    centred: bool | None
    xcoords: np.ndarray
    ycoords: np.ndarray
    probe: np.ndarray | None
    object: np.ndarray | None = None
    mask: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
