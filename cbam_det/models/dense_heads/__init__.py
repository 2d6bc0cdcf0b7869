"""Dense heads with attention (SSD-style detectors of the papers' VOC 2007 experiments)."""

from .attn_ssd_head import AttnSSDHead

__all__ = ['AttnSSDHead']
