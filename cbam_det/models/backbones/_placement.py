"""Where attention goes in a ResNet block and how it stays trainable (CBAM paper, Fig. 3).

The CBAM paper places the module after a block's last BatchNorm, before the residual
addition: mmdet's ``position='after_conv3'`` in a bottleneck, ``'after_conv2'`` in a basic
block. A backbone that adds attention to a pretrained network must keep it trainable where
mmdet's ``frozen_stages`` / ``norm_eval`` would freeze it at random init: decided once per
module at build time; afterwards only the owner of the model freezes or unfreezes it
(teachers, EMA copies, fine-tuning), and ``train()`` only keeps the BatchNorms of attention
that trains at that moment in training mode. Shared by :class:`AttnResNet`,
:class:`AttnResNeXt`, :class:`AttnResLayer` and the wrapped mmdet ``ResNet``.
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
    'with_allow_frozen',
    'decided',
    'decide_trainable',
    'trains',
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


def with_allow_frozen(cfg: Optional[dict], freeze_attention: bool) -> Optional[dict]:
    """``cfg`` with ``allow_frozen=freeze_attention`` where it builds a cbam_det attention module, so
    that the build-time decision (mmdet's ``__init__`` freezes once) is made with the right flag."""
    if not isinstance(cfg, dict):
        return cfg
    cls = MODELS.get(cfg.get('type')) if isinstance(cfg.get('type'), str) else cfg.get('type')
    if cls is not None and 'allow_frozen' in inspect.signature(cls).parameters:
        cfg = dict(cfg, allow_frozen=freeze_attention)
    return cfg


def mark_frozen_attention(modules: Iterable[nn.Module], freeze_attention: bool) -> None:
    """With ``freeze_attention=True`` the attention follows frozen_stages / norm_eval on purpose; a
    module whose flag changes here is decided again (:func:`decide_trainable`) at the next freeze."""
    for m in modules:
        if m.allow_frozen != freeze_attention:
            m.allow_frozen = freeze_attention
            m._cbam_det_decided = False


def decided(m: nn.Module) -> bool:
    """Whether the build-time rule has been applied to the attention module ``m``."""
    return getattr(m, '_cbam_det_decided', False)


def decide_trainable(modules: Iterable[nn.Module]) -> List[nn.Module]:
    """The build-time rule, once per module: attention that mmdet's ``frozen_stages`` froze
    (``allow_frozen=False``) gets its parameters back to ``requires_grad=True``; returns those."""
    undone = []
    for m in modules:
        if decided(m):
            continue
        m._cbam_det_decided = True
        if m.allow_frozen:
            continue
        if not all(p.requires_grad for p in m.parameters()):
            undone.append(m)
            for p in m.parameters():
                p.requires_grad = True
    return undone


def trains(m: nn.Module) -> bool:
    """Attention that is trainable at this moment and not left to mmdet (``allow_frozen``)."""
    return not getattr(m, 'allow_frozen', False) and any(p.requires_grad for p in m.parameters())


def keep_attention_norms_training(modules: Iterable[nn.Module]) -> None:
    """Undo ``norm_eval`` for the attention's own BatchNorms (their statistics keep updating),
    for modules that are trainable at this moment (a frozen teacher's attention stays in eval)."""
    for att in modules:
        if not trains(att):
            continue
        for m in att.modules():
            if isinstance(m, _BatchNorm):
                m.train()
