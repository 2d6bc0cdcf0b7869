"""ResNet stage 4 as the RoI head of a C4 Faster R-CNN, with attention in every block.

The CBAM paper's COCO detector (Table 6; Faster R-CNN after Chen & Gupta's implementation)
keeps ResNet's last stage in the RoI head; the network "with CBAM" has CBAM in every block,
so that stage carries it too. Names follow torchvision (``layer4.i.*``, attention at
``layer4.i.cbam``), so ``torchvision://resnetXX`` and converted official weights load.
"""

from typing import List, Optional

import torch
from mmdet.models.layers import ResLayer as _ResLayer
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..backbones._placement import (
    attention_position,
    block_attention_modules,
    inplace_by_default,
    keep_attention_norms_training,
    mark_frozen_attention,
)
from ..backbones.attn_resnet import AttnResNet

__all__ = ['AttnResLayer']


@MODELS.register_module()
class AttnResLayer(BaseModule):
    """mmdet's shared-head ``ResLayer`` with ``attention=dict(type=...)`` in every block.

    Built from :class:`AttnResNet`'s blocks, so the attention sits where the backbone puts
    it, is ``inplace`` by default and, with ``fuse_attention``, is fused with the block's
    last BatchNorm, exactly as in the backbone.

    Args:
        depth: ResNet depth (18/34/50/101/152).
        stage: index of the stage (3 = ``layer4``).
        base_channels: width of the backbone's first stage (64 for the standard ResNets);
            this stage has ``base_channels * 2**stage`` planes.
        attention: module placed after each block's last BN (None: plain ResLayer).
        freeze_attention: False (default) keeps the attention's BatchNorms training under
            ``norm_eval=True``; True lets ``norm_eval`` apply to them too.
        fuse_attention: compute each block's last BN and its attention (CBAM, SE) as one
            fused function where possible; same parameters and results.
        Other arguments as mmdet's ``ResLayer``.
    """

    def __init__(
        self,
        depth: int,
        stage: int = 3,
        stride: int = 2,
        dilation: int = 1,
        style: str = 'pytorch',
        norm_cfg: dict = dict(type='BN', requires_grad=True),
        norm_eval: bool = True,
        with_cp: bool = False,
        base_channels: int = 64,
        attention: Optional[dict] = None,
        freeze_attention: bool = False,
        fuse_attention: bool = True,
        init_cfg=None,
    ) -> None:
        super().__init__(init_cfg)
        if depth not in AttnResNet.arch_settings:
            raise KeyError(f'invalid depth {depth} for AttnResLayer; allowed: {sorted(AttnResNet.arch_settings)}')
        if not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f'AttnResLayer: base_channels must be a positive int, got {base_channels!r}')
        self.norm_eval = norm_eval
        self.stage = stage
        self.freeze_attention = freeze_attention
        block, stage_blocks = AttnResNet.arch_settings[depth]
        planes = base_channels * 2**stage
        inplanes = base_channels * 2 ** (stage - 1) * block.expansion
        plugins = None
        if attention is not None:
            plugins = [dict(cfg=inplace_by_default(attention), position=attention_position(block))]
        layer = _ResLayer(
            block,
            inplanes,
            planes,
            stage_blocks[stage],
            stride=stride,
            dilation=dilation,
            style=style,
            with_cp=with_cp,
            norm_cfg=norm_cfg,
            plugins=plugins,
        )
        for blk in layer:
            blk.fuse_attention = fuse_attention
        self.add_module(f'layer{stage + 1}', layer)
        mark_frozen_attention(self.attention_modules(), freeze_attention)
        if init_cfg is None:
            self.init_cfg = [
                dict(type='Kaiming', layer='Conv2d'),
                dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm']),
            ]

    def attention_modules(self) -> List[nn.Module]:
        """The attention module of every block."""
        return block_attention_modules(getattr(self, f'layer{self.stage + 1}'))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f'layer{self.stage + 1}')(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
            if not self.freeze_attention:
                keep_attention_norms_training(self.attention_modules())
        return self
