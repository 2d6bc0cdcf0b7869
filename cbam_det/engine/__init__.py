"""Runtime helpers for tools/train.py and tools/test.py."""

from .attention_keys import AttentionKeyCheckHook, attention_key_mismatch
from .cli import add_runner_options, build_runner, latest_checkpoint, load_config, parse_runner_args
from .cpu_dist import CPUDistributedDataParallel, setup_cpu_distributed
from .exact_resume import ExactResumeHook
from .safe_load import UnsafeCheckpointError, load_untrusted, use_safe_checkpoint_loading
from .threads import cpu_cores, set_cpu_threads, thread_budget

__all__ = [
    'AttentionKeyCheckHook',
    'attention_key_mismatch',
    'CPUDistributedDataParallel',
    'ExactResumeHook',
    'setup_cpu_distributed',
    'load_config',
    'build_runner',
    'add_runner_options',
    'parse_runner_args',
    'latest_checkpoint',
    'UnsafeCheckpointError',
    'load_untrusted',
    'use_safe_checkpoint_loading',
    'cpu_cores',
    'set_cpu_threads',
    'thread_budget',
]
