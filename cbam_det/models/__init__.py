"""Models of cbam_det; importing this registers them in mmdet's ``MODELS``."""
from .layers import CBAM, ChannelGate, SpatialGate

__all__ = ['CBAM', 'ChannelGate', 'SpatialGate']
