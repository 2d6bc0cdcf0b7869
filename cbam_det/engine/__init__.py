"""Runtime helpers for tools/train.py and tools/test.py."""

from .cli import load_config
from .cpu_dist import CPUDistributedDataParallel, setup_cpu_distributed

__all__ = ['CPUDistributedDataParallel', 'setup_cpu_distributed', 'load_config']
