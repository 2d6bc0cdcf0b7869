"""The ``torch`` backend (CBAM's memory-lean autograd functions) against the module's
equations as written (``CBAM.reference``), same weights."""

import pytest
import torch

from cbam_det import CBAM, kernels

from . import numerics


def run(m: CBAM, x: torch.Tensor, fast: bool, monkeypatch=None):
    """``fast``: the module on the ``torch`` backend; otherwise its plain eq. 1-3."""
    x = x.detach().clone().requires_grad_()
    with kernels.use_backend('torch'):
        y = m(x) if fast else m.reference(x)
    w = torch.randn(y.shape, generator=numerics.generator(7)).to(y.dtype)
    params = [x] + list(m.parameters())
    grads = torch.autograd.grad((y.float() * w.float()).sum(), params)
    return y.detach(), grads


def randomised(c, seed=0, **kw):
    torch.manual_seed(numerics.seed(seed))
    m = CBAM(c, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


@pytest.mark.parametrize('shape', [(2, 32, 9, 13), (1, 48, 7, 7), (3, 32, 1, 1)], ids=str)
@pytest.mark.parametrize('spatial_pool', ['avg_max', 'max_avg'])
@pytest.mark.parametrize('channels_last', [False, True])
def test_fast_path_equals_generic_path(shape, spatial_pool, channels_last, monkeypatch):
    x = torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    for train in (False, True):
        fast_m, slow_m = (
            randomised(shape[1], spatial_pool=spatial_pool),
            randomised(shape[1], spatial_pool=spatial_pool),
        )
        fast_m.train(train), slow_m.train(train)
        y_fast, g_fast = run(fast_m, x, True, monkeypatch)
        y_slow, g_slow = run(slow_m, x, False, monkeypatch)
        numerics.assert_close(y_fast, y_slow)
        numerics.assert_grads_close(g_fast, g_slow)
        # BatchNorm statistics updated identically
        numerics.assert_close(fast_m.spatial_gate.bn.running_mean, slow_m.spatial_gate.bn.running_mean)
        numerics.assert_close(fast_m.spatial_gate.bn.running_var, slow_m.spatial_gate.bn.running_var)


def test_ties_share_the_max_gradient_like_torch(monkeypatch):
    """Integer-valued input: many tied maxima over H×W and over C."""
    x = torch.randint(0, 3, (2, 16, 5, 6)).float()
    y_fast, g_fast = run(randomised(16), x, True, monkeypatch)
    y_slow, g_slow = run(randomised(16), x, False, monkeypatch)
    numerics.assert_close(y_fast, y_slow)
    numerics.assert_grads_close(g_fast, g_slow)


def test_fast_path_under_bf16_autocast(monkeypatch):
    x = torch.randn(2, 32, 8, 10).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y_fast, g_fast = run(randomised(32).train(), x, True, monkeypatch)
        y_slow, g_slow = run(randomised(32).train(), x, False, monkeypatch)
    assert y_fast.dtype == torch.bfloat16
    # bfloat16 throughout: the bound is bfloat16's (8-bit mantissa); a gradient is a sum over the
    # H·W pixels of bf16-rounded terms (the float32 test above holds the arithmetic itself tightly)
    numerics.assert_close(y_fast, y_slow, dtype=torch.bfloat16)
    numerics.assert_grads_close(g_fast, g_slow, dtype=torch.bfloat16, terms=x.shape[2] * x.shape[3])


def test_kernels_cover_the_paper_module_only():
    assert CBAM(32).kernel_variant == CBAM(32, spatial_pool='max_avg').kernel_variant == 'cbam'
    for kw in (dict(arrangement='parallel'), dict(channel_pool='avg'), dict(spatial_pool='conv1x1')):
        assert CBAM(32, **kw).kernel_variant is None, kw
    assert CBAM(32, spatial_pool=None).kernel_variant is None


@pytest.mark.parametrize('shape', [(2, 32, 9, 13), (1, 32, 1, 1)], ids=str)
def test_inplace_inference_equals_out_of_place(shape):
    m = randomised(shape[1]).eval()
    m_inplace = randomised(shape[1], inplace=True).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        ref = m(x)
        assert not torch.equal(ref, x)  # out of place: the input is kept
        y = x.clone()
        out = m_inplace(y)
    assert out.data_ptr() == y.data_ptr()  # written into the input
    numerics.assert_close(out, ref)
    # with autograd the in-place flag changes nothing (the input is needed for backward)
    z = x.clone().requires_grad_()
    out = m_inplace.train()(z)
    assert out.data_ptr() != z.data_ptr()
