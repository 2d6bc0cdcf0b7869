"""Attention layers (mmcv plugins, ``in_channels`` first) registered in mmdet's ``MODELS``."""

from ._utils import set_check_finite
from .bam import BAM, BAMChannelGate, BAMSpatialGate
from .base import ATTENTION_MODULES, AttentionModule
from .cbam import CBAM, ChannelGate, SpatialGate
from .factory import build_attention
from .se import SE

__all__ = [
    'AttentionModule',
    'CBAM',
    'ChannelGate',
    'SpatialGate',
    'SE',
    'BAM',
    'BAMChannelGate',
    'BAMSpatialGate',
    'ATTENTION_MODULES',
    'build_attention',
    'set_check_finite',
]
