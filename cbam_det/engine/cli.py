"""Config handling shared by tools/train.py and tools/test.py (mmdet 3.3 behaviour)."""

import argparse
import os.path as osp

from mmengine.config import Config

__all__ = ['load_config']


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
