"""torch.compile of a CBAM-ResNet (custom autograd path included) runs and matches eager.

Slow: inductor compiles C++ kernels (about 2 minutes on 2 cores)."""

import copy

import pytest
import torch
from mmdet.registry import MODELS

from . import numerics


@pytest.mark.slow
def test_compiled_cbam_resnet_matches_eager():
    torch.manual_seed(numerics.seed())
    eager = MODELS.build(
        dict(type='AttnResNet', depth=18, base_channels=16, attention=dict(type='CBAM', reduction=4))
    ).train()
    for m in eager.modules():  # away from the init (spatial BN gamma = 0) so every path carries gradient
        if isinstance(m, torch.nn.BatchNorm2d) and m.num_features == 1:
            torch.nn.init.constant_(m.weight, 0.7)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    x = torch.randn(2, 3, 64, 96)

    ref = eager(x)
    sum(o.sum() for o in ref).backward()
    out = compiled(x)
    sum(o.sum() for o in out).backward()
    for a, b in zip(out, ref):
        numerics.assert_close(a, b, depth=18)
    names = [name for name, _ in eager.named_parameters()]
    numerics.assert_grads_close(
        [q.grad for q in compiled_model.parameters()], [p.grad for p in eager.parameters()], depth=36, names=names
    )
    for (name, b), c in zip(eager.named_buffers(), compiled_model.buffers()):  # BN statistics identical
        numerics.assert_close(c, b, depth=18, msg=name)

    eager.eval(), compiled_model.eval()
    with torch.no_grad():
        for a, b in zip(compiled(x), eager(x)):
            numerics.assert_close(a, b, depth=18)


@pytest.mark.slow
def test_cpu_backend_compiled_by_inductor_matches_eager():
    """CBAM_DET_BACKEND=cpu inside torch.compile (inductor, fullgraph): the ``cbam_det::`` ops in
    inductor's graph give eager's output and gradients (the fused autograd functions there)."""
    from cbam_det import CBAM, kernels

    torch.manual_seed(numerics.seed())
    m = CBAM(32, 4)
    torch.nn.init.constant_(m.spatial_gate.bn.weight, 0.7)
    x = torch.randn(2, 32, 12, 14)
    with kernels.use_backend('cpu'):
        xe = x.clone().requires_grad_()
        ye = m(xe)
        ye.square().sum().backward()
        xc = x.clone().requires_grad_()
        mc = copy.deepcopy(m)
        yc = torch.compile(mc, fullgraph=True)(xc)
        yc.square().sum().backward()
    numerics.assert_close(yc, ye)
    numerics.assert_grads_close(
        [xc.grad] + [p.grad for p in mc.parameters()], [xe.grad] + [p.grad for p in m.parameters()], depth=2
    )
