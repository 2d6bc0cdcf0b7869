"""RoI-head parts with attention (C4 shared head)."""

from .attn_res_layer import AttnResLayer

__all__ = ['AttnResLayer']
