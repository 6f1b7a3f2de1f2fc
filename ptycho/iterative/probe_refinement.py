"""Probe refinement at `prepare`: rPIE sweeps with probe update on the training scan."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ptycho.config import BaselineConfig
from ptycho.data import PtychoDataset
from ptycho.iterative.pie import run_pie


def refine_probe(train: PtychoDataset, test: PtychoDataset, sweeps: int) -> tuple[PtychoDataset, PtychoDataset]:
    """Both scans with the probe that ``sweeps`` rPIE sweeps with probe update refine on the training scan.

    A file's probe is often a starting guess (tike's and ptychodus's files, a probe from another
    scan): the iterative engine can refine it, the network cannot (it is trained against a fixed
    probe, and a wrong one leaves phase ramps and no detail). The probe belongs to the instrument,
    so the test scan gets the one refined on the training scan. Incoherent modes are refined
    together (mode 0 is ``probe``). Recorded in both files' metadata.
    """
    settings = BaselineConfig(iterations=sweeps, update_probe=True)  # rPIE, batch and steps as the baseline's defaults
    started = time.perf_counter()
    reconstruction, errors = run_pie(train, settings, progress=False)
    refined = np.asarray(reconstruction.probe, dtype=np.complex64)
    modes = refined if refined.ndim == 3 else None
    record = {
        "probe_refined": {
            "algorithm": settings.algorithm.value, "sweeps": sweeps, "on": "training scan",
            "error_first_sweep": round(float(errors[0]), 6), "error_last_sweep": round(float(errors[-1]), 6),
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
    }
    return tuple(
        dataclasses.replace(data, probe=refined[0] if modes is not None else refined, probe_modes=modes, metadata={**data.metadata, **record})
        for data in (train, test)
    )
