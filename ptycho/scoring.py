"""Scoring a reconstruction: against the truth on a common region, and against the measured
diffraction (data R-factor) with the reconstruction's own probe. The `evaluate` stage and the
benchmarks call these."""

from __future__ import annotations

import numpy as np
import torch

from ptycho import metrics, physics
from ptycho.config import EvaluateConfig
from ptycho.data import PtychoDataset
from ptycho.errors import DataError
from ptycho.reconstruction import Reconstruction
from ptycho.stitching import window_geometry


def scoring_probe(reconstruction: Reconstruction, data: PtychoDataset) -> np.ndarray:
    """(K, N, N): the reconstruction's own probe when it has one, else the data's probe modes."""
    probe = reconstruction.probe if reconstruction.probe is not None else data.all_probe_modes
    return probe[None] if probe.ndim == 2 else probe


def scorable_positions(reconstruction: Reconstruction, data: PtychoDataset) -> np.ndarray:
    """Indices of the positions whose window the reconstruction covers wherever its probe is bright.

    Bright: total probe amplitude sqrt(Σ_k |P_k|²) >= 10 % of its peak. Windows are the integer
    windows of ``stitching.window_geometry`` (the iterative engine's).
    """
    size = data.pattern_size
    amplitude = np.sqrt(np.sum(np.abs(scoring_probe(reconstruction, data)) ** 2, axis=0))
    if amplitude.shape != (size, size):
        raise DataError(f"reconstruction ({reconstruction.method}): key 'probe': shape {amplitude.shape} does not match the {size} px patterns")
    bright = amplitude >= 0.1 * amplitude.max()
    covered = reconstruction.coverage > 0
    rows0, cols0, _ = window_geometry(data.xcoords, data.ycoords, size, reconstruction.origin)
    keep = []
    for index, (row, col) in enumerate(zip(rows0.tolist(), cols0.tolist())):
        window = covered[max(row, 0) : row + size, max(col, 0) : col + size]
        if row >= 0 and col >= 0 and window.shape == (size, size) and window[bright].all():
            keep.append(index)
    return np.array(keep, dtype=np.int64)


def data_consistency(reconstruction: Reconstruction, data: PtychoDataset, keep: np.ndarray | None = None) -> dict[str, float]:
    """R-factor and normalised error of the measured amplitudes against those re-simulated from the
    reconstruction with its own probe (``scoring_probe``: incoherent modes add intensities), on
    the valid detector pixels (``data.mask``) of the positions `keep` (default:
    ``scorable_positions``; ``evaluate`` passes the positions every method can be scored on).
    """
    size = data.pattern_size
    x0, y0 = reconstruction.origin
    keep = scorable_positions(reconstruction, data) if keep is None else np.asarray(keep, dtype=np.int64)
    if len(keep) == 0:
        return {"r_factor": float("nan"), "normalised_error": float("nan"), "n_patterns": 0}
    probe = torch.from_numpy(scoring_probe(reconstruction, data).astype(np.complex64))
    obj = torch.from_numpy(reconstruction.object)
    with torch.no_grad():
        patches = physics.extract_patches(obj, torch.from_numpy(data.xcoords[keep] - x0), torch.from_numpy(data.ycoords[keep] - y0), size)
        simulated = torch.sqrt(sum(physics.forward_amplitude(patches, mode) ** 2 for mode in probe)).numpy()
    measured = data.amplitudes[keep]
    if data.mask is not None:
        measured, simulated = measured[:, data.mask], simulated[:, data.mask]
    return {
        "r_factor": metrics.r_factor(measured, simulated),
        "normalised_error": metrics.normalised_error(measured, simulated),
        "n_patterns": int(len(keep)),
    }


def common_region(reconstructions: dict[str, Reconstruction], config: EvaluateConfig) -> np.ndarray:
    """Pixels in the scanned region of every reconstruction: all methods are scored on one region."""
    regions = [metrics.scanned_region(rec.coverage, config.coverage_fraction, config.margin_px) for rec in reconstructions.values()]
    return np.logical_and.reduce(regions)


def score(
    reconstruction: Reconstruction, data: PtychoDataset, region: np.ndarray | None, config: EvaluateConfig, source: str,
    keep: np.ndarray | None = None,
):
    """All metrics of one reconstruction: against the truth on ``region`` when the data have one,
    and always against the measured diffraction (positions `keep`, see ``data_consistency``).
    Returns (metrics, FRC curve or None)."""
    results: dict[str, float] = {f"data.{key}": value for key, value in data_consistency(reconstruction, data, keep).items()}
    curve = None
    if data.object is not None:
        truth = reconstruction.truth_window(data.object, source)
        # The region is passed as a 0/1 coverage map: metrics.scanned_region gives it back as it is.
        compared, curve = metrics.compare(
            reconstruction.object, truth, region.astype(np.float32), fraction=0.5, margin_px=0,
            remove_phase_ramp=config.remove_phase_ramp, register=config.register,
        )
        results.update(compared)
        from ptycho.twin import stitched_twin_scores

        scored = scorable_positions(reconstruction, data) if keep is None else np.asarray(keep, dtype=np.int64)
        results.update(stitched_twin_scores(
            reconstruction.object, truth, reconstruction.origin, data.xcoords[scored], data.ycoords[scored], data.all_probe_modes,
        ))
    return results, curve


def scores_of(results: dict) -> dict:
    """One method's metrics without the alignment diagnostics (``alignment.*``, ``DETAIL_KEYS``):
    what ``dvc metrics show`` lists, one row per method."""
    return {key: value for key, value in results.items() if not key.startswith("alignment.") and key not in DETAIL_KEYS}


DETAIL_KEYS = ("region_px", "twin.correlation_true", "twin.correlation_twin", "twin.n_patches", "twin.switched")
"""Kept in metrics.json, left out of the DVC score files (``dvc metrics show`` stays one screen wide)."""
