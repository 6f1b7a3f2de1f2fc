"""Writing files safely: atomically (never a partial file) and byte-deterministically.

Deterministic bytes matter to DVC: an output whose content did not change must hash the same,
or every downstream stage re-runs for nothing.
"""

from __future__ import annotations

import io
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np

FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file in the destination folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        # 0o666 minus the umask, like an ordinary file (mkstemp would leave it 0600).
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def zip_member(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed time stamp and permissions, so equal content gives equal bytes."""
    info = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
    info.create_system = 3  # unix
    return info


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an NPZ (as np.savez_compressed writes it, readable by np.load) with fixed times.

    Arrays are written in the given order with ``allow_pickle=False``, so an object array fails
    here instead of being pickled into the file.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            archive.writestr(zip_member(f"{name}.npy"), member.getvalue(), compresslevel=6)
    return buffer.getvalue()


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as a compressed, byte-deterministic NPZ, atomically."""
    write_atomically(path, npz_bytes(arrays))
