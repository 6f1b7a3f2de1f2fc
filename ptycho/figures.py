"""PNG figures a person looks at (DESIGN.md §6). Matplotlib with the non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from ptycho.data import PtychoDataset  # noqa: E402


def _save(figure, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Fixed metadata keeps the PNG byte-identical for identical data (no needless DVC changes).
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def _show(axis, image, title, cmap="gray", **kwargs):
    shown = axis.imshow(image, cmap=cmap, **kwargs)
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    plt.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)


def dataset_preview(dataset: PtychoDataset, path: str | Path, title: str) -> None:
    """Object amplitude and phase (if known), probe amplitude, scan positions, one pattern (log)."""
    figure, axes = plt.subplots(1, 5, figsize=(20, 4))
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
