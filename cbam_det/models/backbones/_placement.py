"""Where attention goes in a ResNet block and how it stays trainable (CBAM paper, Fig. 3).

The CBAM paper places the module after a block's last BatchNorm, before the residual
addition: mmdet's ``position='after_conv3'`` in a bottleneck, ``'after_conv2'`` in a basic
block. A backbone that adds attention to a pretrained network must keep it trainable where
mmdet's ``frozen_stages`` / ``norm_eval`` would freeze it at random init. Shared by
:class:`AttnResNet`, :class:`AttnResNeXt` and :class:`AttnResLayer`.
"""

import inspect
from typing import Iterable, List, Optional

from mmdet.models.backbones.resnet import BasicBlock
from mmdet.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    'attention_position',
    'inplace_by_default',
    'block_attention_modules',
    'mark_frozen_attention',
    'keep_attention_trainable',
    'keep_attention_norms_training',
]

_POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')


def attention_position(block: type) -> str:
    """The paper's position in ``block``: after its last BN, before the residual addition."""
    return 'after_conv2' if issubclass(block, BasicBlock) else 'after_conv3'


def inplace_by_default(cfg: Optional[dict]) -> Optional[dict]:
    """``cfg`` with ``inplace=True`` unless set: in these positions nothing else reads the
    tensor the attention refines, so inference can multiply into it (no allocation)."""
    if not isinstance(cfg, dict) or 'inplace' in cfg:
        return cfg
    cls = MODELS.get(cfg.get('type')) if isinstance(cfg.get('type'), str) else cfg.get('type')
    if cls is not None and 'inplace' in inspect.signature(cls).parameters:
        cfg = dict(cfg, inplace=True)
    return cfg


def block_attention_modules(blocks: Iterable[nn.Module]) -> List[nn.Module]:
    """The plugin modules of ``blocks`` (mmcv's ``after_convK_plugin_names``), in order."""
    return [
        getattr(block, name)
        for block in blocks
        for pos in _POSITIONS
        for name in getattr(block, f'{pos}_plugin_names', [])
    ]


def mark_frozen_attention(modules: Iterable[nn.Module], freeze_attention: bool) -> None:
    """With ``freeze_attention=True`` the attention follows frozen_stages / norm_eval on purpose."""
    for m in modules:
        m.allow_frozen = freeze_attention


def keep_attention_trainable(modules: Iterable[nn.Module], training: bool) -> None:
    """Undo ``frozen_stages`` for the attention: parameters trainable, mode as the model's."""
    for m in modules:
        m.train(training)
        for p in m.parameters():
            p.requires_grad = True


def keep_attention_norms_training(modules: Iterable[nn.Module]) -> None:
    """Undo ``norm_eval`` for the attention's own BatchNorms (their statistics keep updating)."""
    for att in modules:
        for m in att.modules():
            if isinstance(m, _BatchNorm):
                m.train()
