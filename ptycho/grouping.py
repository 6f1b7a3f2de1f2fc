"""Neighbour grouping of scan positions for the gridsize > 1 overlap constraint (DESIGN.md §2).

Two layouts (``GROUPINGS``):

- ``random`` (the first design, kept for older bundles): the seed plus C - 1 of its K nearest
  positions chosen at random; about 20 layouts, so a channel has no fixed geometric meaning.
- ``canonical``: the seed plus the positions nearest to a fixed template of offsets in units of
  the scan step (``TEMPLATES``: 2 x 2 = seed, right, down, down-right; 3 x 3 = the seed at the
  centre, then its 8 neighbours row by row). Where a template target has no position within half
  a step (the scan's right or bottom edge), the template is mirrored along x and / or y, so channel c is always the position
  nearest to template offset c (up to that mirror), for rasters, spirals and random scans
  alike; the offsets themselves go to the network (``ptycho.model``), so jitter, spiral
  spacing and mirrored edges are seen, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from ptycho.errors import ConfigError

GROUPINGS = ("random", "canonical")

TEMPLATES = {
    2: np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float64),
    3: np.array([[0, 0]] + [[dx, dy] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0)], dtype=np.float64),
}
"""Template offsets (dx, dy) in scan steps, channel by channel; the seed is channel 0."""


def scan_step(positions: np.ndarray) -> float:
    """The scan step: the median distance from a position to its nearest neighbour (px)."""
    distances, _ = cKDTree(positions).query(positions, k=2)
    return float(np.median(distances[:, 1]))


def canonical_indices(positions: np.ndarray, gridsize: int) -> np.ndarray:
    """(M, C) indices: each position as the seed of its ``TEMPLATES[gridsize]`` group (module docstring)."""
    step = scan_step(positions)
    template = TEMPLATES[gridsize] * step
    tree = cKDTree(positions)
    k = min(len(positions), 4 * len(template))
    indices = np.empty((len(positions), len(template)), dtype=np.int64)
    mirrors = [np.array(m, dtype=np.float64) for m in ((1, 1), (-1, 1), (1, -1), (-1, -1))]
    for seed, position in enumerate(positions):
        best, best_error = None, np.inf
        for mirror in mirrors:  # the first mirror whose targets all have a position within half a step
            targets = position + template * mirror
            _, near = tree.query(targets, k=k)
            chosen, error = [seed], 0.0
            for target, candidates in zip(targets[1:], near[1:]):
                pick = next(int(c) for c in candidates if c not in chosen)
                chosen.append(pick)
                error = max(error, float(np.hypot(*(positions[pick] - target))))
            if error < best_error - 1e-9:
                best, best_error = chosen, error
            if error <= 0.5 * step:
                break
        indices[seed] = best
    return indices


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
    layout: str = "random",
) -> Groups:
    """One group per scan position, the seed first: with ``layout`` "canonical" its template group
    (module docstring; gridsize 2 or 3, ``n_neighbours`` and ``rng`` unused), with "random" the
    seed plus C - 1 of its K nearest neighbours.

    C = gridsize**2. For gridsize 1 every group is one position with a zero offset. For
    gridsize > 1 each seed's K nearest neighbours (K = n_neighbours >= C, the seed included)
    are looked up and C - 1 of the K - 1 others are chosen at random with ``rng``, so groups
    are reproducible for a given seed. Offsets are taken from the mean position of the group.
    """
    channels = gridsize * gridsize
    positions = np.stack([np.asarray(xcoords, float), np.asarray(ycoords, float)], axis=1)
    n_positions = positions.shape[0]
    if layout not in GROUPINGS:
        raise ConfigError(f"model.grouping: allowed values are {list(GROUPINGS)}; got {layout!r}")
    if gridsize == 1:
        indices = np.arange(n_positions, dtype=np.int64)[:, None]
    elif layout == "canonical":
        if n_positions < channels:
            raise ConfigError(f"model.gridsize: {gridsize} needs at least {channels} scan positions, the data have {n_positions}")
        if gridsize not in TEMPLATES:
            raise ConfigError(f"model.gridsize: the canonical grouping has templates for {sorted(TEMPLATES)}, got {gridsize}")
        indices = canonical_indices(positions, gridsize)
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
