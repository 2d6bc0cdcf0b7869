"""Session fixtures: mmdet's registries in scope, a tiny copy of the demo data, and seeds.

Triton's interpreter is switched on (before anything imports triton) so that the ``triton``
backend's kernels run on CPU tensors; ``TRITON_INTERPRET=0`` keeps it off (on a GPU machine
the same tests then run the compiled kernels on CUDA tensors).

Seeds: ``pytest --seed N`` (or ``CBAM_DET_TEST_SEED=N``; default 0) is the base of every seed
the tests use: torch, numpy and random are seeded before each test from it and the test's id
(so a test draws the same inputs whatever ran before it), and :func:`tests.numerics.seed` derives
the explicit seeds from it. Another ``--seed`` reruns the suite on other random data.
"""

import os
import random

os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

from . import numerics  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        '--seed',
        type=int,
        default=None,
        help="base seed of the tests' random inputs and weights (default: $CBAM_DET_TEST_SEED or 0)",
    )


def pytest_configure(config):
    value = config.getoption('--seed')
    if value is not None:  # numerics.seed() reads SEED at each call; subprocesses read the variable
        numerics.SEED = value
        os.environ['CBAM_DET_TEST_SEED'] = str(value)


def pytest_report_header(config):
    return f'cbam_det test seed: {numerics.SEED} (--seed N or CBAM_DET_TEST_SEED to change)'


@pytest.fixture(autouse=True)
def _seed_each_test(request):
    """torch, numpy and random seeded from the session seed and this test's id."""
    import numpy as np
    import torch

    s = numerics.seed_for(request.node.nodeid)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    yield


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
