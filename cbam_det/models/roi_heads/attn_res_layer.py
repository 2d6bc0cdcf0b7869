"""ResNet stage 4 as the RoI head of a C4 Faster R-CNN, with attention in every block.

The CBAM paper's COCO detector (Table 6; Faster R-CNN after Chen & Gupta's implementation)
keeps ResNet's last stage in the RoI head; the network "with CBAM" has CBAM in every block,
so that stage carries it too. Names follow torchvision (``layer4.i.*``, attention at
``layer4.i.cbam``), so ``torchvision://resnetXX`` and converted official weights load.
"""

from typing import Optional

import torch
from mmdet.models.backbones.resnet import BasicBlock
from mmdet.models.layers import ResLayer as _ResLayer
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from ..backbones.attn_resnet import AttnResNet

__all__ = ['AttnResLayer']


@MODELS.register_module()
class AttnResLayer(BaseModule):
    """mmdet's shared-head ``ResLayer`` with ``attention=dict(type=...)`` in every block.

    Args:
        depth: ResNet depth (18/34/50/101/152).
        stage: index of the stage (3 = ``layer4``).
        attention: module placed after each block's last BN (None: plain ResLayer).
        freeze_attention: False (default) keeps the attention's BatchNorms training under
            ``norm_eval=True``; True lets ``norm_eval`` apply to them too.
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
        attention: Optional[dict] = None,
        freeze_attention: bool = False,
        init_cfg=None,
    ) -> None:
        super().__init__(init_cfg)
        if depth not in AttnResNet.arch_settings:
            raise KeyError(f'invalid depth {depth} for AttnResLayer; allowed: {sorted(AttnResNet.arch_settings)}')
        self.norm_eval = norm_eval
        self.stage = stage
        self.freeze_attention = freeze_attention
        block, stage_blocks = AttnResNet.arch_settings[depth]
        planes = 64 * 2**stage
        inplanes = 64 * 2 ** (stage - 1) * block.expansion
        plugins = None
        if attention is not None:
            position = 'after_conv2' if issubclass(block, BasicBlock) else 'after_conv3'
            plugins = [dict(cfg=attention, position=position)]
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
        self.add_module(f'layer{stage + 1}', layer)
        self.attention_names = []
        for blk in layer:
            for pos in ('after_conv1', 'after_conv2', 'after_conv3'):
                self.attention_names += [n for n in getattr(blk, f'{pos}_plugin_names', [])]
        for m in self.attention_modules():
            m.allow_frozen = freeze_attention
        if init_cfg is None:
            self.init_cfg = [
                dict(type='Kaiming', layer='Conv2d'),
                dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm']),
            ]

    def attention_modules(self) -> list:
        layer = getattr(self, f'layer{self.stage + 1}')
        return [getattr(blk, n) for blk in layer for n in self.attention_names if hasattr(blk, n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f'layer{self.stage + 1}')(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            keep = set()
            if not self.freeze_attention:
                keep = {id(m) for att in self.attention_modules() for m in att.modules()}
            for m in self.modules():
                if isinstance(m, _BatchNorm) and id(m) not in keep:
                    m.eval()
        return self
