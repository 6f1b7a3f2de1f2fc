"""PNG figures a person looks at (DESIGN.md §6).

Drawn on ``matplotlib.figure.Figure`` objects, which render with the Agg canvas by themselves:
pyplot is never imported, so no global backend is chosen and no figure is registered anywhere
(importing this module changes nothing for a caller that uses pyplot interactively).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ptycho.data import PtychoDataset
from ptycho.files import write_atomically


def _figure(rows: int, columns: int, size: tuple[float, float]):
    figure = Figure(figsize=size)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _save(figure: Figure, path: str | Path) -> None:
    # Fixed metadata keeps the PNG byte-identical for identical data (no needless DVC changes).
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    write_atomically(path, buffer.getvalue())


def _robust_limits(values: np.ndarray, where: np.ndarray | None = None) -> dict:
    """Colour limits at the 0.5 and 99.5 percentiles of the finite values (where given): a few
    bright pixels at a scan's edge would otherwise turn the whole image black."""
    chosen = values[np.isfinite(values) & (True if where is None else where)]
    if chosen.size == 0:
        return {}
    low, high = np.percentile(chosen, [0.5, 99.5])
    return {"vmin": float(low), "vmax": float(high)} if high > low else {}


def _show(axis, image, title, cmap="gray", **kwargs):
    shown = axis.imshow(image, cmap=cmap, **kwargs)
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)


def loss_curves(history: list[dict[str, float]], path: str | Path, title: str) -> None:
    """Training and validation loss per epoch, and the learning rate (log scale), from the history rows."""
    figure, axes = _figure(1, 2, (9.0, 3.4))
    epochs = [row["epoch"] for row in history]
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        values = [row.get(key, np.nan) for row in history]
        axes[0, 0].plot(epochs, values, marker=".", label=label)
    best = min(range(len(history)), key=lambda i: history[i].get("val_loss", np.inf)) if history else None
    if best is not None and np.isfinite(history[best].get("val_loss", np.nan)):
        axes[0, 0].axvline(epochs[best], color="gray", linestyle=":", label=f"best (epoch {epochs[best]:g})")
    axes[0, 0].set_xlabel("epoch")
    axes[0, 0].set_ylabel("Poisson NLL per pattern (offset dropped)")
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title(title, fontsize=9)
    axes[0, 1].semilogy(epochs, [row.get("learning_rate", np.nan) for row in history], marker=".")
    axes[0, 1].set_xlabel("epoch")
    axes[0, 1].set_ylabel("learning rate at epoch end")
    figure.tight_layout()
    _save(figure, path)


def dataset_preview(dataset: PtychoDataset, path: str | Path, title: str) -> None:
    """Object amplitude and phase (if known), probe amplitude, scan positions, one pattern (log)."""
    figure, (axes,) = _figure(1, 5, (20, 4))
    if dataset.object is not None:
        _show(axes[0], np.abs(dataset.object), "object amplitude")
        _show(axes[1], np.angle(dataset.object), "object phase (rad)", cmap="twilight")
    else:
        for axis in axes[:2]:
            axis.text(0.5, 0.5, "no ground-truth object", ha="center", va="center")
            axis.set_axis_off()
    _show(axes[2], np.abs(dataset.probe), "probe amplitude", cmap="magma")
    axes[3].plot(dataset.xcoords, dataset.ycoords, ".", markersize=2)
    axes[3].set_aspect("equal")
    axes[3].invert_yaxis()  # rows grow downwards, as in the images
    axes[3].set_title(f"{dataset.n_patterns} scan positions (x = column, y = row)", fontsize=9)
    pattern = dataset.amplitudes[dataset.n_patterns // 2].astype(np.float64) ** 2
    _show(axes[4], np.log10(pattern + 1.0), "pattern, log10(counts + 1)", cmap="viridis")
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def reconstruction_figure(reconstruction, path: str | Path, title: str) -> None:
    """Amplitude and phase of a stitched reconstruction, in input coordinates, and its coverage."""
    x0, y0 = reconstruction.origin
    height, width = reconstruction.object.shape
    extent = (x0 - 0.5, x0 + width - 0.5, y0 + height - 0.5, y0 - 0.5)
    covered = reconstruction.coverage > 0
    figure, (axes,) = _figure(1, 3, (15, 4.5))
    amplitude = np.where(covered, np.abs(reconstruction.object), np.nan)
    _show(axes[0], amplitude, "amplitude (0.5-99.5 % range)", extent=extent, **_robust_limits(amplitude))
    _show(axes[1], np.where(covered, np.angle(reconstruction.object), np.nan), "phase (rad)", cmap="twilight", extent=extent)
    _show(axes[2], reconstruction.coverage, "coverage (summed weights)", cmap="viridis", extent=extent)
    for axis in axes:
        axis.set_xticks(np.linspace(x0, x0 + width - 1, 3).round())
        axis.set_yticks(np.linspace(y0, y0 + height - 1, 3).round())
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def comparison_figure(truth, reconstructions: dict, path: str | Path) -> None:
    """Truth, each reconstruction and its difference from the truth, amplitude and phase rows.

    Reconstructions are shown after removing the global phase offset and amplitude scale
    against the truth (when there is one), fitted on their scanned region.
    """
    columns = ([("truth", truth)] if truth is not None else []) + [(name, rec.object) for name, rec in reconstructions.items()]
    if truth is not None:
        columns += [(f"{name} - truth", None) for name in reconstructions]
    figure, axes = _figure(2, len(columns), (4.2 * len(columns), 8))
    for index, (name, image) in enumerate(columns):
        if image is None:
            rec = reconstructions[name.split(" - ")[0]]
            aligned = _roughly_aligned(rec.object, truth, rec.coverage)
            amplitude = np.abs(aligned) - np.abs(truth)
            phase = np.angle(aligned * np.conj(truth))
            cmap_amplitude, cmap_phase = "RdBu", "RdBu"
        else:
            if truth is not None and name != "truth":
                rec = reconstructions[name]
                image = _roughly_aligned(image, truth, rec.coverage)
            amplitude, phase = np.abs(image), np.angle(image)
            cmap_amplitude, cmap_phase = "gray", "twilight"
        covered = None if name == "truth" or image is None else reconstructions[name].coverage > 0
        limits = [_robust_limits(amplitude, covered), {}]
        if image is None:  # differences: a symmetric colour scale, so that white means zero
            limits = [{"vmin": -v, "vmax": v} for v in (np.nanpercentile(np.abs(d), 99) for d in (amplitude, phase))]
        _show(axes[0, index], amplitude, f"{name}: amplitude", cmap=cmap_amplitude, **limits[0])
        _show(axes[1, index], phase, f"{name}: phase (rad)", cmap=cmap_phase, **limits[1])
    figure.tight_layout()
    _save(figure, path)


def _roughly_aligned(image: np.ndarray, truth: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """The reconstruction with phase offset and amplitude scale fitted on its scanned region."""
    from ptycho import metrics  # only the comparison figure needs it (the stages that draw others do not)

    aligned, _ = metrics.align(image, truth, metrics.scanned_region(coverage))
    return np.where(coverage > 0, aligned, np.nan)  # uncovered pixels are not shown
