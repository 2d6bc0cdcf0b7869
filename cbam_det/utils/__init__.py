"""Helpers shared by the tools and the tests: config rewrites and the synthetic demo data."""

from .config import ATTENTION_KEYS, has_attention, no_pretrained, strip_attention

__all__ = ['ATTENTION_KEYS', 'has_attention', 'no_pretrained', 'strip_attention']
