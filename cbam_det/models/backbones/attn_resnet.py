"""ResNet / ResNeXt backbones with attention in every block (CBAM paper, Fig. 3) and BAM
between stages (BAM paper, Fig. 1), built on mmdet's ResNet.

- ``attention=dict(type='CBAM')`` puts the module in every block of the chosen stages,
  after the block's last BN and before the residual addition, for every depth: mmdet's
  ``BasicBlock`` (ResNet-18/34) refuses plugins, :class:`PluginBasicBlock` accepts them.
- ``bam=dict(type='BAM')`` puts BAM after stages 1, 2 and 3 (``bam1``..``bam3``), i.e.
  at the bottlenecks before each downsampling, as in the BAM paper; the stage outputs
  returned to the neck are the refined ones. In a 3-stage (C4) backbone ``bam3``
  refines the C4 feature that goes to the RPN and the RoI head.
- Parameter names are torchvision's (``conv1``, ``bn1``, ``layerL.i.convK/bnK``,
  ``layerL.i.downsample.0/1``), with the attention at ``layerL.i.cbam`` (or ``.se``) and
  ``bamK``: ``torchvision://resnetXX`` and converted official CBAM/BAM weights load unchanged.
- ``inplace=True`` is the default of the attention and BAM modules here (CBAM, SE, BAM):
  in inference they write into the tensor they refine, which nothing else reads.
- ``fuse_attention=True`` (default) computes each block's last BatchNorm and its attention
  as one fused function (CBAM, SE; float32 CPU tensors): the BN output is not stored for
  backward, so the attention costs almost no activation memory. Parameters, buffers and
  results are those of the unfused block.
- mmdet's ``frozen_stages`` and ``norm_eval`` would freeze attention that was added to
  a pretrained backbone at random init; with ``freeze_attention=False`` (default) the
  attention modules stay trainable and their BatchNorms keep updating statistics.
"""

from typing import List, Optional, Sequence

import torch
import torch.utils.checkpoint as cp
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.models.backbones.resnext import Bottleneck as ResNeXtBottleneck
from mmdet.models.backbones.resnext import ResNeXt
from mmdet.registry import MODELS
from torch import nn

from ..layers.factory import build_attention
from ._placement import (
    attention_position,
    block_attention_modules,
    inplace_by_default,
    mark_frozen_attention,
    with_allow_frozen,
)

__all__ = ['PluginBasicBlock', 'AttnBottleneck', 'AttnResNeXtBottleneck', 'AttnResNet', 'AttnResNeXt']


def norm_and_plugins(block: nn.Module, out: torch.Tensor, norm: nn.Module, names: List[str]) -> torch.Tensor:
    """``block.forward_plugin(norm(out), names)``, fused into one function when the block
    allows it (``fuse_attention``) and the single plugin supports it (``forward_with_bn``)."""
    if getattr(block, 'fuse_attention', False) and len(names) == 1:
        plugin = getattr(block, names[0])
        if hasattr(plugin, 'forward_with_bn'):
            return plugin.forward_with_bn(out, norm)
    return block.forward_plugin(norm(out), names)


class _FusedBottleneckForward:
    """mmdet's ``Bottleneck.forward`` with the last BN and the after_conv3 plugin fused."""

    fuse_attention = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:

        def _inner_forward(x):
            identity = x
            out = self.relu(self.norm1(self.conv1(x)))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv1_plugin_names)
            out = self.relu(self.norm2(self.conv2(out)))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv2_plugin_names)
            out = self.conv3(out)
            out = (
                norm_and_plugins(self, out, self.norm3, self.after_conv3_plugin_names)
                if self.with_plugins
                else self.norm3(out)
            )
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return out

        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(_inner_forward, x, use_reentrant=True)  # as mmdet's ResNet
        else:
            out = _inner_forward(x)
        return self.relu(out)


class AttnBottleneck(_FusedBottleneckForward, Bottleneck):
    """mmdet's ResNet ``Bottleneck``; with ``fuse_attention`` its bn3 + attention are fused."""


class AttnResNeXtBottleneck(_FusedBottleneckForward, ResNeXtBottleneck):
    """mmdet's ResNeXt ``Bottleneck``; with ``fuse_attention`` its bn3 + attention are fused."""


