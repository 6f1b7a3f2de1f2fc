"""Reader of canonical and PtychoPINN-style NPZ files (also ptychodus's "PtychoPINN export").

Keys (DESIGN.md §5): ``diffraction`` or ``diff3d`` (M, N, N), or (N, N, M) legacy order
(``prepare.pattern_order``; an (N, N, N) cube is refused as ambiguous); ``xcoords``,
``ycoords`` probe-window centres in object pixels; ``probeGuess`` (N, N) or (K, N, N)
incoherent modes (optional: estimated when absent); ``objectGuess``, ``scan_index``,
``metadata`` JSON (its ``diffraction_quantity`` says counts or amplitudes); ``mask`` (N, N)
bool, True = valid, or ptychodus's ``bad_pixels`` (N, N), True = bad.

Conventions: the patterns are taken as centred (checked); positions are used as they are,
except in ptychodus's export (below). ptychodus's export writes raw counts in ``diff3d`` with no
declaration (the count check then asks for ``prepare.diffraction_quantity: intensity``) and the
positions twice, as ``xcoords``/``ycoords`` and ``xcoords_start``/``ycoords_start``:
PtychoPINN's ``*_start`` keys are not used here, which is reported when they differ from
``xcoords``/``ycoords``.

ptychodus's "PtychoPINN export" (``ptychodus.api.io.save_ptychopinn_training_data``, 1.7.0)
writes x = (x_m - center_x_m) / pixel_width_m + (W - 1)/2, ptychodus's object-pixel coordinate
whose window starts at x - (N - 1)/2; here the window's pixel N/2 sits on x (DESIGN.md §2), so
the same window is at x + 1/2 (as in ``ptycho.io.ptychodus``). Read as is, everything lands
half a pixel low in x and y. The export is recognised by its keys (``diff3d``, ``bad_pixels``,
which ptychodus always writes and PtychoPINN never does, and ``xcoords_start`` equal to
``xcoords``); its positions get + 1/2 in x and y, recorded in ``metadata["positions"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptycho.config import PatternOrder, PrepareConfig
from ptycho.npzfile import cast, parse_metadata, read_npz
from ptycho.errors import DataError
from ptycho.io.raw import Finding, RawScan


def _pattern_key(arrays: dict[str, np.ndarray], source: str) -> str:
    present = [key for key in ("diffraction", "diff3d") if key in arrays]
    if not present:
        raise DataError(
            f"{source}: key 'diffraction': missing (also looked for the PtychoPINN key 'diff3d'); if this is another "
            "format (tike, a ptychodus product), set prepare.source to it, or to auto"
        )
    if len(present) == 2:
        raise DataError(f"{source}: key 'diffraction': ambiguous: the file holds both 'diffraction' and 'diff3d'")
    return present[0]


def order_patterns(patterns: np.ndarray, order: PatternOrder, n_positions: int, source: str, key: str) -> tuple[np.ndarray, str]:
    """(M, N, N) patterns from an (M, N, N) or (N, N, M) array, and what was done.

    ``auto`` reads (M, N, N) when the last two axes are equal and the first differs, (N, N, M)
    when the first two are equal and the last differs; a cube (N, N, N) could be either and is
    refused with the fix.
    """
    if patterns.ndim != 3:
        raise DataError(f"{source}: key '{key}': expected a 3-D array of patterns, found shape {patterns.shape}")
    a, b, c = patterns.shape
    if order is PatternOrder.AUTO:
        if a == b == c:
            raise DataError(
                f"{source}: key '{key}': shape {patterns.shape} reads as {a} patterns in either axis order; "
                "set prepare.pattern_order: MNN (patterns first, the canonical order) or NNM (PtychoPINN's legacy order)"
            )
        if b == c:
            order = PatternOrder.MNN
        elif a == b:
            order = PatternOrder.NNM
        else:
            raise DataError(f"{source}: key '{key}': shape {patterns.shape} is neither (M, N, N) nor (N, N, M)")
    if order is PatternOrder.NNM:
        patterns = np.ascontiguousarray(np.transpose(patterns, (2, 0, 1)))
    if patterns.shape[0] != n_positions:
        raise DataError(
            f"{source}: key '{key}': {patterns.shape[0]} patterns in {order.value} order but {n_positions} positions "
            "in 'xcoords'; check prepare.pattern_order"
        )
    return patterns, order.value


def probe_modes(value: np.ndarray, source: str, key: str) -> np.ndarray:
    """(K, N, N) complex64 modes from an (N, N) probe or a stack with leading singleton axes."""
    probe = cast(value, source, key, np.complex64)
    while probe.ndim > 3 and probe.shape[0] == 1:
        probe = probe[0]
    if probe.ndim == 2:
        probe = probe[None]
    if probe.ndim != 3 or probe.shape[-1] != probe.shape[-2]:
        raise DataError(f"{source}: key '{key}': expected (N, N) or (modes, N, N), found shape {value.shape}")
    return probe


PTYCHODUS_EXPORT_SHIFT_PX = 0.5
"""ptychodus's (W - 1)/2 pixel coordinate to ours (module docstring)."""


