"""StairNet top-down neck for SSD-style detectors.

Woo, Hwang, Kweon, "StairNet: Top-Down Semantic Aggregation for Accurate One Shot
Detection", WACV 2018, https://arxiv.org/abs/1709.05788.

Design used here (what the paper fixes: top-down order from the deepest level, up-sampling
of the global feature by deconvolution, element-wise sum with the local feature, a 3×3
conv afterwards; what it leaves open and we chose: the kernel of the deconvolution, how
odd sizes are matched, the lateral projection and the channel widths):

    p_L = ReLU(BN(conv3×3(lateral_L(c_L))))                               (deepest level)
    p_i = ReLU(BN(conv3×3(lateral_i(c_i) + match(deconv_i(p_{i+1}), c_i))))  i = L-1 .. 0

- ``lateral_i``: 1×1 conv + BN projecting the local feature ``c_i`` to ``out_channels[i]``.
- ``deconv_i``: ConvTranspose2d(out_channels[i+1] → out_channels[i], 3×3, stride 2,
  padding 1, output padding 1) + BN, i.e. exactly ×2 up-sampling; ``match`` crops its
  output when it is larger than ``c_i`` (SSD300: 20 → 19) and resizes it bilinearly when
  smaller (SSD300: 1 → 2 → 3). The 3×3 kernel puts StairNet VGG16 at 31.9M parameters
  (paper: 32.0M; a 4×4 kernel gives 34.2M).
- ``out_channels`` defaults to ``in_channels``, so the SSD head keeps its channel counts.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import nn

__all__ = ['StairNetNeck']


@MODELS.register_module()
class StairNetNeck(BaseModule):
    """Top-down semantic aggregation over an SSD feature pyramid (see module docstring).

    Args:
        in_channels: channels of each input level, finest first.
        out_channels: channels of each output level (default: ``in_channels``).
        norm_cfg: normalisation after every conv (paper: BatchNorm).
        act_cfg: activation after the 3×3 fusion convs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Optional[Sequence[int]] = None,
        norm_cfg: dict = dict(type='BN'),
        act_cfg: dict = dict(type='ReLU'),
        init_cfg=dict(type='Xavier', layer=['Conv2d', 'ConvTranspose2d'], distribution='uniform'),
    ) -> None:
        super().__init__(init_cfg)
        out_channels = tuple(in_channels if out_channels is None else out_channels)
        if len(out_channels) != len(in_channels) or len(in_channels) < 2:
            raise ValueError(
                f'StairNetNeck: in_channels and out_channels need the same length >= 2, '
                f'got {tuple(in_channels)} and {out_channels}'
            )
        self.in_channels, self.out_channels = tuple(in_channels), out_channels
        self.laterals = nn.ModuleList(
            ConvModule(ci, co, 1, norm_cfg=norm_cfg, act_cfg=None) for ci, co in zip(in_channels, out_channels)
        )
        self.deconvs = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(
                    out_channels[i + 1], out_channels[i], 3, stride=2, padding=1, output_padding=1, bias=False
                ),
                build_norm_layer(norm_cfg, out_channels[i])[1] if norm_cfg else nn.Identity(),
            )
            for i in range(len(out_channels) - 1)
        )
        self.fuse = nn.ModuleList(
            ConvModule(c, c, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg) for c in out_channels
        )

    @staticmethod
    def match(up: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Crop (larger) or bilinearly resize (smaller) the up-sampled map to ``size``."""
        h, w = size
        if up.shape[2] >= h and up.shape[3] >= w:
            return up[:, :, :h, :w]
        return F.interpolate(up, size=size, mode='bilinear', align_corners=False)

    def forward(self, inputs: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'StairNetNeck: expected {len(self.in_channels)} levels, got {len(inputs)}')
        for i, (x, c) in enumerate(zip(inputs, self.in_channels)):
            if x.shape[1] != c:
                raise ValueError(f'StairNetNeck: level {i} has {x.shape[1]} channels, in_channels[{i}]={c}')
        outs: List[torch.Tensor] = [None] * len(inputs)
        top = len(inputs) - 1
        outs[top] = self.fuse[top](self.laterals[top](inputs[top]))
        for i in range(top - 1, -1, -1):
            up = self.match(self.deconvs[i](outs[i + 1]), inputs[i].shape[2:])
            outs[i] = self.fuse[i](self.laterals[i](inputs[i]) + up)
        return tuple(outs)
