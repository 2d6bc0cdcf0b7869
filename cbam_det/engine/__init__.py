"""Runtime helpers for tools/train.py and tools/test.py."""

from .cli import load_config
from .cpu_dist import CPUDistributedDataParallel, setup_cpu_distributed
from .safe_load import UnsafeCheckpointError, load_untrusted, use_safe_checkpoint_loading

__all__ = [
    'CPUDistributedDataParallel',
    'setup_cpu_distributed',
    'load_config',
    'UnsafeCheckpointError',
    'load_untrusted',
    'use_safe_checkpoint_loading',
]