def is_ptychodus_export(arrays: dict[str, np.ndarray]) -> bool:
    """Whether an NPZ has the keys of ptychodus's PtychoPINN export, with ``*_start`` equal to the positions."""
    if not {"diff3d", "bad_pixels", "xcoords", "ycoords", "xcoords_start", "ycoords_start"} <= arrays.keys():
        return False
    pairs = (("xcoords", "xcoords_start"), ("ycoords", "ycoords_start"))
    return all(arrays[a].shape == arrays[b].shape and np.array_equal(arrays[a], arrays[b]) for a, b in pairs)


def read(path: Path, config: PrepareConfig) -> RawScan:
    """Read an NPZ scan (module docstring) without converting anything."""
    source = str(path)
    arrays = read_npz(path)
    metadata = parse_metadata(arrays, source)
    key = _pattern_key(arrays, source)
    for required in ("xcoords", "ycoords"):
        if required not in arrays:
            raise DataError(f"{source}: key '{required}': missing")
    xcoords = cast(arrays["xcoords"], source, "xcoords", np.float64)
    ycoords = cast(arrays["ycoords"], source, "ycoords", np.float64)
    if xcoords.ndim != 1 or ycoords.shape != xcoords.shape:
        raise DataError(f"{source}: key 'xcoords': expected (M,) x and y coordinates, found {xcoords.shape} and {ycoords.shape}")
    patterns, order = order_patterns(arrays[key], config.pattern_order, len(xcoords), source, key)

    findings: list[Finding] = []
    starts = [name for name in ("xcoords_start", "ycoords_start") if name in arrays]
    if starts:
        start = [cast(arrays[name], source, name, np.float64) for name in starts]
        same = len(start) == 2 and all(s.shape == xcoords.shape for s in start) and np.allclose(start[0], xcoords) and np.allclose(start[1], ycoords)
        if not same:
            findings.append(Finding(
                "xcoords_start", "present and different from xcoords/ycoords, and not used",
                "ptycho places patterns at xcoords/ycoords (probe-window centres); if the positions you mean are "
                "in xcoords_start/ycoords_start, store them as xcoords/ycoords",
            ))
        else:
            metadata["xcoords_start"] = "equal to xcoords/ycoords (not used)"

    if is_ptychodus_export(arrays):
        xcoords, ycoords = xcoords + PTYCHODUS_EXPORT_SHIFT_PX, ycoords + PTYCHODUS_EXPORT_SHIFT_PX
        metadata["positions"] = (
            "ptychodus PtychoPINN export (diff3d, bad_pixels, *_start = positions): x = xcoords + 1/2, "
            "y = ycoords + 1/2 (ptychodus's (W - 1)/2 pixel coordinate to the window centre)"
        )

    mask = None
    if "mask" in arrays and "bad_pixels" in arrays:
        raise DataError(f"{source}: key 'mask': the file holds both 'mask' (True = valid) and 'bad_pixels' (True = bad)")
    if "mask" in arrays:
        mask = arrays["mask"].astype(bool)
    elif "bad_pixels" in arrays:
        mask = ~arrays["bad_pixels"].astype(bool)
        metadata["mask_origin"] = "bad_pixels (True = bad), inverted"

    scan_index = cast(arrays["scan_index"], source, "scan_index", np.int64) if "scan_index" in arrays else None
    if scan_index is not None and len(np.unique(scan_index)) < len(scan_index):
        # PtychoPINN (and ptychodus's export for it) use scan_index as the number of the scan a
        # pattern belongs to, not as a unique position index: keep it as metadata only.
        metadata["scan_numbers"] = sorted(int(value) for value in np.unique(scan_index))
        scan_index = None
    quantity = metadata.get("diffraction_quantity")
    return RawScan(
        source=source,
        pattern_key=key,
        patterns=patterns,
        quantity=quantity,
        quantity_origin="the file's metadata" if quantity else "",
        centred=True if key == "diffraction" else None,
        xcoords=xcoords,
        ycoords=ycoords,
        probe=probe_modes(arrays["probeGuess"], source, "probeGuess") if "probeGuess" in arrays else None,
        object=cast(arrays["objectGuess"], source, "objectGuess", np.complex64) if "objectGuess" in arrays else None,
        mask=mask,
        scan_index=scan_index,
        metadata={**metadata, "source_format": "npz", "pattern_order": order},
        findings=tuple(findings),
    )
