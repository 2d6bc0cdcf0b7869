"""Attention layers (mmcv plugins) registered in mmdet's ``MODELS``."""
from .cbam import CBAM, ChannelGate, SpatialGate

__all__ = ['CBAM', 'ChannelGate', 'SpatialGate']
