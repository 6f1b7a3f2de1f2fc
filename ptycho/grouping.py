"""Neighbour grouping of scan positions for the gridsize > 1 overlap constraint (DESIGN.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from ptycho.errors import ConfigError


@dataclass(frozen=True)
class Groups:
    """C scan positions per group and their offsets from the group centre.

    indices: (G, C) int64 pattern indices; offsets_xy: (G, C, 2) float64 (dx, dy) in object
    pixels of each position from its group centre; centres_xy: (G, 2) the group centres.
    """

    indices: np.ndarray
    offsets_xy: np.ndarray
    centres_xy: np.ndarray

    @property
    def n_groups(self) -> int:
        return self.indices.shape[0]


def make_groups(
    xcoords: np.ndarray,
    ycoords: np.ndarray,
    gridsize: int,
    n_neighbours: int,
    rng: np.random.Generator,
) -> Groups:
    """One group per scan position: the seed plus C - 1 of its K nearest neighbours.

    C = gridsize**2. For gridsize 1 every group is one position with a zero offset. For
    gridsize > 1 each seed's K nearest neighbours (K = n_neighbours >= C, the seed included)
    are looked up and C - 1 of the K - 1 others are chosen at random with ``rng``, so groups
    are reproducible for a given seed. Offsets are taken from the mean position of the group.
    """
    channels = gridsize * gridsize
    positions = np.stack([np.asarray(xcoords, float), np.asarray(ycoords, float)], axis=1)
    n_positions = positions.shape[0]
    if gridsize == 1:
        indices = np.arange(n_positions, dtype=np.int64)[:, None]
    else:
        if n_neighbours < channels:
            raise ConfigError(
                f"model.n_neighbours: must be >= gridsize**2 = {channels}, got {n_neighbours}"
            )
        if n_positions < channels:
            raise ConfigError(
                f"model.gridsize: {gridsize} needs at least {channels} scan positions, "
                f"the data have {n_positions}"
            )
        k = min(n_neighbours, n_positions)
        _, neighbours = cKDTree(positions).query(positions, k=k)
        indices = np.empty((n_positions, channels), dtype=np.int64)
        for seed in range(n_positions):
            others = neighbours[seed, 1:]
            chosen = rng.choice(others, size=channels - 1, replace=False)
            indices[seed] = np.concatenate(([neighbours[seed, 0]], np.sort(chosen)))
    grouped = positions[indices]
    centres = grouped.mean(axis=1)
    return Groups(indices=indices, offsets_xy=grouped - centres[:, None, :], centres_xy=centres)


def grouped_tensors(
    amplitudes: np.ndarray, groups: Groups, selection: np.ndarray | slice = slice(None)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitudes (G, C, N, N) float32 and offsets (G, C, 2) float32 of the selected groups."""
    return (
        torch.from_numpy(np.ascontiguousarray(amplitudes[groups.indices[selection]], dtype=np.float32)),
        torch.from_numpy(groups.offsets_xy[selection].astype(np.float32)),
    )
