"""Paths and small helpers shared by the test modules (fixtures live in conftest.py)."""

import os.path as osp

__all__ = ['REPO', 'DEMO_CONFIG', 'demo_data_options']

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r50w16-cbam_fpn_demo.py')


def demo_data_options(root: str) -> list:
    """--cfg-options that point the demo config at another copy of the demo data."""
    root = root.rstrip('/') + '/'
    ann = root + 'annotations/instances_val.json'
    return [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}',
    ]
