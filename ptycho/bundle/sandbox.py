"""The parent side of the HDF5 sandbox: ``wts.h5`` is parsed by ``_hdf5_child.py`` in a
resource-limited child process, never in the loading process.

Shared with the child, which runs isolated (``python -I``) and cannot import this package, so
both state them and tests/test_bundle.py pins that they agree: the exit status of a refusal
(``HDF5_REFUSED``) and the wire format of the output (``decode_child_output``).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import numpy as np

from ptycho.archive import read_into
from ptycho.bundle.schema import MAX_ARCHITECTURE_BYTES
from ptycho.errors import BundleError

# Wall-clock and CPU limit of the child process that parses wts.h5: 5 s, plus 1 s per 16 MiB.
# A valid default bundle parses in about 0.2 s; a crafted global heap (an object size changed
# in one byte) makes libhdf5 loop for ever, and this limit is what ends it.
HDF5_TIMEOUT_S = 5
HDF5_SECONDS_PER_BYTE = 1 / (16 << 20)

HDF5_CHILD = Path(__file__).with_name("_hdf5_child.py")
HDF5_REFUSED = 3  # exit status of the child for a file it refuses (the reason on stderr): its REFUSED
_ARRAY_DTYPE = re.compile(r"[<>|=][biufc][0-9]{1,2}")


def parse_hdf5(where: str, data: bytes) -> tuple[list[str], dict[str, str], dict[str, np.ndarray]]:
    """(root group names, string root attributes, arrays) of the HDF5 bytes ``data``.

    Parsed in a child process (``_hdf5_child.py``) with limits on memory, CPU time,
    output size and open files, so a crafted file that crashes, hangs or exhausts libhdf5 only
    ends that process. Arrays are named "group/key" (datasets) and "@name" (numeric root
    attributes). Measured cost: see the module docstring.
    """
    timeout_s = int(HDF5_TIMEOUT_S + HDF5_SECONDS_PER_BYTE * len(data))
    limits = {
        "memory_bytes": (512 << 20) + 4 * len(data),
        "cpu_s": timeout_s,
        "output_bytes": 2 * len(data) + (1 << 20),
        "max_items": 4096,
        "max_ndim": 8,
        "max_attributes": 64,
        "max_attribute_items": 64,
        "max_attribute_bytes": MAX_ARCHITECTURE_BYTES,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-I", str(HDF5_CHILD), json.dumps(limits)]
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        stdin.write(data)
        stdin.seek(0)
        try:
            status = subprocess.run(
                command, stdin=stdin, stdout=stdout, stderr=stderr, env=env, timeout=timeout_s, check=False
            ).returncode
        except subprocess.TimeoutExpired as error:
            raise BundleError(f"{where}: reading it took longer than {timeout_s} s; the file is malformed or crafted") from error
        except OSError as error:
            raise BundleError(f"{where}: cannot start the process that reads it ({error})") from error
        if status == HDF5_REFUSED:
            raise BundleError(f"{where}: {_last_line(stderr)}")
        if status < 0:
            signal_name = signal.Signals(-status).name if -status in signal.valid_signals() else f"signal {-status}"
            why = {
                "SIGXCPU": f"used more than {timeout_s} s of CPU time",
                "SIGKILL": f"was killed (at the limit of {timeout_s} s of CPU time, or out of memory)",
                "SIGXFSZ": "produced more data than the file holds",
            }.get(signal_name, "crashed the HDF5 library")
            raise BundleError(f"{where}: reading it {why} ({signal_name}); the file is malformed or crafted")
        if status != 0:
            raise BundleError(f"{where} is not a readable HDF5 file ({_last_line(stderr)})")
        stdout.seek(0)
        try:
            return decode_child_output(stdout)
        except (KeyError, TypeError, ValueError, struct.error) as error:
            raise BundleError(f"{where}: the reader's output is malformed ({error})") from error


def _last_line(handle: IO[bytes]) -> str:
    """The last non-empty line of a child's stderr (a refusal or the exception), shortened."""
    handle.seek(max(0, handle.seek(0, os.SEEK_END) - 2000))
    lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:500]


def decode_child_output(handle: IO[bytes]) -> tuple[list[str], dict[str, str], dict[str, np.ndarray]]:
    size = os.fstat(handle.fileno()).st_size
    (length,) = struct.unpack("<Q", handle.read(8))
    if length > size - 8:
        raise ValueError(f"header of {length} bytes in {size}")
    header = json.loads(handle.read(length))
    entries = header["arrays"]
    for entry in entries:
        if not _ARRAY_DTYPE.fullmatch(entry["dtype"]) or not all(isinstance(n, int) and n >= 0 for n in entry["shape"]):
            raise ValueError(f"array {entry['name']!r}: dtype {entry['dtype']!r} shape {entry['shape']!r}")
    if sum(math.prod(e["shape"]) * np.dtype(e["dtype"]).itemsize for e in entries) != size - 8 - length:
        raise ValueError("array sizes do not add up to the output's size")
    arrays = {}
    for entry in entries:
        array = np.empty(entry["shape"], dtype=np.dtype(entry["dtype"]))
        read_into(handle, memoryview(array.reshape(-1).view(np.uint8)), "reader output", ValueError)
        arrays[str(entry["name"])] = array
    return [str(name) for name in header["groups"]], {str(k): str(v) for k, v in header["attrs"].items()}, arrays
