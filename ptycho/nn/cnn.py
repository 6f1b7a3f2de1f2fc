"""The PtychoPINN CNN (Hoidn et al., Sci Rep 2023), the project's reference architecture.

Encoder of Conv3x3-ReLU-Conv3x3-ReLU-MaxPool blocks down to an 8 x 8 bottleneck (widths 32,
64, 128, ... x ``n_filters_scale``), two decoders (amplitude, phase) of Conv-Conv-Upsample
blocks back up to N/2 (or to N when the predicted window is wider than N/2), Glorot-uniform
initialisation. No attention block (it collapses at N = 128).

Any even N: L = round(log2 N) - 3 poolings need a side divisible by 2**L, so the input is
zero-padded (beyond the detector edge: no signal) to the next multiple of 2**L and the maps
are cropped back to N/2 (or N), aligned on the same pixels. Padding rather than fewer
poolings keeps the network, and so the bundle's weights, the same as before for every N
that was already a multiple of 2**L (16, 32, 64, 128, ...), where nothing is padded.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_pair(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(),
    ]


def cnn_levels(size: int) -> int:
    """Poolings of the encoder: round(log2 N) - 3 (down to a bottleneck of about 8 x 8)."""
    return int(round(math.log2(size))) - 3


def cnn_widths(size: int, n_filters_scale: float) -> list[int]:
    """Encoder widths 32, 64, 128, ... x n_filters_scale (at least 4), one per level down to 8 x 8."""
    return [max(4, int(round(32 * 2**level * n_filters_scale))) for level in range(cnn_levels(size))]


def padding_to_multiple(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) zero padding that makes an even `size` a multiple of `multiple` (a power of 2).

    `before` is even, so a map at half resolution starts at pixel before/2 of the padded one.
    """
    total = -size % multiple
    before = (total // 2) & ~1
    return before, total - before


def _decoder(widths: list[int], out_channels: int, full_resolution: bool) -> nn.Sequential:
    """Conv-Conv-Upsample blocks from the bottleneck up to N/2 (or N), then a 3x3 head."""
    layers: list[nn.Module] = []
    reversed_widths = widths[::-1]  # e.g. 128, 64, 32
    in_channels = reversed_widths[0]
    for width in reversed_widths[:-1]:  # levels - 1 upsamplings: N/8 -> N/2 for N = 64
        layers += conv_pair(in_channels, width) + [nn.Upsample(scale_factor=2, mode="nearest")]
        in_channels = width
    if full_resolution:  # one more: N/2 -> N, for windows wider than N/2
        layers += conv_pair(in_channels, reversed_widths[-1]) + [nn.Upsample(scale_factor=2, mode="nearest")]
        in_channels = reversed_widths[-1]
    layers += conv_pair(in_channels, reversed_widths[-1])
    layers.append(nn.Conv2d(reversed_widths[-1], out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """(B, C, N, N) normalised input -> raw amplitude and phase maps, each (B, C, S, S).

    S = N/2 when ``full_resolution`` is False (the window is N/2), else N.
    """

    def __init__(self, size: int, channels: int, n_filters_scale: float, full_resolution: bool, in_channels: int | None = None):
        super().__init__()
        if size < 16 or size % 2:
            raise ValueError(f"the CNN needs an even pattern size N >= 16, got {size}")
        widths = cnn_widths(size, n_filters_scale)
        self.size = size
        self.full_resolution = full_resolution
        self.padding = padding_to_multiple(size, 2 ** len(widths))
        layers: list[nn.Module] = []
        in_channels = in_channels or channels  # more than C: extra input planes (offset planes)
        for width in widths:
            layers += conv_pair(in_channels, width) + [nn.MaxPool2d(2)]
            in_channels = width
        self.encoder = nn.Sequential(*layers)
        self.amplitude_decoder = _decoder(widths, channels, full_resolution)
        self.phase_decoder = _decoder(widths, channels, full_resolution)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        before, after = self.padding
        if before or after:
            inputs = nn.functional.pad(inputs, (before, after, before, after))
        features = self.encoder(inputs)
        amplitude, phase = self.amplitude_decoder(features), self.phase_decoder(features)
        if before or after:  # back to the pixels of the unpadded input
            side = self.size if self.full_resolution else self.size // 2
            start = before if self.full_resolution else before // 2
            amplitude = amplitude[..., start : start + side, start : start + side]
            phase = phase[..., start : start + side, start : start + side]
        return amplitude, phase
