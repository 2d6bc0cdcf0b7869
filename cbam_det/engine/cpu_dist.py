"""Distributed training on CPU (gloo) with mmengine 0.10.7's launchers.

mmengine's ``pytorch``/``slurm`` launchers call ``torch.cuda.set_device`` and its
runner gives ``MMDistributedDataParallel`` ``device_ids=[LOCAL_RANK]``; both fail
on a machine without a GPU. :func:`setup_cpu_distributed` is called by
``tools/train.py`` / ``tools/test.py`` before the runner is built: when there is no
GPU it initialises the default process group itself with gloo (the runner then
skips its own ``init_dist``) and selects :class:`CPUDistributedDataParallel`.
Processes are still started by torchrun or srun (``tools/dist_train.sh``).
"""

import subprocess
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from .. import config

__all__ = ['CPUDistributedDataParallel', 'setup_cpu_distributed']


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that accepts a module on CPU.

    mmengine's runner always passes ``device_ids=[LOCAL_RANK]``; torch's DDP refuses
    ``device_ids`` for CPU modules, where the only meaningful value is ``None``. For
    a module with any parameter on a GPU the arguments are passed unchanged.
    """

    def __init__(self, module: torch.nn.Module, device_ids=None, **kwargs) -> None:
        if all(p.device.type == 'cpu' for p in module.parameters()):
            device_ids = None
        super().__init__(module=module, device_ids=device_ids, **kwargs)


def _slurm_env() -> None:
    """Fill torch.distributed's env:// variables from SLURM's, as mmengine does for GPUs."""
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST') if config.env(k) is None]
    if missing:
        raise RuntimeError(f'--launcher slurm: {", ".join(missing)} not set; run the tool under srun')
    config.setdefault_env('RANK', config.env('SLURM_PROCID'))
    config.setdefault_env('WORLD_SIZE', config.env('SLURM_NTASKS'))
    config.setdefault_env('LOCAL_RANK', config.env('SLURM_LOCALID', '0'))
    if config.env('MASTER_ADDR') is None:
        nodes = config.env('SLURM_NODELIST')
        config.setdefault_env('MASTER_ADDR', subprocess.getoutput(f'scontrol show hostname {nodes} | head -n1'))
    config.setdefault_env('MASTER_PORT', '29500')


def setup_cpu_distributed(cfg: Config, launcher: str) -> bool:
    """Prepare a CPU-only distributed run; return True when it did so.

    Does nothing when ``launcher == 'none'`` or a GPU is available (mmengine's own
    path is used then). Raises for the ``mpi`` launcher, which is not supported on CPU.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher not in ('pytorch', 'slurm'):
        raise ValueError(f"launcher={launcher!r} is not supported without a GPU; use 'pytorch' or 'slurm'")
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = dict(env_cfg.get('dist_cfg', {}))
    dist_cfg['backend'] = 'gloo'
    env_cfg['dist_cfg'] = dist_cfg
    if launcher == 'slurm':
        _slurm_env()
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', timeout=timedelta(seconds=dist_cfg.get('timeout', 1800)))
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if wrapper.get('type', 'MMDistributedDataParallel') != 'MMDistributedDataParallel':
        raise ValueError(
            f'model_wrapper_cfg.type={wrapper["type"]!r} cannot run on CPU; '
            "leave it unset or use 'MMDistributedDataParallel'"
        )
    wrapper['type'] = 'CPUDistributedDataParallel'
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    return True
