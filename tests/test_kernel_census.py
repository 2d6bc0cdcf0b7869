"""What the Triton kernels would cost a GPU, measured without one (cbam_det.kernels.census):
grids at detection shapes and passes over memory counted in the interpreter. (Every
specialization the interpreter tests launch is compiled ahead of time at the end of
tests/test_backends.py.)"""

import pytest

from cbam_det.kernels import census
from cbam_det.kernels import triton_gate as T

SMS = T.DEFAULT_SMS  # an H200
DETECTION_SHAPES = (
    [s for n in (1, 2, 8) for s in census.resnet50_stages(n, 800, 1344)]  # Faster R-CNN, every ResNet-50 stage
    + census.cspdarknet_s_stages(8, 640, 640)  # YOLOX-S
)


@pytest.mark.parametrize('kind', census.KINDS)
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
def test_every_full_size_launch_has_two_programs_per_sm(kind, channels_last):
    """Recorded on meta tensors: the grids a GPU gets, at every detection shape of the issue."""
    low = []
    for shape in DETECTION_SHAPES:
        for train in (True, False):
            for launch in census.module_launches(kind, shape, channels_last=channels_last, train=train):
                if launch.shape is not None and launch.programs < 2 * SMS:
                    low.append((launch.kernel, shape, launch.grid))
    assert not low, f'{len(low)} launches below 2 programs per SM, e.g. {low[:5]}'


def test_grids_are_read_from_the_device_count():
    """The split factor follows the SM count: with few SMs the same tensor gets fewer programs."""
    shape = census.resnet50_stages(1, 800, 1344)[0]
    big = {launch.kernel: launch.programs for launch in census.module_launches('cbam_plugin', shape)}
    old = T.DEFAULT_SMS
    T.DEFAULT_SMS = 8
    try:
        small = {launch.kernel: launch.programs for launch in census.module_launches('cbam_plugin', shape)}
    finally:
        T.DEFAULT_SMS = old
    assert small['_channel_pool_kernel'] < big['_channel_pool_kernel']
    assert small['_channel_pool_kernel'] >= 2 * 8
    assert small['_apply_gates_kernel'] == big['_apply_gates_kernel']  # one tile per program either way


@pytest.mark.skipif(not T.INTERPRETED, reason="counting bytes needs Triton's interpreter")
def test_passes_per_step_are_within_the_floor_and_do_not_depend_on_the_shape():
    """Bytes each launch loads and stores of the full-size tensors, counted in the interpreter."""
    got = census.module_passes(shape=(2, 48, 13, 21))
    assert got == census.module_passes(shape=(1, 80, 9, 70))  # partial tiles, other splits: same passes
    limits = {
        'cbam_plugin': (10, 4),
        'cbam_fused': (12, 4),
        'se_plugin': (7, 3),
        'se_fused': (8, 3),
        'bam': (5, 2),
    }
    for kind, (train, infer) in limits.items():
        assert got[kind]['train'] <= train and got[kind]['inference'] <= infer, (kind, got[kind])
    assert got['cbam_plugin'] == {'train': 10.0, 'inference': 4.0}  # exactly the algorithm's floor
