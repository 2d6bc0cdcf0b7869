"""Backbones with attention (CBAM paper Fig. 3 placement; BAM between stages)."""

from .attn_resnet import AttnResNet, AttnResNeXt, PluginBasicBlock

__all__ = ['AttnResNet', 'AttnResNeXt', 'PluginBasicBlock']
