"""CPU thread budget of one training or testing process: torch threads × processes ≤ cores,
data-loading workers included, so that CPU runs never oversubscribe the machine (two busy
processes on two cores, each with two OpenMP threads, ran the CPU demo 8× slower).
"""

import os
from typing import Optional

import torch

from .. import config

__all__ = ['cpu_cores', 'thread_budget', 'set_cpu_threads']


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_budget(processes: int = 1, workers: int = 0, cores: Optional[int] = None) -> int:
    """Torch threads for each of ``processes`` processes with ``workers`` data-loading workers
    each (a worker runs one thread): ``max(1, cores // processes − workers)``."""
    if processes < 1 or workers < 0:
        raise ValueError(f'thread_budget: processes must be >= 1 and workers >= 0, got {processes}, {workers}')
    cores = cpu_cores() if cores is None else cores
    return max(1, cores // processes - workers)


def set_cpu_threads(workers: int = 0) -> Optional[int]:
    """Set torch's intra-op threads of this CPU process to :func:`thread_budget` (processes =
    ``LOCAL_WORLD_SIZE``, set by torchrun) and return it; None where a GPU runs the model or
    ``OMP_NUM_THREADS`` / ``CBAM_DET_THREADS`` already say (the latter wins)."""
    if torch.cuda.is_available():
        return None
    explicit = config.threads()
    if explicit is not None:
        n = explicit
    elif config.env('OMP_NUM_THREADS'):
        return None
    else:
        n = thread_budget(int(config.env('LOCAL_WORLD_SIZE', '1')), workers)
    torch.set_num_threads(n)
    return n
