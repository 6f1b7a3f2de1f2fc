"""Readers of scan files, one module per file family, and the registry that picks one.

``prepare.source`` names the family (``npz``, ``cxi``, ``ptychodus``, ``tike``) or ``auto``,
which detects it from the file's content (:func:`detect`; the detection is recorded in the
dataset's ``metadata["source_detected"]``). Every reader returns a ``RawScan`` and
``ptycho.io.ingest.to_dataset`` converts it, once, for all formats alike. Readers are imported
when a scan of their family is read, not with this package: a stage that writes a product
(``ptycho.io.product``) or reads one family depends on those modules alone.

| family | file | patterns | positions | probe | mask |
|---|---|---|---|---|---|
| npz | canonical / PtychoPINN NPZ, ptychodus's PtychoPINN export | ``diffraction``/``diff3d`` | ``xcoords``/``ycoords`` (object px, window centres) | ``probeGuess`` (N, N) or (K, N, N) | ``mask`` or ``bad_pixels`` |
| cxi | CXI (HDF5) | ``entry_1/data_1/data`` counts | ``sample_1/geometry_1/translation`` (m) | ``source_1/illumination`` / ``image_1/data`` | ``detector_1/mask`` |
| ptychodus | ``product.h5``/``.npz`` + ``diffraction.h5`` | ``patterns`` counts | ``probe_position_x_m``/``_y_m`` | ``probe`` (OPR, K, N, N) | ``bad_pixels`` |
| tike | NPZ ``data``, ``scan``, ``probe`` | counts, not fftshifted | ``scan`` minimum corner, (row, col) | ``probe`` modes | — |
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ptycho.config import PrepareConfig, Source
from ptycho.errors import DataError

if TYPE_CHECKING:
    from ptycho.data import PtychoDataset
    from ptycho.io.raw import RawScan

READERS: dict[Source, str] = {
    Source.NPZ: "ptycho.io.npz",
    Source.CXI: "ptycho.io.cxi",
    Source.PTYCHODUS: "ptycho.io.ptychodus",
    Source.TIKE: "ptycho.io.tike",
}
"""The reader module of each family: its ``read(path: Path, config: PrepareConfig) -> RawScan``."""


def detect(path: str | Path) -> tuple[Source, str]:
    """(family, reason) of the scan at `path`, from its content (not its name)."""
    import h5py

    from ptycho.io import hdf5, ptychodus, safety

    path = Path(path)
    if path.is_dir():
        if any((path / name).is_file() for name in ptychodus.PRODUCT_NAMES):
            return Source.PTYCHODUS, "a folder with a ptychodus product file"
        raise DataError(f"{path}: a folder, but without {' or '.join(ptychodus.PRODUCT_NAMES)}; set prepare.source")
    safety.regular_file(path)
    if h5py.is_hdf5(path):
        with hdf5.open_hdf5(path) as h5:
            if "entry_1" in h5:
                return Source.CXI, "an HDF5 file with /entry_1 (CXI)"
            if "probe_position_x_m" in h5:
                return Source.PTYCHODUS, "an HDF5 file with probe_position_x_m (ptychodus product)"
            names = sorted(h5.keys())
        raise DataError(f"{path}: an HDF5 file of unknown layout (top level: {names[:8]}); set prepare.source")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
        if {"probe_position_x_m", "object"} <= keys:
            return Source.PTYCHODUS, "an NPZ with probe_position_x_m (ptychodus product)"
        if keys & {"diffraction", "diff3d"}:
            return Source.NPZ, "an NPZ with 'diffraction' or 'diff3d'"
        if {"data", "scan"} <= keys:
            return Source.TIKE, "an NPZ with 'data' and 'scan' (tike)"
        raise DataError(f"{path}: an NPZ of unknown layout (keys: {sorted(keys)[:8]}); set prepare.source")
    raise DataError(f"{path}: neither HDF5 nor NPZ; set prepare.source")


def read_scan(path: str | Path, config: PrepareConfig) -> RawScan:
    """The scan at `path` as its reader finds it (``config.source`` picks the reader)."""
    source, reason = (config.source, "prepare.source") if config.source is not Source.AUTO else detect(path)
    if source not in READERS:
        raise DataError(f"{path}: prepare.source '{source.value}' has no file reader")
    from ptycho.io import safety

    if not Path(path).is_dir():
        safety.regular_file(path)  # a device or a FIFO is named as such, not "not found" (nor read for ever)
    raw = importlib.import_module(READERS[source]).read(Path(path), config)
    return replace(raw, metadata={**raw.metadata, "source_detected": f"{source.value} ({reason})", "source_file": str(path)})


def load_scan(path: str | Path, config: PrepareConfig, *, probe_scale_factor: float | None = None) -> tuple[PtychoDataset, float]:
    """Read, convert and check the scan at `path`: (canonical dataset, probe scale factor applied)."""
    from ptycho.io import ingest

    return ingest.to_dataset(read_scan(path, config), config, probe_scale_factor=probe_scale_factor)
