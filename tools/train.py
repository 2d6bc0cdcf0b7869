"""Train a detector; the same command line and behaviour as mmdet 3.3's tools/train.py.

python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr]
                      [--resume [CKPT]] [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]
"""

import argparse
import os.path as osp
import sys

from mmdet.utils import setup_cache_size_limit_of_dynamo

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a clone without install
import cbam_det  # noqa: E402,F401  (only registration: configs work without custom_imports)
from cbam_det.engine import (  # noqa: E402
    add_runner_options,
    build_runner,
    latest_checkpoint,
    load_config,
    parse_runner_args,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False, help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true', help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a value, from the latest one in work_dir',
    )
    add_runner_options(parser)
    return parse_runner_args(parser)


def main() -> None:
    args = parse_args()
    setup_cache_size_limit_of_dynamo()
    cfg = load_config(args)

    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP training is already enabled in the config.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'enable' in cfg.auto_scale_lr and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError(
                '--auto-scale-lr needs "auto_scale_lr" with "enable" and "base_batch_size" in the config'
            )

    if args.resume == 'auto':
        cfg.resume = True
        # the newest complete checkpoint, also where a kill left last_checkpoint empty or stale
        cfg.load_from = latest_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    runner = build_runner(cfg, args, 'train_dataloader')
    runner.train()


if __name__ == '__main__':
    main()