class PluginBasicBlock(BasicBlock):
    """mmdet's ``BasicBlock`` with mmcv plugins ``after_conv1`` and ``after_conv2``.

    ``after_conv2`` is after the block's last BN and before the residual addition; with
    ``fuse_attention`` that BN and the plugin are fused.
    """

    fuse_attention = False

    def __init__(self, inplanes: int, planes: int, *args, plugins: Optional[List[dict]] = None, **kwargs) -> None:
        super().__init__(inplanes, planes, *args, plugins=None, **kwargs)
        self.after_conv1_plugin_names: List[str] = []
        self.after_conv2_plugin_names: List[str] = []
        for plugin in plugins or []:
            position = plugin.get('position')
            if position not in ('after_conv1', 'after_conv2'):
                raise ValueError(
                    f'plugin position={position!r} in a BasicBlock (ResNet-18/34); allowed: '
                    "'after_conv1', 'after_conv2' (after the last BN, the paper's placement)"
                )
            names = Bottleneck.make_block_plugins(self, planes, [plugin['cfg']])
            getattr(self, f'{position}_plugin_names').extend(names)

    def forward_plugin(self, x: torch.Tensor, plugin_names: List[str]) -> torch.Tensor:
        for name in plugin_names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:

        def _inner_forward(x):
            identity = x
            out = self.relu(self.norm1(self.conv1(x)))
            out = self.forward_plugin(out, self.after_conv1_plugin_names)
            out = norm_and_plugins(self, self.conv2(out), self.norm2, self.after_conv2_plugin_names)
            if self.downsample is not None:
                identity = self.downsample(x)
            return out + identity

        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(_inner_forward, x, use_reentrant=True)  # as mmdet's ResNet
        else:
            out = _inner_forward(x)
        return self.relu(out)


