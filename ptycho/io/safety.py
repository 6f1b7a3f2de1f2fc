"""Scan files are untrusted input: checks made before a byte of data is read.

The same regime as the bundle loader (``ptycho.bundle``), for the scan readers (CXI,
ptychodus, tike, NPZ): a scan must be a regular file, must not read data from other files,
must not declare more data than it can hold, and its physical constants must be plausible.

- :func:`regular_file`: devices, FIFOs and sockets (also behind a symbolic link) are refused
  with that reason: reading ``/dev/zero`` never ends, opening a FIFO blocks.
- :func:`check_hdf5`: one walk over every link, dataset and attribute of an open HDF5 file,
  metadata only. Refused: external links, user-defined links, external storage, virtual
  datasets (each reads another file, which DVC does not track as a dependency of ``prepare``),
  soft links that loop, a dataset that declares more bytes than this machine's memory, never
  written data (HDF5 would hand out its fill value for as many GiB as the shape declares), and
  compressed data declaring more than ``MAX_COMPRESSION`` times what it stores. Soft links
  that resolve inside the same file are followed (CXI writes ``data_1/data`` as one); libhdf5
  bounds a chain of them (16 hops).
- :func:`plausible`: photon energy, wavelength, distance and pixel sizes inside wide physical
  ranges, so that 1e-300 J or a 1e300 m pixel ends as a DataError naming the key.
"""

from __future__ import annotations

import os
import resource
import stat
from pathlib import Path

import h5py
import numpy as np
from h5py import h5d, h5l

from ptycho.errors import DataError

MAX_LINKS = 100_000
"""Links and attributes one walk visits at most (a CXI file holds a few hundred)."""

MAX_COMPRESSION = 1000
"""Declared bytes per stored byte of a compressed dataset (detector counts compress ~2-50 x)."""

MAX_ATTRIBUTE_BYTES = 16 << 20
"""Declared size of one attribute (they hold scalars, strings and short vectors)."""

RANGES: dict[str, tuple[float, float, str]] = {
    # quantity: (low, high, unit). Wide: visible light (~2 eV) to hard X-rays (~100 keV), near
    # field (millimetres) to long beamlines (~100 m).
    "photon_energy_J": (1.602176634e-19, 1.602176634e-13, "J (1 eV to 1 MeV)"),
    "photon_energy_eV": (1.0, 1e6, "eV"),
    "wavelength_m": (1e-12, 2e-6, "m"),
    "distance_m": (1e-4, 1e3, "m"),
    "detector_pixel_m": (1e-7, 1e-2, "m"),
    "object_pixel_m": (1e-12, 1e-3, "m"),
    "position_m": (0.0, 1.0, "m (largest |position|)"),
}


def plausible(value: float, source: str, key: str, quantity: str) -> float:
    """``value`` if it lies in the plausible range of ``quantity`` (RANGES), else DataError naming the key."""
    low, high, unit = RANGES[quantity]
    if not low <= value <= high:
        raise DataError(f"{source}: key '{key}': {value:g} is outside the plausible range {low:g} ... {high:g} {unit}")
    return value


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: str | Path) -> Path:
    """``path`` if it is (or links to) a regular file; else DataError saying what it is instead."""
    path = Path(path)
    link = f" (a symbolic link to {os.readlink(path)})" if path.is_symlink() else ""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: file not found{link}") from None
    except OSError as error:
        raise DataError(f"{path}{link}: cannot be read ({error.strerror})") from error
    if not stat.S_ISREG(mode):
        raise DataError(
            f"{path}{link}: is {_kind(mode)}; only regular files are read as scans "
            "(copy the scan into data/raw/, or link to the file itself)"
        )
    return path


