"""torch.compile of a CBAM-ResNet (custom autograd path included) runs and matches eager.

Slow: inductor compiles C++ kernels (about 2 minutes on 2 cores)."""

import copy

import pytest
import torch
from mmdet.registry import MODELS


@pytest.mark.slow
def test_compiled_cbam_resnet_matches_eager():
    torch.manual_seed(0)
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
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        scale = float(p.grad.abs().max()) + 1e-12
        assert float((p.grad - q.grad).abs().max()) <= 1e-3 * scale, name
    for (name, b), c in zip(eager.named_buffers(), compiled_model.buffers()):  # BN statistics identical
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)

    eager.eval(), compiled_model.eval()
    with torch.no_grad():
        for a, b in zip(compiled(x), eager(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_explicit_kernel_backend_under_compile_is_a_graph_break_that_runs():
    """CBAM_DET_BACKEND=cpu inside torch.compile: the kernels run eagerly (torch.compiler.disable)
    and give eager's output and gradients."""
    from cbam_det import CBAM, kernels

    torch.manual_seed(0)
    m = CBAM(32, 4)
    torch.nn.init.constant_(m.spatial_gate.bn.weight, 0.7)
    x = torch.randn(2, 32, 12, 14)
    with kernels.use_backend('cpu'):
        xe = x.clone().requires_grad_()
        ye = m(xe)
        ye.square().sum().backward()
        xc = x.clone().requires_grad_()
        yc = torch.compile(copy.deepcopy(m))(xc)
        yc.square().sum().backward()
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-6)
