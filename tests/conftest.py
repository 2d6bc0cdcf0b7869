"""Session fixtures: mmdet's registries in scope, and a tiny copy of the demo data.

Triton's interpreter is switched on (before anything imports triton) so that the ``triton``
backend's kernels run on CPU tensors; ``TRITON_INTERPRET=0`` keeps it off (on a GPU machine
the same tests then run the compiled kernels on CUDA tensors).
"""

import os

os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope='session')
def _mmdet_scope():
    """Build with mmdet's registries, as a runner with default_scope='mmdet' does."""
    import cbam_det  # noqa: F401  (only registration)

    if cbam_det.LAYERS_ONLY:  # CBAM_DET_LAYERS_ONLY=1 (the GPU check): no mmdet models to register
        return
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)


@pytest.fixture(scope='session')
def tiny_demo_data(tmp_path_factory):
    """A tiny slice of the demo dataset (same generator, fewer and smaller images)."""
    from cbam_det.utils.demo_data import generate

    root = tmp_path_factory.mktemp('demo_data')
    generate(str(root), num_train=8, num_val=4, size=(96, 96), seed=3)
    return str(root)
