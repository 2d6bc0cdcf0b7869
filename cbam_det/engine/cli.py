"""Config and runner set-up shared by tools/train.py and tools/test.py (mmdet 3.3 behaviour)."""

import argparse
import glob
import os.path as osp
import re
from typing import Optional

from mmengine.config import Config

__all__ = ['add_runner_options', 'parse_runner_args', 'load_config', 'latest_checkpoint', 'build_runner']


def add_runner_options(parser: argparse.ArgumentParser) -> None:
    """The options train.py and test.py share (mmdet 3.3's names), added after their own."""
    from mmengine.config import DictAction

    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value (e.g. train_cfg.max_iters=10)',
    )
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    parser.add_argument(
        '--unsafe-load',
        action='store_true',
        help='unpickle checkpoints from outside the work_dir (load_from, Pretrained init) without '
        'weights_only=True: only for files you trust, it can run code',
    )
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_runner_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line; ``LOCAL_RANK`` from ``--local-rank`` where the launcher did not set it."""
    from .. import config

    args = parser.parse_args()
    config.setdefault_env('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace) -> Config:
    """Read ``args.config``, merge ``--cfg-options``, set the launcher and the work_dir.

    work_dir priority, as in mmdet: ``--work-dir`` > the config's ``work_dir`` >
    ``./work_dirs/<config file name>``.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: the one ``last_checkpoint`` names if that file
    exists, else the newest complete ``iter_N.pth`` / ``epoch_N.pth`` (a kill can leave
    ``last_checkpoint`` empty or stale); None when there is none."""
    named = ''
    if osp.isfile(osp.join(work_dir, 'last_checkpoint')):
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            named = f.read().strip()
    if named and osp.isfile(named):
        return named
    found = []
    for path in glob.glob(osp.join(work_dir, '*.pth')):
        m = re.fullmatch(r'(iter|epoch)_(\d+)\.pth', osp.basename(path))
        if m:
            found.append((int(m.group(2)), path))
    return max(found)[1] if found else None


def build_runner(cfg: Config, args: argparse.Namespace, dataloader: str):
    """mmengine's runner for ``cfg``, as train.py and test.py build it: checkpoints from elsewhere
    load with ``weights_only=True`` (the run's own work_dir is trusted; ``--unsafe-load``
    lifts it), CPU processes get a gloo process group, torch threads × processes stay within
    the cores (``dataloader``'s workers included), and a checkpoint with other attention is
    named by :class:`AttentionKeyCheckHook` instead of being half-loaded."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from .attention_keys import AttentionKeyCheckHook
    from .cpu_dist import setup_cpu_distributed
    from .safe_load import use_safe_checkpoint_loading
    from .threads import set_cpu_threads

    use_safe_checkpoint_loading(trusted_dirs=[cfg.work_dir], unsafe=args.unsafe_load)
    setup_cpu_distributed(cfg, args.launcher)
    set_cpu_threads(workers=cfg.get(dataloader, {}).get('num_workers', 0))
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.register_hook(AttentionKeyCheckHook())
    return runner
