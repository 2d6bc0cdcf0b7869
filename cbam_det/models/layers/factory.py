"""Build an attention module from a string key or a config dict (timm ``create_attn`` style).

String keys are the modules' ``_abbr_`` (``base.ATTENTION_MODULES``): a new module subclassing
``AttentionModule`` with an ``_abbr_`` is a key here as soon as it is defined.
"""

from typing import Optional, Union

import torch.nn as nn
from mmdet.registry import MODELS

from .base import ATTENTION_MODULES

__all__ = ['build_attention']


def build_attention(attention: Union[None, str, dict], in_channels: int) -> Optional[nn.Module]:
    """``None`` → no module; ``'cbam'``/``'se'``/``'bam'`` (any registered ``_abbr_``) → defaults;
    a dict → ``MODELS.build``. A dict's ``type`` may be any registered module taking
    ``in_channels`` first.
    """
    if attention is None:
        return None
    if isinstance(attention, str):
        key = attention.lower()
        if key not in ATTENTION_MODULES:
            raise ValueError(
                f'unknown attention={attention!r}; allowed: None, '
                f'{", ".join(map(repr, sorted(ATTENTION_MODULES)))} or a dict(type=...)'
            )
        attention = dict(type=ATTENTION_MODULES[key].__name__)
    if not isinstance(attention, dict) or 'type' not in attention:
        raise ValueError(f'attention must be None, a string or a dict with "type", got {attention!r}')
    cfg = dict(attention)
    cfg['in_channels'] = in_channels
    return MODELS.build(cfg)
