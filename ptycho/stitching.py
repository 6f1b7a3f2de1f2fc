"""Stitching predicted object patches into one object with overlap-weighted averaging.

The canvas frame: pixel [r, c] of the stitched object sits at x = x0 + c, y = y0 + r in the
object-pixel units of ``xcoords`` / ``ycoords`` (``origin = (x0, y0)``, integers). A patch
centred at (x, y) covers x - N/2 ... x + N/2 - 1 (DESIGN.md §2); sub-pixel positions are placed
with bilinear weights, the transpose of the bilinear sampling in ``physics.extract_patches``.

Two steps, so that phase synchronisation can look at every placed patch before anything is
summed: ``place`` puts patches on the integer canvas grid (boxes around the weighted support,
with their top-left canvas pixel), ``add`` sums placed boxes (optionally rotated by a phase)
into the canvas; ``add_weights`` and ``add_values`` do its two halves separately (inference
sums the weights while it predicts and the values once the phases are known).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ptycho import physics


def canvas_frame(xcoords: np.ndarray, ycoords: np.ndarray, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(origin (x0, y0), shape (H, W)) of the smallest integer canvas holding every N x N window."""
    x0 = math.floor(float(np.min(xcoords))) - size // 2
    y0 = math.floor(float(np.min(ycoords))) - size // 2
    width = math.floor(float(np.max(xcoords))) + size // 2 + 2 - x0
    height = math.floor(float(np.max(ycoords))) + size // 2 + 2 - y0
    return (x0, y0), (height, width)


def window_geometry(
    xcoords: np.ndarray, ycoords: np.ndarray, size: int, origin: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer N x N windows of window centres (P,) on a canvas at ``origin``, and their sub-pixel remainders.

    The one rounding rule for a window's integer centre: round half up, X = floor(x + 1/2).
    Returns (rows0 (P,) int64, cols0 (P,) int64, remainder_xy (P, 2) float64): the canvas
    pixel of each window's [0, 0] corner, rows0 = floor(y + 1/2) - N/2 - y0 (cols0 likewise),
    and (f_x, f_y) = (x, y) - floor((x, y) + 1/2), each in [-1/2, 1/2). Windows may leave the
    canvas; the caller checks.
    """
    x0, y0 = origin
    x = np.asarray(xcoords, dtype=np.float64)
    y = np.asarray(ycoords, dtype=np.float64)
    x_int, y_int = np.floor(x + 0.5), np.floor(y + 0.5)
    cols0 = x_int.astype(np.int64) - size // 2 - x0
    rows0 = y_int.astype(np.int64) - size // 2 - y0
    return rows0, cols0, np.stack((x - x_int, y - y_int), axis=-1)


@dataclass(frozen=True, eq=False)
class Placed:
    """Patches on the canvas grid: weighted values (P, h, w) complex64, their weights (P, h, w)
    float32, and each box's top-left canvas pixel ``corners`` (P, 2) int64 as (row, col)."""

    values: torch.Tensor
    weights: torch.Tensor
    corners: np.ndarray


class Stitcher:
    """Accumulates weighted patches on a canvas; ``result`` divides where coverage allows.

    support: (N, N) weights of the trusted part of a patch (the model's window times the
    probe intensity that lit each pixel).
    """

    def __init__(self, origin: tuple[int, int], shape: tuple[int, int], support: torch.Tensor):
        self.origin = origin
        self.shape = shape
        rows, cols = torch.nonzero(support > 0, as_tuple=True)
        # Crop to the support's bounding box plus one pixel for the sub-pixel spill-over.
        self.top, self.left = int(rows.min()), int(cols.min())
        self.box = (int(rows.max()) - self.top + 2, int(cols.max()) - self.left + 2)
        cropped = torch.zeros(self.box)
        cropped[:-1, :-1] = support[self.top : self.top + self.box[0] - 1, self.left : self.left + self.box[1] - 1]
        self.support = cropped
        self.size = support.shape[-1]
        self.numerator = torch.zeros(shape[0] * shape[1], dtype=torch.complex64)
        self.denominator = torch.zeros(shape[0] * shape[1], dtype=torch.float32)

    def place(self, patches: torch.Tensor, xcoords: torch.Tensor, ycoords: torch.Tensor) -> Placed:
        """Patches (P, N, N) complex centred at (xcoords, ycoords) (P,), weighted and on the canvas grid."""
        height, width = self.box
        cropped = torch.zeros(patches.shape[0], height, width, dtype=torch.complex64)
        cropped[:, :-1, :-1] = patches[:, self.top : self.top + height - 1, self.left : self.left + width - 1]
        x_floor, y_floor = torch.floor(xcoords), torch.floor(ycoords)
        fraction = torch.stack((xcoords - x_floor, ycoords - y_floor), dim=-1).to(torch.float32)
        weights = physics.translate(self.support.expand(patches.shape[0], height, width), fraction)
        values = physics.translate(cropped * self.support, fraction).to(torch.complex64)
        # canvas column of cropped pixel c: x_floor - N/2 + left + c - x0
        col0 = x_floor.long() - self.size // 2 + self.left - self.origin[0]
        row0 = y_floor.long() - self.size // 2 + self.top - self.origin[1]
        if row0.min() < 0 or col0.min() < 0 or row0.max() + height > self.shape[0] or col0.max() + width > self.shape[1]:
            raise ValueError("patch positions fall outside the stitching canvas")
        return Placed(values, weights, torch.stack((row0, col0), dim=-1).numpy())

    def add(self, placed: Placed, phases: torch.Tensor | None = None) -> None:
        """Sum placed patches into the canvas, each multiplied by exp(-1j phases) (P,) if given."""
        self.add_weights(placed)
        self.add_values(placed.values, placed.corners, phases)

    def _flat_index(self, corners: np.ndarray) -> torch.Tensor:
        """Flat canvas indices (P * h * w,) of the boxes with top-left pixels ``corners`` (P, 2)."""
        height, width = self.box
        corners = torch.from_numpy(np.ascontiguousarray(corners))
        flat = (corners[:, 0].view(-1, 1, 1) + torch.arange(height).view(1, -1, 1)) * self.shape[1] + (
            corners[:, 1].view(-1, 1, 1) + torch.arange(width).view(1, 1, -1)
        )
        return flat.reshape(-1)

    def add_weights(self, placed: Placed) -> None:
        """Sum the weights of placed patches into the denominator (it does not depend on their phases)."""
        self.denominator.index_add_(0, self._flat_index(placed.corners), placed.weights.reshape(-1))

    def add_values(self, values: torch.Tensor, corners: np.ndarray, phases: torch.Tensor | None = None) -> None:
        """Sum weighted patch values (P, h, w) at ``corners`` (P, 2) into the numerator, each
        multiplied by exp(-1j phases) (P,) if given. Sums run in the order of the patches, so
        the same patches added in one call or in several give the same canvas, bit for bit."""
        if phases is not None:
            values = values * torch.polar(torch.ones_like(phases), -phases).to(torch.complex64).view(-1, 1, 1)
        self.numerator.index_add_(0, self._flat_index(corners), values.reshape(-1))

    def result(self, min_weight: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """(object (H, W) complex64, coverage (H, W) float32): weighted mean, zero where uncovered."""
        covered = self.denominator > min_weight
        safe = torch.where(covered, self.denominator, torch.ones_like(self.denominator))
        merged = torch.where(covered, self.numerator / safe, torch.zeros_like(self.numerator))
        return merged.reshape(self.shape).numpy(), self.denominator.reshape(self.shape).numpy()
