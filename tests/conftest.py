import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r50w16-cbam_fpn_demo.py')


@pytest.fixture(autouse=True, scope='session')
def _mmdet_scope():
    """Build with mmdet's registries, as a runner with default_scope='mmdet' does."""
    from mmdet.utils import register_all_modules

    import cbam_det  # noqa: F401  (only registration)

    register_all_modules(init_default_scope=True)


@pytest.fixture(scope='session')
def tiny_demo_data(tmp_path_factory):
    """A tiny slice of the demo dataset (same generator, fewer and smaller images)."""
    from tools.misc.make_demo_data import generate

    root = tmp_path_factory.mktemp('demo_data')
    generate(str(root), num_train=8, num_val=4, size=(96, 96), seed=3)
    return str(root)


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
