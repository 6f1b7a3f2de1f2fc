"""The child process that parses an untrusted ``wts.h5`` for ``ptycho.bundle.sandbox`` (the only parse).

libhdf5 is a large C library: a crafted file can make it crash (a reviewer's 8-byte edit gave
a segfault), loop for ever (a one-byte edit of a global-heap object size does, found by our
fuzzing) or allocate without bound. So the bundle loader never hands the bytes to libhdf5 in
its own process. It runs this script (``python -I _hdf5_child.py LIMITS``) with the HDF5
bytes on stdin and a regular file as stdout; the script limits its own memory, CPU time,
output size and open files, walks the file, checks every link and dataset *before* reading
it, and writes what it read in a plain format the parent decodes with numpy alone:

    8 bytes little-endian header length, header JSON, then the raw bytes of each array.

Header: {"groups": [root group names], "attrs": {name: text}, "arrays": [{"name": "@attr" or
"group/key", "dtype": "<f4", "shape": [...]}]}; string attributes go in "attrs", numeric ones
and every dataset in "arrays" (so NaN and inf travel as they are and the parent judges them).

Exit status: 0 success; 3 refused (the reason on stderr, one line); anything else (a Python
exception, a signal) is a failure the parent reports. Only the standard library, numpy and
h5py are imported: the script runs isolated (``-I``), without ptycho on ``sys.path``.
"""

import encodings.ascii  # noqa: F401 - h5py decodes fixed-length strings with it, lazily, after the file limit
import encodings.latin_1  # noqa: F401 - below: importing a module opens a file, which the limit forbids
import io
import json
import resource
import struct
import sys

import h5py
import numpy as np
from h5py import h5d, h5l, h5pl

REFUSED = 3
NUMERIC_KINDS = "biufc"


class Refused(Exception):
    """The file is readable but not something a bundle may hold."""


def _limit(kind: int, value: int, grace: int = 0) -> None:
    """Soft limit ``value``, hard limit ``value + grace`` (never above the inherited hard limit)."""
    _, hard = resource.getrlimit(kind)
    new_hard = value + grace if hard == resource.RLIM_INFINITY else min(value + grace, hard)
    resource.setrlimit(kind, (min(value, new_hard), new_hard))


def _link_ok(group: h5py.Group, name: str, where: str) -> None:
    """Only hard links: a soft link can alias or loop, an external link opens another file."""
    kind = group.id.links.get_info(name.encode("utf-8", "surrogateescape")).type
    if kind != h5l.TYPE_HARD:
        what = {h5l.TYPE_SOFT: "a soft link", h5l.TYPE_EXTERNAL: "an external link (to another file)"}
        raise Refused(f"'{where}' is {what.get(kind, f'a user-defined link (type {kind})')}; only hard links are read")


def _dataset_ok(dataset: h5py.Dataset, where: str, budget: list[int], limits: dict) -> tuple[np.dtype, tuple]:
    """Check storage, dtype and size of a dataset before a byte of it is read."""
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5d.VIRTUAL:
        raise Refused(f"dataset '{where}' is a virtual dataset (it maps data from other files or datasets)")
    if plist.get_external_count():
        raise Refused(f"dataset '{where}' has external storage (its data lie in another file)")
    if layout not in (h5d.CONTIGUOUS, h5d.COMPACT):
        raise Refused(f"dataset '{where}' has layout {layout}; bundles store contiguous datasets only")
    if plist.get_nfilters():
        raise Refused(f"dataset '{where}' uses {plist.get_nfilters()} filter(s) (compression); bundles use none")
    dtype, shape = dataset.dtype, dataset.shape
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.itemsize > 16:
        raise Refused(f"dataset '{where}' has dtype {dtype}; bundles hold numeric arrays only")
    if shape is None or len(shape) > limits["max_ndim"]:
        raise Refused(f"dataset '{where}' has shape {shape}; at most {limits['max_ndim']} axes")
    nbytes = dtype.itemsize
    for extent in shape:
        nbytes *= extent
    # No filters, so every stored byte is in the file: declared sizes beyond the file's size,
    # or storage never written (a fill value read as a huge array), are refused.
    if dataset.id.get_storage_size() != nbytes:
        raise Refused(
            f"dataset '{where}' declares shape {shape} {dtype} ({nbytes} bytes) but stores "
            f"{dataset.id.get_storage_size()} bytes"
        )
    if nbytes > budget[0]:
        raise Refused(f"dataset '{where}' of {nbytes} bytes exceeds what the file of {limits['file_bytes']} bytes can hold")
    budget[0] -= nbytes
    return dtype, shape


