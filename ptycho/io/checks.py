"""Input checks that catch the silent mistakes of ingesting a foreign file.

Each check measures one property and returns numbers; :class:`Checker` turns a failed check
into a ``DataError`` (``prepare.input_checks: error``, the default) or an ``InputWarning``
(``warn``), always with the fix in the message, and records every message in the dataset's
``metadata["input_checks"]``. The thresholds are stated next to each check.
"""

from __future__ import annotations

import warnings

import numpy as np

from ptycho.config import InputChecks
from ptycho.errors import DataError, InputWarning

COUNT_LIKE_MIN_MAX = 4.0
"""Integral-valued data whose maximum is at least this are taken for photon counts."""

INTEGRAL_SHARE = 0.99
"""Share of (valid, non-zero) values that must be whole numbers for data to look like counts."""

LARGE_AMPLITUDE = 1.0e3
"""An undeclared amplitude above this would be 1e6 photons in one pixel: more likely counts."""

PROBE_RATIO_RANGE = (1.0e-2, 1.0e1)
"""Mean counts per pattern over sum |P|^2 outside this range: the probe is not on the counts' scale."""


class Checker:
    """Reports failed checks for one input file according to ``prepare.input_checks``."""

    def __init__(self, mode: InputChecks, source: str):
        self.mode = mode
        self.source = source
        self.messages: list[str] = []

    def _message(self, key: str, problem: str, fix: str) -> str:
        return f"{self.source}: key '{key}': {problem}; {fix}"

    def fail(self, key: str, problem: str, fix: str) -> None:
        """A check failed: an error in ``error`` mode, else a recorded warning."""
        message = self._message(key, problem, fix)
        if self.mode is InputChecks.ERROR:
            raise DataError(message + " (or set prepare.input_checks: warn to go on anyway)")
        self.warn_message(message)

    def warn(self, key: str, problem: str, fix: str) -> None:
        """Something to look at, never an error."""
        self.warn_message(self._message(key, problem, fix))

    def warn_message(self, message: str) -> None:
        self.messages.append(message)
        warnings.warn(message, InputWarning, stacklevel=3)


def count_like(patterns: np.ndarray, mask: np.ndarray | None) -> str | None:
    """Why `patterns` (M, N, N) look like photon counts, or None.

    Integer dtypes are counts; float data look like counts when at least ``INTEGRAL_SHARE`` of
    the valid non-zero values are whole numbers and the maximum is at least
    ``COUNT_LIKE_MIN_MAX`` (sqrt of Poisson counts is rarely whole; a mask of 0/1 values is not
    data).
    """
    values = patterns if mask is None else patterns[:, mask]
    peak = float(np.max(values)) if values.size else 0.0
    if patterns.dtype.kind in "iu":
        return f"integer dtype {patterns.dtype} (maximum {peak:g})"
    nonzero = values[values != 0]
    sample = nonzero[:: max(1, nonzero.size // 1_000_000)]  # a million values are enough
    if sample.size and peak >= COUNT_LIKE_MIN_MAX:
        share = float(np.mean(sample == np.round(sample)))
        if share >= INTEGRAL_SHARE:
            return f"{100 * share:.1f} % of the non-zero values are whole numbers (maximum {peak:g})"
    return None


def zero_frequency_shares(intensities: np.ndarray) -> tuple[float, float]:
    """(centre, corners): shares of the mean pattern's energy within N/4 px of the centre and of the corners.

    intensities: (M, N, N). A centred far field (zero frequency at [N/2, N/2], DESIGN.md §2) has
    most energy near the centre; a file that was not fftshifted has it in the four corners.
    """
    mean = np.mean(intensities, axis=0, dtype=np.float64)
    size = mean.shape[-1]
    offsets = np.arange(size) - size // 2
    disc = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= (size / 4) ** 2
    total = float(mean.sum())
    if total <= 0:
        return 0.0, 0.0
    return float(mean[disc].sum()) / total, float(np.fft.fftshift(mean)[disc].sum()) / total


def probe_counts_ratio(amplitudes: np.ndarray, probe: np.ndarray) -> float:
    """Mean counts per pattern over the probe's total intensity sum_k sum |P_k|^2.

    amplitudes (M, N, N) sqrt(counts), probe (K, N, N). About mean |O|^2 (<= 1 for a
    transmitting sample) when the probe is on the counts' scale (DESIGN.md §2, "probe scale").
    """
    counts = float(np.sum(np.square(amplitudes), dtype=np.float64)) / amplitudes.shape[0]
    power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    return counts / power if power > 0 else float("inf")
