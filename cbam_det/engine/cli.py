"""Config handling shared by tools/train.py and tools/test.py (mmdet 3.3 behaviour)."""

import argparse
import glob
import os.path as osp
import re
from typing import Optional

from mmengine.config import Config

__all__ = ['load_config', 'latest_checkpoint']


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