def memory_limit_bytes() -> int:
    """Half of what this process may allocate: physical memory, or a lower address-space limit."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return (physical if soft == resource.RLIM_INFINITY else min(physical, soft)) // 2


def _declared_bytes(shape: tuple | None, dtype: np.dtype) -> int:
    count = 1
    for extent in shape or ():
        count *= int(extent)
    return 0 if shape is None else count * dtype.itemsize


def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.3g} GiB" if nbytes >= 1 << 30 else f"{nbytes} bytes"


def _check_dataset(dataset: h5py.Dataset, where: str, source: str, limit: int) -> None:
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5d.VIRTUAL:
        raise DataError(f"{source}: key '{where}': a virtual dataset (it maps data from other files or datasets); "
                        "store the data in the scan file itself")
    if plist.get_external_count():
        raise DataError(f"{source}: key '{where}': external storage (its data lie in another file); "
                        "store the data in the scan file itself")
    nbytes = _declared_bytes(dataset.shape, dataset.dtype)
    if nbytes > limit:
        raise DataError(f"{source}: key '{where}': declares shape {dataset.shape} {dataset.dtype} ({_size(nbytes)}), "
                        f"more than half of this machine's memory ({_size(2 * limit)})")
    if nbytes == 0 or h5py.check_vlen_dtype(dataset.dtype) is not None or h5py.check_string_dtype(dataset.dtype):
        return  # strings and variable-length items are checked where they are read (numeric keys refuse them)
    stored = dataset.id.get_storage_size()
    filters = plist.get_nfilters() if layout == h5d.CHUNKED else 0
    if stored == 0:
        raise DataError(f"{source}: key '{where}': declares shape {dataset.shape} ({_size(nbytes)}) but stores no data "
                        "(never written: HDF5 would return its fill value)")
    if filters and nbytes > MAX_COMPRESSION * stored:
        raise DataError(f"{source}: key '{where}': declares {_size(nbytes)} compressed into {stored} bytes, "
                        f"more than {MAX_COMPRESSION} : 1 (never-written chunks, or a decompression bomb)")
    if not filters and stored < nbytes:
        raise DataError(f"{source}: key '{where}': declares {_size(nbytes)} but stores {stored} bytes (partly never written)")


def _check_attributes(item: h5py.HLObject, where: str, source: str, counter: list[int]) -> None:
    for name in item.attrs:
        counter[0] += 1
        attribute = item.attrs.get_id(name)
        nbytes = _declared_bytes(attribute.shape, attribute.dtype)
        if nbytes > MAX_ATTRIBUTE_BYTES:
            raise DataError(f"{source}: attribute '{name}' of '{where}': declares {_size(nbytes)}; attributes hold scalars and short vectors")
        item.attrs[name]  # small: read now, so that a damaged one is refused here, not where a reader reads it


def _walk(h5: h5py.File, source: str) -> list[str]:
    """Check every object reachable by hard links; return the soft links' paths (checked afterwards)."""
    limit = memory_limit_bytes()
    counter, soft, seen = [0], [], set()
    _check_attributes(h5, "/", source, counter)
    stack: list[tuple[str, h5py.Group]] = [("", h5)]
    while stack:
        prefix, group = stack.pop()
        for name in group:
            counter[0] += 1
            if counter[0] > MAX_LINKS:
                raise DataError(f"{source}: more than {MAX_LINKS} links and attributes; not a scan file this reader walks")
            where = f"{prefix}/{name if isinstance(name, str) else repr(name)}"
            kind = group.id.links.get_info(name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")).type
            if kind == h5l.TYPE_SOFT:
                soft.append(where)
                continue
            if kind == h5l.TYPE_EXTERNAL:
                target = group.get(name, getlink=True)
                raise DataError(f"{source}: key '{where}': an external link to {target.filename}:{target.path}; "
                                "the pipeline tracks data/raw/ only, so copy the data into the scan file")
            if kind != h5l.TYPE_HARD:
                raise DataError(f"{source}: key '{where}': a user-defined link (type {kind}); only hard and soft links are read")
            item = group[name]
            token = h5py.h5o.get_info(item.id).addr
            if token in seen:  # a second hard link to an object already checked (or a group loop)
                continue
            seen.add(token)
            _check_attributes(item, where, source, counter)
            if isinstance(item, h5py.Group):
                stack.append((where, item))
            elif isinstance(item, h5py.Dataset):
                _check_dataset(item, where, source, limit)
    return soft


def check_hdf5(h5: h5py.File, source: str) -> None:
    """Refuse an HDF5 file that reads other files, loops or declares more data than it holds (module docstring)."""
    try:
        soft = _walk(h5, source)
        for where in soft:  # every link in the file is hard or soft now: resolving cannot leave the file
            target = h5.get(where, getlink=True).path
            try:
                h5[where]
            except (KeyError, RuntimeError, OSError) as error:
                raise DataError(f"{source}: key '{where}': a soft link to '{target}' that does not resolve ({error}); "
                                "dangling, or a loop of soft links") from error
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeError) as error:
        raise DataError(f"{source}: the HDF5 structure cannot be read ({type(error).__name__}: {error})") from error
