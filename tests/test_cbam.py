"""CBAM (ECCV 2018, eq. 1-3) against a plain recomputation, gradients, errors, parameter counts."""

import pytest
import torch
import torch.nn.functional as F

from cbam_det import CBAM


def reference_cbam(m: CBAM, x: torch.Tensor) -> torch.Tensor:
    """Eq. 2-3 written out by hand from the module's weights (no shared code with CBAM)."""
    w0, b0 = m.channel_gate.fc1.weight, m.channel_gate.fc1.bias
    w1, b1 = m.channel_gate.fc2.weight, m.channel_gate.fc2.bias

    def mlp(v):  # v: (N, C)
        return torch.relu(v @ w0.t() + b0) @ w1.t() + b1

    n, c, h, w = x.shape
    f_avg = x.reshape(n, c, -1).sum(-1) / (h * w)
    f_max = x.reshape(n, c, -1).max(-1).values
    mc = torch.sigmoid(mlp(f_avg) + mlp(f_max)).reshape(n, c, 1, 1)
    f1 = mc * x
    s_avg = f1.sum(1, keepdim=True) / c
    s_max = f1.max(1, keepdim=True).values
    bn = m.spatial_gate.bn
    conv = F.conv2d(torch.cat([s_avg, s_max], 1), m.spatial_gate.conv.weight, padding=3)
    if m.training and conv.numel() > 1:  # one value: running statistics (safe_batch_norm)
        mean, var = conv.mean(), conv.var(unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    ms = torch.sigmoid((conv - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)
    return ms * f1


def _randomise(m: CBAM) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        m.spatial_gate.bn.running_mean.fill_(0.3)
        m.spatial_gate.bn.running_var.fill_(2.0)


@pytest.mark.parametrize('shape', [(2, 32, 8, 8), (1, 64, 5, 11), (3, 48, 17, 4), (1, 16, 1, 1)])
@pytest.mark.parametrize('train', [False, True])
def test_cbam_matches_reference(shape, train):
    m = CBAM(shape[1])
    _randomise(m)
    m.train(train)
    x = torch.randn(shape)
    torch.testing.assert_close(m(x), reference_cbam(m, x), rtol=1e-5, atol=1e-6)


def test_cbam_changes_input_and_is_deterministic():
    m = CBAM(32).eval()
    _randomise(m)
    x = torch.randn(2, 32, 6, 7)
    y = m(x)
    assert y.shape == x.shape
    assert not torch.allclose(y, x)
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)


def test_hidden_width_rounding_is_floor():
    # C not a multiple of r: documented rounding is floor(C / r), as in the official code
    m = CBAM(40, reduction=16)
    assert m.channel_gate.fc1.weight.shape == (2, 40)
    assert m.channel_gate.fc2.weight.shape == (40, 2)


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(in_channels=8, reduction=16), r'reduction=16 leaves 0 hidden channels.*1 <= reduction <= 8'),
        (dict(in_channels=32, reduction=0), 'reduction must be a positive int'),
        (dict(in_channels=0), 'in_channels must be a positive int'),
        (dict(in_channels=32, spatial_kernel=4), 'spatial_kernel must be a positive odd int'),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CBAM(**kwargs)


def test_channel_mismatch_at_forward_is_named():
    with pytest.raises(ValueError, match=r'in_channels=32.*got \(1, 16, 4, 4\)'):
        CBAM(32)(torch.randn(1, 16, 4, 4))


def test_gradients_reach_every_parameter():
    m = CBAM(32).train()
    _randomise(m)
    x = torch.randn(2, 32, 9, 6, requires_grad=True)
    (m(x) * torch.randn(2, 32, 9, 6)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_official_parameter_layout():
    m = CBAM(256)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        'channel_gate.fc1.weight': (16, 256),
        'channel_gate.fc1.bias': (16,),
        'channel_gate.fc2.weight': (256, 16),
        'channel_gate.fc2.bias': (256,),
        'spatial_gate.conv.weight': (1, 2, 7, 7),
        'spatial_gate.bn.weight': (1,),
        'spatial_gate.bn.bias': (1,),
        'spatial_gate.bn.running_mean': (1,),
        'spatial_gate.bn.running_var': (1,),
        'spatial_gate.bn.num_batches_tracked': (),
    }
    assert m.spatial_gate.conv.bias is None
    assert m.spatial_gate.bn.momentum == 0.01 and m.spatial_gate.bn.eps == 1e-5


def test_resnet50_cbam_parameter_count():
    """mmdet ResNet-50 + CBAM in all 16 blocks = 28,089,624 (paper: 28.09M) - 2,049,000 fc."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    backbone = MODELS.build(
        dict(
            type='ResNet',
            depth=50,
            plugins=[dict(cfg=dict(type='CBAM'), stages=(True, True, True, True), position='after_conv3')],
        )
    )
    assert sum(p.numel() for p in backbone.parameters()) == 26_040_624
    cbam_blocks = [m for m in backbone.modules() if isinstance(m, CBAM)]
    assert len(cbam_blocks) == 16
    assert [m.in_channels for m in cbam_blocks] == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    plain = MODELS.build(dict(type='ResNet', depth=50))
    assert sum(p.numel() for p in plain.parameters()) == 23_508_032
