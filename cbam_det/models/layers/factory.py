"""Build an attention module from a string key or a config dict (timm ``create_attn`` style)."""

from typing import Optional, Union

import torch.nn as nn
from mmdet.registry import MODELS

__all__ = ['ATTENTION_TYPES', 'build_attention']

#: string keys accepted by :func:`build_attention` and the registered type they build
ATTENTION_TYPES = {'cbam': 'CBAM', 'se': 'SE', 'bam': 'BAM'}


def build_attention(attention: Union[None, str, dict], in_channels: int) -> Optional[nn.Module]:
    """``None`` → no module; ``'cbam'``/``'se'``/``'bam'`` → defaults; a dict → ``MODELS.build``.

    A dict's ``type`` may be any registered module taking ``in_channels`` first.
    """
    if attention is None:
        return None
    if isinstance(attention, str):
        key = attention.lower()
        if key not in ATTENTION_TYPES:
            raise ValueError(
                f'unknown attention={attention!r}; allowed: None, '
                f'{", ".join(map(repr, ATTENTION_TYPES))} or a dict(type=...)'
            )
        attention = dict(type=ATTENTION_TYPES[key])
    if not isinstance(attention, dict) or 'type' not in attention:
        raise ValueError(f'attention must be None, a string or a dict with "type", got {attention!r}')
    cfg = dict(attention)
    cfg['in_channels'] = in_channels
    return MODELS.build(cfg)