class _AttentionMixin:
    """Shared by :class:`AttnResNet` and :class:`AttnResNeXt` (see the module docstring)."""

    def __init__(
        self,
        depth: int,
        *,
        attention: Optional[dict] = None,
        attention_stages: Sequence[bool] = (True, True, True, True),
        bam: Optional[dict] = None,
        bam_stages: Sequence[bool] = (True, True, True),
        freeze_attention: bool = False,
        fuse_attention: bool = True,
        plugins: Optional[list] = None,
        **kwargs,
    ) -> None:
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth} for {type(self).__name__}; allowed: {sorted(self.arch_settings)}')
        attention, bam = inplace_by_default(attention), inplace_by_default(bam)
        plugins = self._setup_attention(
            depth, attention, attention_stages, bam, bam_stages, freeze_attention, plugins, kwargs.get('num_stages', 4)
        )
        super().__init__(depth=depth, plugins=plugins, **kwargs)
        self._build_bam(bam, bam_stages)
        self.fuse_attention = fuse_attention
        for layer_name in self.res_layers:
            for block in getattr(self, layer_name):
                block.fuse_attention = fuse_attention
        mark_frozen_attention(self.attention_modules(), self.freeze_attention)
        self._freeze_stages()

    def _setup_attention(
        self,
        depth: int,
        attention: Optional[dict],
        attention_stages: Sequence[bool],
        bam: Optional[dict],
        bam_stages: Sequence[bool],
        freeze_attention: bool,
        plugins: Optional[list],
        num_stages: int,
    ) -> Optional[list]:
        self.freeze_attention = freeze_attention
        plugins = [dict(p, cfg=with_allow_frozen(p.get('cfg'), freeze_attention)) for p in plugins or []] or plugins
        if attention is None:
            return plugins
        if len(attention_stages) != num_stages:
            raise ValueError(
                f'attention_stages must have num_stages={num_stages} entries, got {tuple(attention_stages)}'
            )
        position = attention_position(self.arch_settings[depth][0])
        attention = with_allow_frozen(attention, freeze_attention)
        return list(plugins or []) + [dict(cfg=attention, stages=tuple(attention_stages), position=position)]

    def _build_bam(self, bam: Optional[dict], bam_stages: Sequence[bool]) -> None:
        self.bam_names: List[str] = []
        if bam is None:
            return
        # after stages 1..3 (never after stage 4); a 3-stage (C4) backbone ends with bam3
        n_bam = min(self.num_stages, 3)
        if len(bam_stages) != n_bam:
            raise ValueError(
                f'bam_stages must have min(num_stages, 3) = {n_bam} entries (BAM sits '
                f'after stages 1..3), got {tuple(bam_stages)}'
            )
        for i, on in enumerate(bam_stages):
            if on:
                channels = self.base_channels * 2**i * self.block.expansion
                self.add_module(f'bam{i + 1}', build_attention(bam, channels))
                self.bam_names.append(f'bam{i + 1}')

    def attention_modules(self) -> List[nn.Module]:
        """Every attention module: block plugins and BAM modules."""
        blocks = [block for layer_name in self.res_layers for block in getattr(self, layer_name)]
        return block_attention_modules(blocks) + [getattr(self, n) for n in self.bam_names]

    def forward(self, x: torch.Tensor) -> tuple:
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.norm1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if f'bam{i + 1}' in self.bam_names:
                x = getattr(self, f'bam{i + 1}')(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    # frozen_stages / norm_eval leave attention with allow_frozen=False (freeze_attention=False)
    # trainable: mmdet's ResNet._freeze_stages / train are wrapped for that (mmdet_resnet.py)

    def train(self, mode: bool = True):
        """mmdet's ``ResNet.train`` (freezing as in mmdet_resnet.py), returning the module as
        ``nn.Module.train`` does (mmdet's returns None)."""
        super().train(mode)
        return self


@MODELS.register_module()
class AttnResNet(_AttentionMixin, ResNet):
    """mmdet ``ResNet`` (depth 18/34/50/101/152) with attention in blocks and/or BAM.

    Args:
        depth: 18, 34, 50, 101 or 152.
        attention: config of a module placed in every block of ``attention_stages``
            after the last BN (e.g. ``dict(type='CBAM')``, ``dict(type='SE')``).
        attention_stages: stages that get ``attention``.
        bam: config of a module placed after stages 1..3 (``dict(type='BAM')``).
        bam_stages: which of those positions get ``bam`` (``min(num_stages, 3)`` entries).
        freeze_attention: False (default) keeps attention trainable and its BatchNorms in
            training mode whatever ``frozen_stages`` / ``norm_eval`` say; True lets them
            apply to the attention too (for converted official CBAM/BAM weights).
        fuse_attention: compute each block's last BN and its attention (CBAM, SE) as one
            fused function where possible (float32 CPU); same parameters and results.
        **kwargs: mmdet ``ResNet`` arguments (``plugins=`` also works for every depth).
    """

    arch_settings = {
        18: (PluginBasicBlock, (2, 2, 2, 2)),
        34: (PluginBasicBlock, (3, 4, 6, 3)),
        50: (AttnBottleneck, (3, 4, 6, 3)),
        101: (AttnBottleneck, (3, 4, 23, 3)),
        152: (AttnBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int, **kwargs) -> None:
        # mmdet zero-initialises the last BN (zero_init_residual) only for its own block
        # classes, and only without init_cfg / pretrained: do the same for ours
        self._zero_init_last_bn = (
            kwargs.get('zero_init_residual', True)
            and kwargs.get('init_cfg') is None
            and kwargs.get('pretrained') is None
        )
        super().__init__(depth, **kwargs)

    def init_weights(self) -> None:
        super().init_weights()
        if self._zero_init_last_bn:
            for layer_name in self.res_layers:
                for block in getattr(self, layer_name):
                    nn.init.zeros_(block.norm2.weight if isinstance(block, PluginBasicBlock) else block.norm3.weight)


@MODELS.register_module()
class AttnResNeXt(_AttentionMixin, ResNeXt):
    """mmdet ``ResNeXt`` (depth 50/101/152, ``groups``, ``base_width``) with attention and/or BAM.

    Same extra arguments as :class:`AttnResNet`.
    """

    arch_settings = {
        50: (AttnResNeXtBottleneck, (3, 4, 6, 3)),
        101: (AttnResNeXtBottleneck, (3, 4, 23, 3)),
        152: (AttnResNeXtBottleneck, (3, 8, 36, 3)),
    }
