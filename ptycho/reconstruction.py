"""The reconstruction file `reconstruction.npz`: a stitched complex object in the scan's frame.

Keys: ``object`` (H, W) complex64; ``origin`` (2,) int64 = (x0, y0), the input-coordinate
position of pixel [0, 0], so pixel [r, c] sits at x = x0 + c, y = y0 + r in the object-pixel
units of ``xcoords`` / ``ycoords``; ``coverage`` (H, W) float32, the summed patch weights
(0 = not reconstructed); ``method`` () str, what produced it. Optional (absent in older
files, which still load): ``probe`` (N, N) or (K, N, N) complex64, the probe (incoherent modes)
that together with ``object`` explains the data in the reconstruction's own scale, used by the
data R-factor; ``pixel_size_m`` (2,) float64, the object pixel (x, y) in metres when the scan's
units are known. The network's and the iterative baseline's reconstructions use this one
format, so one evaluation code path scores both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptycho.errors import DataError
from ptycho.files import write_npz

KEYS = ("object", "origin", "coverage", "method")
OPTIONAL_KEYS = ("probe", "pixel_size_m")


@dataclass(frozen=True, eq=False)
class Reconstruction:
    object: np.ndarray  # (H, W) complex64
    origin: tuple[int, int]  # (x0, y0)
    coverage: np.ndarray  # (H, W) float32
    method: str
    probe: np.ndarray | None = None  # (N, N) or (K, N, N) complex64, the probe that goes with `object`
    pixel_size_m: tuple[float, float] | None = None  # object pixel (x, y), metres, when known

    def truth_window(self, truth: np.ndarray, path: str) -> np.ndarray:
        """The part of a ground-truth object (same pixel units) under this reconstruction's canvas.

        Canvas pixels outside the truth are zero.
        """
        height, width = self.object.shape
        x0, y0 = self.origin
        window = np.zeros((height, width), dtype=np.complex64)
        rows = slice(max(0, -y0), min(height, truth.shape[0] - y0))
        cols = slice(max(0, -x0), min(width, truth.shape[1] - x0))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            raise DataError(f"{path}: key 'origin': the reconstruction canvas does not overlap the ground-truth object")
        window[rows, cols] = truth[rows.start + y0 : rows.stop + y0, cols.start + x0 : cols.stop + x0]
        return window


def save_reconstruction(reconstruction: Reconstruction, path: str | Path) -> None:
    arrays = {
        "object": reconstruction.object.astype(np.complex64),
        "origin": np.asarray(reconstruction.origin, dtype=np.int64),
        "coverage": reconstruction.coverage.astype(np.float32),
        "method": np.array(reconstruction.method),
    }
    if reconstruction.probe is not None:
        arrays["probe"] = reconstruction.probe.astype(np.complex64)
    if reconstruction.pixel_size_m is not None:
        arrays["pixel_size_m"] = np.asarray(reconstruction.pixel_size_m, dtype=np.float64)
    write_npz(path, arrays)


def load_reconstruction(path: str | Path) -> Reconstruction:
    """Read and check a reconstruction file (no pickle); DataError names file, key and problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: reconstruction file not found (the `infer` stage writes it)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in KEYS if key not in archive.files]
            if missing:
                raise DataError(f"{path}: key '{missing[0]}': missing; a reconstruction holds {list(KEYS)}")
            values = {key: archive[key] for key in KEYS + OPTIONAL_KEYS if key in archive.files}
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable reconstruction NPZ ({error})") from error
    obj, origin, coverage = values["object"], values["origin"], values["coverage"]
    if obj.ndim != 2 or not np.iscomplexobj(obj):
        raise DataError(f"{path}: key 'object': expected a 2-D complex array, got {obj.dtype} {obj.shape}")
    if not np.all(np.isfinite(obj)):
        raise DataError(f"{path}: key 'object': holds non-finite values")
    if origin.shape != (2,):
        raise DataError(f"{path}: key 'origin': expected shape (2,), got {origin.shape}")
    if coverage.shape != obj.shape:
        raise DataError(f"{path}: key 'coverage': shape {coverage.shape} differs from the object's {obj.shape}")
    probe = values.get("probe")
    if probe is not None:
        if probe.ndim not in (2, 3) or probe.shape[-1] != probe.shape[-2] or not np.iscomplexobj(probe):
            raise DataError(f"{path}: key 'probe': expected a complex (N, N) or (K, N, N) array, got {probe.dtype} {probe.shape}")
        if not np.all(np.isfinite(probe)):
            raise DataError(f"{path}: key 'probe': holds non-finite values")
    pixel = values.get("pixel_size_m")
    if pixel is not None and (pixel.shape != (2,) or not np.all(np.isfinite(pixel)) or np.any(pixel <= 0)):
        raise DataError(f"{path}: key 'pixel_size_m': expected two finite sizes > 0, got {pixel}")
    return Reconstruction(
        obj, (int(origin[0]), int(origin[1])), coverage, str(values["method"]),
        probe=None if probe is None else probe.astype(np.complex64),
        pixel_size_m=None if pixel is None else (float(pixel[0]), float(pixel[1])),
    )
