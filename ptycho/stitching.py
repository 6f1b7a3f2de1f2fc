"""Stitching predicted object patches into one object with overlap-weighted averaging.

The canvas frame: pixel [r, c] of the stitched object sits at x = x0 + c, y = y0 + r in the
object-pixel units of ``xcoords`` / ``ycoords`` (``origin = (x0, y0)``, integers). A patch
centred at (x, y) covers x - N/2 ... x + N/2 - 1 (DESIGN.md §2); sub-pixel positions are placed
with bilinear weights, the transpose of the bilinear sampling in ``physics.extract_patches``.
Patches are added batch by batch, so memory is the canvas plus one batch.
"""

from __future__ import annotations

import math

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


class Stitcher:
    """Accumulates weighted patches on a canvas; ``result`` divides where coverage allows.

    support: (N, N) weights of the trusted part of a patch (the model's central N/2 window).
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

    def _place(self, patches: torch.Tensor, xcoords: torch.Tensor, ycoords: torch.Tensor):
        """Flat canvas indices, weighted values and weights of patches (P, N, N) at (x, y) (P,)."""
        height, width = self.box
        cropped = torch.zeros(patches.shape[0], height, width, dtype=torch.complex64)
        cropped[:, :-1, :-1] = patches[:, self.top : self.top + height - 1, self.left : self.left + width - 1]
        x_floor, y_floor = torch.floor(xcoords), torch.floor(ycoords)
        fraction = torch.stack((xcoords - x_floor, ycoords - y_floor), dim=-1).to(torch.float32)
        weights = self.support.expand(patches.shape[0], height, width)
        shifted_values = physics.translate(cropped * self.support, fraction).to(torch.complex64)
        shifted_weights = physics.translate(weights, fraction)
        # canvas column of cropped pixel c: x_floor - N/2 + left + c - x0
        col0 = (x_floor.long() - self.size // 2 + self.left - self.origin[0]).view(-1, 1, 1)
        row0 = (y_floor.long() - self.size // 2 + self.top - self.origin[1]).view(-1, 1, 1)
        rows = row0 + torch.arange(height).view(1, -1, 1)
        cols = col0 + torch.arange(width).view(1, 1, -1)
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= self.shape[0] or cols.max() >= self.shape[1]:
            raise ValueError("patch positions fall outside the stitching canvas")
        return rows * self.shape[1] + cols, shifted_values, shifted_weights

    def add(self, patches: torch.Tensor, xcoords: torch.Tensor, ycoords: torch.Tensor) -> None:
        """Add patches (P, N, N) complex centred at (xcoords, ycoords) (P,)."""
        flat, values, weights = self._place(patches, xcoords, ycoords)
        self.numerator.index_add_(0, flat.reshape(-1), values.reshape(-1))
        self.denominator.index_add_(0, flat.reshape(-1), weights.reshape(-1))

    def rephase(
        self, patches: torch.Tensor, xcoords: torch.Tensor, ycoords: torch.Tensor, current_phase: torch.Tensor
    ) -> torch.Tensor:
        """Re-align the phase of patches already added with phases ``current_phase`` (P,).

        A far-field pattern does not fix the constant phase of its object patch, so each
        predicted patch carries an arbitrary phase offset. The new offset of each patch is the
        phase that best matches it to the weighted mean of the *other* patches on the canvas,
        angle(sum(mean_others * conj(w * patch))); patches with no overlap keep their phase.
        The canvas is updated in place (Gauss-Seidel), and the new phases (P,) are returned.
        """
        flat, values, _ = self._place(patches, xcoords, ycoords)
        own = values * torch.exp(1j * current_phase.to(torch.float32)).view(-1, 1, 1)
        others = self.numerator[flat] - own
        denominator = torch.clamp(self.denominator[flat], min=1e-3)
        match = (others / denominator * values.conj()).sum(dim=(-2, -1))
        strength = (values.abs() ** 2).sum(dim=(-2, -1))
        overlapping = match.abs() > 1e-3 * strength
        new_phase = torch.where(overlapping, torch.angle(match), current_phase.to(torch.float32))
        change = values * torch.exp(1j * new_phase).view(-1, 1, 1) - own
        self.numerator.index_add_(0, flat.reshape(-1), change.reshape(-1))
        return new_phase

    def result(self, min_weight: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """(object (H, W) complex64, coverage (H, W) float32): weighted mean, zero where uncovered."""
        covered = self.denominator > min_weight
        safe = torch.where(covered, self.denominator, torch.ones_like(self.denominator))
        merged = torch.where(covered, self.numerator / safe, torch.zeros_like(self.numerator))
        return merged.reshape(self.shape).numpy(), self.denominator.reshape(self.shape).numpy()
