"""Worker of tests/fuzzing.run_mutants: load mutants one by one and print one JSON line each.

    python fuzz_worker.py bundle|npz|cxi|ptychodus FOLDER START

Before each mutant it prints {"start": i}, after it {"index": i, "outcome": ..., "detail": ...},
so the parent knows which mutant was being loaded when the worker crashed or hung.
"""

import json
import os
import resource
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fuzzing import MARKER
from ptycho.data import load_dataset
from ptycho.errors import BundleError, DataError, InputWarning

# A runaway allocation must end as a MemoryError here, not as the machine's OOM killer.
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_bundle(path: Path) -> tuple[str, str]:
    import torch  # here, not at the top: an NPZ worker starts in a fraction of the time

    from ptycho.bundle import load_bundle

    torch.set_num_threads(1)
    bundle = load_bundle(path)
    values = [t.detach() for t in bundle.autoencoder.state_dict().values()]
    values += [t.detach() for t in bundle.diffraction_to_obj.state_dict().values()]
    for tensor in values:
        real = torch.view_as_real(tensor) if tensor.is_complex() else tensor
        if real.is_floating_point() and bool((real == float(MARKER)).any()):
            return "outside", "a loaded weight holds the planted marker value"
        if real.is_floating_point() and not bool(torch.isfinite(real).all()):
            return "bad-value", "a loaded weight is not finite"
    if not (np.isfinite(bundle.intensity_scale) and bundle.intensity_scale > 0) or not np.any(bundle.probe):
        return "bad-value", "intensity_scale <= 0 or an all-zero probe"
    return "loaded", ""


def check_npz(path: Path) -> tuple[str, str]:
    """Loads in memory, then by rows (``by_rows=True``, the patterns read from the file): both
    must refuse the same files, and give the same patterns when they load."""
    try:
        dataset = load_dataset(path)
    except DataError:
        load_by_rows(path)  # must be refused too: its DataError makes the outcome "refused"
        return "bad-value", "read by rows, a file that is refused in memory was loaded"
    if dataset.n_patterns < 2 or dataset.pattern_size < 16 or not np.any(dataset.amplitudes) or not np.any(dataset.probe):
        return "bad-value", "a degenerate dataset was accepted"
    if not np.array_equal(np.asarray(load_by_rows(path).amplitudes), dataset.amplitudes):
        return "bad-value", "the patterns read by rows differ from those read in memory"
    return "loaded", ""


def check_scan(path: Path) -> tuple[str, str]:
    """A CXI file or a ptychodus scan folder read and converted as ``ptycho prepare`` does."""
    from ptycho.config import PrepareConfig, Source
    from ptycho.io import load_scan

    source = Source.CXI if path.suffix == ".cxi" else Source.PTYCHODUS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        dataset, _ = load_scan(path, PrepareConfig(source=source, train_file=str(path), N=16))
    if np.any(np.isclose(dataset.amplitudes, np.sqrt(float(MARKER)))) or np.any(np.isclose(dataset.amplitudes, float(MARKER))):
        return "outside", "a loaded pattern holds the planted marker value"
    if dataset.n_patterns < 1 or not np.all(np.isfinite(dataset.amplitudes)) or not np.all(np.isfinite(dataset.xcoords)):
        return "bad-value", "a degenerate dataset was accepted"
    return "loaded", ""


def load_by_rows(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # a compressed file is read into memory, with a warning
        return load_dataset(path, by_rows=True)


def self_test(path: Path) -> None:
    """With PTYCHO_FUZZ_SELF_TEST set, three file contents act out the failures the harness counts."""
    content = path.read_bytes()
    if content == b"crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif content == b"hang":
        time.sleep(3600)
    elif content == b"raw":
        raise TypeError("a raw exception")


def main() -> None:
    loader, folder, start = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    check, expected = {"bundle": (check_bundle, BundleError), "npz": (check_npz, DataError),
                       "cxi": (check_scan, DataError), "ptychodus": (check_scan, DataError)}[loader]
    names = (folder / "index.txt").read_text().split()
    for index in range(start, len(names)):
        print(json.dumps({"start": index}), flush=True)
        before, started = peak_bytes(), time.perf_counter()
        try:
            if os.environ.get("PTYCHO_FUZZ_SELF_TEST"):
                self_test(folder / names[index])
            outcome, detail = check(folder / names[index])
        except expected as error:
            outcome, detail = "refused", str(error)[:300]
        except BaseException as error:  # noqa: BLE001 - every other exception is what the fuzzer looks for
            outcome, detail = "raw", f"{type(error).__name__}: {str(error)[:300]}"
        if outcome in ("loaded", "refused") and peak_bytes() - before > (1 << 30):
            outcome, detail = "memory", f"peak memory grew by {(peak_bytes() - before) >> 20} MiB; {detail}"
        seconds = round(time.perf_counter() - started, 3)
        print(json.dumps({"index": index, "outcome": outcome, "detail": detail, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
