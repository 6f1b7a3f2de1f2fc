"""Network architectures (backbones) of the PINN, by name (``model.backbone`` in params.yaml).

A backbone maps the normalised diffraction input (B, C, N, N) to raw amplitude and phase maps,
each (B, C, S, S) with S = N/2 or N; ``ptycho.model.DiffractionToObject`` adds the heads, the
predicted window and the overlap constraint, so every backbone shares one physics wrapper.

``ptycho.nn.unrolled`` is not a backbone: the learned sweeps that work on the stitched canvas after the
network (``model.unrolled_sweeps``), stored in the bundle with it.
"""

from __future__ import annotations

import torch
from torch import nn

from ptycho.nn.cnn import CNN
from ptycho.nn.unet import ProjectionUNet

NAMES = ("cnn", "projection_unet")


def build_backbone(
    name: str, size: int, channels: int, n_filters_scale: float, full_resolution: bool, *,
    probe: torch.Tensor, intensity_scale: float, probe_scale: float, extra_planes: int = 0,
) -> nn.Module:
    """The backbone called ``name`` for patterns of N = ``size`` and C = ``channels``.

    cnn: the PtychoPINN reference (maps of N/2, or N when ``full_resolution``).
    projection_unet: physics projection with the calibrated probe, then a U-Net (maps of N).
    ``extra_planes``: input planes besides the C patterns (the CNN only: the offset planes).
    """
    if extra_planes and name != "cnn":
        raise ValueError(f"extra input planes (model.offset_input: planes) need the cnn backbone, not {name!r}")
    if name == "cnn":
        return CNN(size, channels, n_filters_scale, full_resolution, in_channels=channels + extra_planes)
    if name == "projection_unet":
        return ProjectionUNet(size, channels, n_filters_scale, probe, intensity_scale, probe_scale)
    raise ValueError(f"unknown backbone {name!r}; known: {list(NAMES)}")
