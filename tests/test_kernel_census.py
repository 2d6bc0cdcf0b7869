"""What the Triton kernels would cost a GPU, measured without one (tools/analysis/census.py):
grids at detection shapes, every byte of a module step in passes, and the specializations a GPU
would compile for the shipped detection configs, compiled ahead of time for sm_80/90/100/120.
(The specializations the interpreter tests launch are compiled at the end of tests/test_backends.py.)"""

import os

import pytest
import torch

from cbam_det.kernels import launch as T

from .helpers import analysis_tool

census = analysis_tool('census')
kernel_compile = analysis_tool('kernel_compile')

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


def test_grids_follow_the_sm_count_passed_in():
    """The split factor follows the SM count (passed to the census, never set from outside):
    with few SMs the same tensor gets fewer programs."""
    shape = census.resnet50_stages(1, 800, 1344)[0]
    big = {launch.kernel: launch.programs for launch in census.module_launches('se_plugin', shape)}
    small = {launch.kernel: launch.programs for launch in census.module_launches('se_plugin', shape, sms=8)}
    assert small['_pool_kernel'] < big['_pool_kernel']
    assert small['_pool_kernel'] >= 2 * 8
    assert small['_apply_channel_kernel'] == big['_apply_channel_kernel']  # one tile per program either way
    assert T.DEFAULT_SMS == SMS


def test_torch_traffic_counts_each_argument_and_output_once():
    """The counter of PyTorch operations (what the kernels' partial sums, float64 copies and
    re-layouts cost): a float32→float64 copy reads 4 and writes 8 bytes an element, an
    in-place op reads and writes its tensor, views and allocations move nothing."""
    part = torch.ones(2, 5, 7)
    traffic = census.TorchTraffic()
    with traffic.counting():
        d = part.double()  # 70 × 4 read + 70 × 8 written
        v = d.view(2, 35)  # a view: nothing
        v.mul_(2.0)  # 70 × 8 read + 70 × 8 written
        torch.empty(1000)  # an allocation: nothing
        ones = torch.ones(1, 3, 4, 4)  # 48 × 4 written
        cl = ones.contiguous(memory_format=torch.channels_last)  # 48 × 4 read + 48 × 4 written
    assert traffic.bytes == 70 * 12 + 70 * 16 + 48 * 4 + 48 * 8
    assert cl.is_contiguous(memory_format=torch.channels_last)


# the limits of docs/performance.md ("Passes per module step"), in both layouts; BAM's gate only
# (its branches are ordinary layers, counted under torch)
LIMITS = {
    'cbam_plugin': (10.5, 4.2),
    'cbam_fused': (10.5, 4.2),
    'se_plugin': (7.5, 3.1),
    'se_fused': (8.1, 3.1),
}
FLOORS = {'cbam_plugin': (10, 4), 'cbam_fused': (10, 4), 'se_plugin': (7, 3), 'se_fused': (8, 3), 'bam': (5, 2)}


@pytest.mark.skipif(not T.INTERPRETED, reason="counting bytes needs Triton's interpreter")
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
def test_every_byte_of_a_step_is_counted_and_within_the_documented_passes(channels_last):
    """At ResNet-50's stage 1 of a Faster R-CNN step (2×256×200×336, bfloat16): the kernels move
    the algorithm's floor exactly, and with their small buffers (partial sums, the states, the
    gates) and every PyTorch operation of the step a step stays within the documented passes.
    CBAM's and SE's steps hold no PyTorch operation that moves data (the small graphs run in
    kernels too); BAM's branches are ordinary layers."""
    got = census.module_passes(channels_last=channels_last)
    for kind, (train, infer) in FLOORS.items():
        assert got[kind]['train']['kernels'] == train and got[kind]['inference']['kernels'] == infer, (kind, got[kind])
    for kind, (train, infer) in LIMITS.items():
        t, i = got[kind]['train'], got[kind]['inference']
        assert t['total'] <= train and i['total'] <= infer, (kind, t, i)
        assert t['total'] > t['kernels'] and t['kernel_buffers'] > 0  # the rest is counted, not assumed away
        assert t['torch'] == 0 and i['torch'] == 0, (kind, t['torch_ops'], i['torch_ops'])
    bam = got['bam']['train']
    assert bam['kernels'] + bam['kernel_buffers'] <= 5.1


def test_the_ssdlite_stages_are_those_of_the_shipped_config():
    """census.ssdlite_mobilenetv2_stages holds the channels and strides of the attention inputs
    of configs/ssd/ssdlite_mobilenetv2-cbam_8xb24-600e_coco.py (C = 24 is not a multiple of 16)."""
    import os.path as osp

    from mmdet.registry import MODELS
    from mmengine.config import Config

    from cbam_det.utils import no_pretrained

    from .helpers import REPO

    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ssd', 'ssdlite_mobilenetv2-cbam_8xb24-600e_coco.py'))
    assert list(cfg.model.targets) == ['backbone.layer[1-7]']
    backbone = MODELS.build(no_pretrained(cfg.model.detector.backbone.to_dict()))
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, tuple(o.shape)))
        for n, m in backbone.named_children()
        if n.startswith('layer')
    ]
    with torch.no_grad():
        backbone.eval()
        backbone(torch.zeros(1, 3, 320, 320))
    for h in hooks:
        h.remove()
    assert [seen[f'layer{i}'] for i in range(1, 8)] == census.ssdlite_mobilenetv2_stages(1, 320, 320)


# ---------------------------------------------------------------- compiled for real GPUs


def _compile(specs, arch):
    results = kernel_compile.compile_specs(specs, archs=[arch], jobs=os.cpu_count() or 2)
    skipped = {r['skipped'] for r in results if 'skipped' in r}
    if skipped:
        assert all('skipped' in r for r in results), skipped  # a target is supported or not, never in part
        pytest.skip(sorted(skipped)[0])
    assert len(results) == len(specs)
    return results


@pytest.mark.parametrize('arch', (80, 90), ids=lambda a: f'sm_{a}')
def test_the_c24_specializations_of_ssdlite_compile(arch):
    """MobileNetV2's 24-channel stage (no divisibility hint on C): bfloat16, both layouts,
    training and inference, at its detection shape; for A100 and H100/H200 here, for every target
    in the slow test below (whose SSDLite config has this stage)."""
    specs = census.unique_specs(
        [
            launch
            for cl in (False, True)
            for train in (True, False)
            for launch in census.module_launches('cbam_plugin', (24, 24, 80, 80), channels_last=cl, train=train)
        ]
    )
    assert kernel_compile.compile_problems(_compile(specs, arch)) == []


@pytest.mark.slow
@pytest.mark.parametrize('arch', kernel_compile.ARCHS, ids=lambda a: f'sm_{a}')
def test_every_detection_specialization_compiles(arch):
    """Every specialization a GPU compiles for the shipped configs (census.DETECTION_MODELS:
    Faster R-CNN R50 800×1344 batch 2 with CBAM/SE plugin and fused and BAM, YOLOX-S 640 batch 8,
    SSDLite MobileNetV2 320 batch 24), float32/bfloat16/float16, NCHW and channels-last, training
    and inference: at most 128 registers, no spills, no FMA, NaN-propagating maxima.
    tools/analysis/gpu_check.sh runs it for the GPU's own architecture."""
    specs = census.detection_specs()
    results = _compile(specs, arch)
    most = max(results, key=lambda r: r['registers'])
    print(f'sm_{arch}: {len(results)} specializations, at most {most["registers"]} registers ({most["kernel"]})')
    assert kernel_compile.compile_problems(results) == []
