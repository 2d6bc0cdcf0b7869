"""Necks: StairNet top-down aggregation for SSD-style detectors."""

from .stairnet import StairNetNeck

__all__ = ['StairNetNeck']
