"""CBAM: Convolutional Block Attention Module.

Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521 — Sec. 3, eq. (1)-(3):

    F'  = Mc(F) ⊗ F                                              (1)
    F'' = Ms(F') ⊗ F'
    Mc(F) = σ(MLP(AvgPool(F)) + MLP(MaxPool(F)))                  (2)
    Ms(F) = σ(f7×7([AvgPool_c(F); MaxPool_c(F)]))                 (3)

The parameter layout follows the authors' official implementation so that their
ImageNet weights can be converted: the shared MLP is Linear(C, C//r) → ReLU →
Linear(C//r, C), both with bias; the spatial conv has no bias and is followed by
BatchNorm2d(1) (eps 1e-5, momentum 0.01), then the sigmoid.

Hidden width: ``in_channels // reduction`` (floor, as the official code does);
a ratio that leaves 0 hidden channels is refused.
"""
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmdet.registry import MODELS

__all__ = ['CBAM', 'ChannelGate', 'SpatialGate', 'check_hidden_channels']


def check_hidden_channels(in_channels: int, reduction: int, owner: str) -> int:
    """Return ``in_channels // reduction``; raise a clear error when it is < 1."""
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f'{owner}: in_channels must be a positive int, got {in_channels!r}')
    if not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f'{owner}: reduction must be a positive int, got {reduction!r}')
    hidden = in_channels // reduction
    if hidden < 1:
        raise ValueError(
            f'{owner}: reduction={reduction} leaves 0 hidden channels for in_channels={in_channels} '
            f'(hidden = in_channels // reduction); allowed: 1 <= reduction <= {in_channels}')
    return hidden


class ChannelGate(nn.Module):
    """Channel attention Mc (eq. 2): shared MLP over avg- and max-pooled descriptors."""

    def __init__(self, in_channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = check_hidden_channels(in_channels, reduction, 'CBAM')
        self.fc1 = nn.Linear(in_channels, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, in_channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the gate σ(MLP(avg) + MLP(max)) of shape (N, C, 1, 1), in float32."""
        n = x.shape[0]
        # Pooled statistics in float32: an fp16 sum over H×W overflows under AMP.
        xf = x.float()
        desc = torch.cat([xf.mean((2, 3)), xf.amax((2, 3))], 0)  # (2N, C): one MLP call
        with torch.autocast(x.device.type, enabled=False):
            out = self.fc2(F.relu(self.fc1(desc.to(self.fc1.weight.dtype))))
        return torch.sigmoid(out[:n] + out[n:]).float()[:, :, None, None]


class SpatialGate(nn.Module):
    """Spatial attention Ms (eq. 3): k×k conv over the [avg; max] channel-pooled maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'CBAM: spatial_kernel must be a positive odd int (e.g. 3 or 7), '
                             f'got {kernel_size!r}')
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the gate of shape (N, 1, H, W), in float32."""
        xf = x.float()
        desc = torch.cat([xf.mean(1, keepdim=True), xf.amax(1, keepdim=True)], 1)
        with torch.autocast(x.device.type, enabled=False):
            return torch.sigmoid(self.bn(self.conv(desc.to(self.conv.weight.dtype))))


@MODELS.register_module()
class CBAM(BaseModule):
    """Convolutional Block Attention Module (channel gate, then spatial gate).

    An mmcv plugin: usable in mmdet's ResNet/ResNeXt as
    ``plugins=[dict(cfg=dict(type='CBAM'), stages=(True,) * 4, position='after_conv3')]``,
    which is the paper's Fig. 3 placement (after the block's last BN, before the
    residual addition).

    Args:
        in_channels: channels C of the refined feature map.
        reduction: MLP reduction ratio r (hidden width ``C // r``).
        spatial_kernel: odd kernel size of the spatial conv (paper: 7).
        init_cfg: mmengine initialisation config.
    """

    _abbr_ = 'cbam'

    def __init__(self,
                 in_channels: int,
                 reduction: int = 16,
                 spatial_kernel: int = 7,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.reduction = reduction
        self.channel_gate = ChannelGate(in_channels, reduction)
        self.spatial_gate = SpatialGate(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'CBAM: expected input of shape (N, in_channels={self.in_channels}, H, W), '
                             f'got {tuple(x.shape)}')
        x = x * self.channel_gate(x).to(x.dtype)
        return x * self.spatial_gate(x).to(x.dtype)

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, reduction={self.reduction}'