def _attribute(h5: h5py.File, name: str, limits: dict) -> tuple[str, object]:
    """('text', str) or ('array', ndarray) for one root attribute, checked before reading."""
    attr_id = h5.attrs.get_id(name)
    dtype, shape = attr_id.dtype, attr_id.shape
    if shape is None or len(shape) > 1 or (shape and shape[0] > limits["max_attribute_items"]):
        raise Refused(f"root attribute '{name}' has shape {shape}; attributes are scalars or short vectors")
    if h5py.check_string_dtype(dtype) is not None:
        if shape != ():
            raise Refused(f"root attribute '{name}' is an array of strings; expected one string")
        value = h5.attrs[name]
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if len(text) > limits["max_attribute_bytes"]:
            raise Refused(f"root attribute '{name}' holds {len(text)} characters, more than {limits['max_attribute_bytes']}")
        return "text", text
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.itemsize > 16:
        raise Refused(f"root attribute '{name}' has dtype {dtype}; expected a number or a string")
    return "array", np.asarray(h5.attrs[name])


def walk(h5: h5py.File, limits: dict) -> tuple[list[str], dict[str, str], list[tuple[str, np.ndarray]]]:
    """Root group names, root attributes, root datasets and the datasets of root groups (one
    level, no deeper)."""
    groups: list[str] = []
    texts: dict[str, str] = {}
    arrays: list[tuple[str, np.ndarray]] = []
    n_attrs = len(h5.attrs)
    if n_attrs > limits["max_attributes"]:
        raise Refused(f"the root group has {n_attrs} attributes, more than {limits['max_attributes']}")
    for name in h5.attrs:
        kind, value = _attribute(h5, name, limits)
        if kind == "text":
            texts[name] = value
        else:
            arrays.append((f"@{name}", value))
    budget = [limits["file_bytes"]]
    found: list[tuple[str, h5py.Dataset]] = []
    if len(h5) > limits["max_items"]:
        raise Refused(f"the root group has {len(h5)} members, more than {limits['max_items']}")
    for name in h5:
        _link_ok(h5, name, name)
        item = h5[name]
        if isinstance(item, h5py.Group):
            groups.append(name)
            if len(item) > limits["max_items"]:
                raise Refused(f"group '{name}' has {len(item)} members, more than {limits['max_items']}")
            for key in item:
                where = f"{name}/{key}"
                _link_ok(item, key, where)
                child = item[key]
                if not isinstance(child, h5py.Dataset):
                    raise Refused(f"'{where}' is a {type(child).__name__}; model groups hold datasets only")
                found.append((where, child))
        elif isinstance(item, h5py.Dataset):
            found.append((name, item))
        else:
            raise Refused(f"'{name}' is a {type(item).__name__}; expected a group or a dataset")
        if len(found) > limits["max_items"]:
            raise Refused(f"the file holds more than {limits['max_items']} datasets")
    checked = [(where, dataset, *_dataset_ok(dataset, where, budget, limits)) for where, dataset in found]
    for where, dataset, dtype, shape in checked:  # every check passed: now read
        array = np.empty(shape, dtype=dtype)
        if array.size:
            dataset.read_direct(array)
        arrays.append((where, array))
    return groups, texts, arrays


def main() -> int:
    limits = json.loads(sys.argv[1])
    data = sys.stdin.buffer.read()
    _limit(resource.RLIMIT_CORE, 0)  # a crash leaves no core file behind
    _limit(resource.RLIMIT_AS, limits["memory_bytes"])
    _limit(resource.RLIMIT_CPU, limits["cpu_s"], grace=1)  # SIGXCPU first, SIGKILL a second later
    _limit(resource.RLIMIT_FSIZE, limits["output_bytes"])
    # Second line of defence behind the link and storage checks: no file can be opened from
    # here on (descriptors 0-2 are already open), and no HDF5 filter plugin can be loaded.
    _limit(resource.RLIMIT_NOFILE, 3)
    while h5pl.size():
        h5pl.remove(0)
    limits["file_bytes"] = len(data)
    try:
        with h5py.File(io.BytesIO(data), "r") as h5:
            groups, texts, arrays = walk(h5, limits)
    except Refused as refusal:
        print(refusal, file=sys.stderr)
        return REFUSED
    header = {
        "groups": groups,
        "attrs": texts,
        "arrays": [
            {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)} for name, array in arrays
        ],
    }
    encoded = json.dumps(header).encode("utf-8")
    out = sys.stdout.buffer
    out.write(struct.pack("<Q", len(encoded)))
    out.write(encoded)
    for _, array in arrays:
        out.write(array.tobytes())  # C order
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
