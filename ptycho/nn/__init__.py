"""Network architectures (backbones) of the PINN, by name (``model.architecture`` in params.yaml).

A backbone maps the normalised diffraction input (B, C, N, N) to raw amplitude and phase maps,
each (B, C, S, S) with S = N/2 or N; ``ptycho.model.DiffractionToObject`` adds the heads, the
predicted window and the overlap constraint, so every backbone shares one physics wrapper.
"""

from __future__ import annotations

from torch import nn

from ptycho.nn.cnn import CNN

NAMES = ("cnn",)


def build_backbone(name: str, size: int, channels: int, n_filters_scale: float, full_resolution: bool) -> nn.Module:
    """The backbone called ``name`` for patterns of N = ``size`` and C = ``channels``."""
    if name == "cnn":
        return CNN(size, channels, n_filters_scale, full_resolution)
    raise ValueError(f"unknown architecture {name!r}; known: {list(NAMES)}")
