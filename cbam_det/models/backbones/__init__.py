"""Backbones with attention (CBAM paper Fig. 3 placement; BAM between stages)."""

from . import mmdet_resnet  # noqa: F401  (only its effect: attention in mmdet's ResNet stays trainable)
from .attn_resnet import AttnResNet, AttnResNeXt, PluginBasicBlock

__all__ = ['AttnResNet', 'AttnResNeXt', 'PluginBasicBlock']
