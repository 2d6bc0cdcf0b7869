"""The Triton backend is safe to hand to a user: a self-check that never gets in the way, a
fallback for every launch, launches under the tensor's device, ties and NaN as the torch backend
has them, float32 tie counts in low precision, launchers that refuse what they cannot write.

Runs in Triton's interpreter on CPU tensors (tests/conftest.py), or on CUDA with
``TRITON_INTERPRET=0`` (tools/analysis/gpu_check.sh). What only compiled code shows (fp-fusion
off, the NaN-propagating max instruction) is checked on the PTX by the compile tests of
tests/test_backends.py and tests/test_kernel_census.py.
"""

import contextlib
import copy
import warnings

import pytest
import torch
from torch import nn

from cbam_det import CBAM, SE, kernels
from cbam_det.kernels import fused, policy, triton_fallback, triton_gate
from cbam_det.kernels.triton_attend import GatedAttention

from . import numerics

DEVICE = 'cpu' if triton_gate.INTERPRETED or not torch.cuda.is_available() else 'cuda'
pytestmark = pytest.mark.skipif(
    DEVICE == 'cpu' and not triton_gate.INTERPRETED, reason='no GPU and Triton interpreter off'
)


def randomised(m: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(numerics.seed(seed))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m.to(DEVICE)


def grads(m: nn.Module, x: torch.Tensor, backend=None, auto_fallback=False):
    """Output and every gradient of one weighted-sum step of ``m`` on ``x``: through
    ``kernels.use_backend(backend)``, or (``auto_fallback``) through the Triton path exactly as
    ``auto`` runs it on a GPU (fused.gated_attention under policy.fallback(True))."""
    x = x.detach().clone().requires_grad_()
    params = [p for p in m.parameters() if p.requires_grad]
    if auto_fallback:
        with policy.fallback(True):
            y = fused.gated_attention(triton_gate, m, x, None, False, GatedAttention)
    else:
        with kernels.use_backend(backend):
            y = m(x)
    w = torch.randn(y.shape, generator=numerics.generator(3)).to(y.device)
    out = torch.autograd.grad((y.float() * w).sum(), [x] + params)
    return [y.detach().float()] + [g.float() for g in out]


def assert_steps_equal(got, want):
    """Output within float32 rounding of its scale, gradients of the largest gradient's."""
    scale = max(float(g.abs().max()) for g in want[1:])
    for i, (a, b) in enumerate(zip(got, want)):
        numerics.assert_close(a, b, depth=2 if i else 1, scale=scale if i else None, msg=f'tensor {i}')


# ---------------------------------------------------------------- 1. the self-check


@pytest.mark.parametrize('mode', ['no_grad', 'inference_mode', 'bf16_autocast', 'deterministic'])
def test_self_check_runs_whatever_the_caller_has_set(mode):
    """The first CUDA forward may come under no_grad (tools/test.py, a validation loop),
    inference_mode, autocast or deterministic mode: the self-check passes under each and the
    caller's setting is as it was after."""
    device = torch.device(DEVICE)
    settings = {
        'no_grad': torch.no_grad,
        'inference_mode': torch.inference_mode,
        'bf16_autocast': lambda: torch.autocast(device.type, dtype=torch.bfloat16),
        'deterministic': contextlib.nullcontext,
    }
    was = torch.are_deterministic_algorithms_enabled()
    if mode == 'deterministic':
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with settings[mode]():
            assert kernels.probe_triton(device, torch.float32, force=True)
            assert torch.is_grad_enabled() == (mode not in ('no_grad', 'inference_mode'))
            assert torch.is_inference_mode_enabled() == (mode == 'inference_mode')
        assert torch.are_deterministic_algorithms_enabled() == (mode == 'deterministic')
        if mode == 'deterministic':
            assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(was)


def test_self_check_leaves_the_random_generators_as_it_found_them():
    torch.manual_seed(numerics.seed(11))
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state() if DEVICE == 'cuda' else None
    assert kernels.probe_triton(torch.device(DEVICE), torch.float32, force=True)
    assert torch.equal(torch.get_rng_state(), state)
    if cuda_state is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_state)


# ---------------------------------------------------------------- 2./3. a fallback for every launch


def _failing(kernel_name: str, when=lambda args, meta: True):
    """An observer that fails the launches of ``kernel_name`` for which ``when`` holds (a
    compile error of one specialization), and runs every other launch."""
    failed = []

    def observer(kernel, grid, args, meta, warps, run):
        if kernel.fn.__name__ == kernel_name and when(args, meta):
            failed.append(meta)
            raise RuntimeError(f'simulated compile failure of {kernel_name}')
        run()

    return observer, failed


@pytest.fixture(autouse=True)
def _forget_failed_specializations():
    """Each test starts with no specialization marked failed (they are marked for the process)."""
    saved = dict(triton_gate._failed)
    triton_gate._failed.clear()
    yield
    triton_gate._failed.clear()
    triton_gate._failed.update(saved)


@pytest.mark.parametrize(
    'kernel,layout',
    [
        ('_gate_grads_kernel', 'channels_last'),  # backward only, one layout only
        ('_spatial_pool_kernel', 'nchw'),  # forward, the other layout
        ('_input_grad_kernel', 'nchw'),  # the last pass of backward
    ],
)
def test_a_failing_specialization_falls_back_to_torch_with_one_warning(kernel, layout):
    """A failure injected into one specialization only (one kernel, one memory layout: the
    stride of C is 1 exactly in channels-last): under auto the call gives torch's result, one
    warning names the kernel and the specialization, later calls of it go to torch without
    trying again, and the other layout still runs its Triton kernel."""
    x = torch.randn(2, 48, 7, 9, device=DEVICE)
    cl = x.to(memory_format=torch.channels_last)
    m = randomised(CBAM(48, 4)).train()
    want = {name: grads(copy.deepcopy(m), t, 'torch') for name, t in (('nchw', x), ('channels_last', cl))}

    def in_layout(args, meta):
        z = next(a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4)
        return (z.stride(1) == 1) == (layout == 'channels_last')

    observer, failed = _failing(kernel, in_layout)
    target = cl if layout == 'channels_last' else x
    with triton_gate.observe(observer):
        with pytest.warns(UserWarning, match=rf'Triton kernel {kernel}\[.*failed to compile or launch') as rec:
            got = grads(copy.deepcopy(m), target, auto_fallback=True)
        assert len([w for w in rec if 'failed to compile' in str(w.message)]) == 1
        assert len(failed) == 1
        assert_steps_equal(got, want[layout])
        with warnings.catch_warnings():
            warnings.simplefilter('error', UserWarning)  # no second warning: the specialization is known to fail
            again = grads(copy.deepcopy(m), target, auto_fallback=True)
            other = grads(copy.deepcopy(m), cl if target is x else x, auto_fallback=True)
        assert len(failed) == 1  # not launched again
    assert_steps_equal(again, want[layout])
    assert_steps_equal(other, want['nchw' if layout == 'channels_last' else 'channels_last'])


def test_a_failing_bam_launch_falls_back_in_backward():
    x, c, s = torch.randn(2, 16, 5, 6), torch.randn(2, 16), torch.randn(2, 30)
    observer, failed = _failing('_bam_grads_kernel')
    with triton_gate.observe(observer), policy.fallback(True), pytest.warns(UserWarning, match='_bam_grads_kernel'):
        got = triton_gate.bam_grads(torch.ones_like(x), x, c, s, False, True)
    want = triton_fallback.bam_grads(torch.ones_like(x), x, c, s, False, True)
    assert failed
    for a, b in zip(got, want):
        numerics.assert_close(a, b)


def test_explicit_triton_raises_the_launch_failure_with_its_reason():
    m = randomised(CBAM(48, 4)).train()
    observer, _ = _failing('_gate_grads_kernel')
    with (
        triton_gate.observe(observer),
        pytest.raises(
            triton_gate.TritonLaunchError, match=r'_gate_grads_kernel\[.*simulated compile failure.*named explicitly'
        ),
    ):
        grads(m, torch.randn(2, 48, 7, 9, device=DEVICE), 'triton')


def test_auto_allows_the_fallback_and_an_explicit_backend_does_not():
    """What dispatch tells the kernels: backward inherits the forward's setting."""
    seen = []

    def observer(kernel, grid, args, meta, warps, run):
        seen.append(policy.fallback_enabled())
        run()

    m = randomised(SE(16, 4)).train()
    with triton_gate.observe(observer):
        grads(m, torch.randn(2, 16, 5, 5, device=DEVICE), 'triton')
        assert seen and not any(seen)
        seen.clear()
        grads(m, torch.randn(2, 16, 5, 5, device=DEVICE), auto_fallback=True)
        assert len(seen) >= 3 and all(seen)  # forward and backward launches


# ---------------------------------------------------------------- 4. the tensor's device


def test_every_launch_runs_under_its_tensors_device(monkeypatch):
    seen = []
    on = triton_gate._on
    monkeypatch.setattr(triton_gate, '_on', lambda device: seen.append(device) or on(device))
    launched = []
    x = torch.randn(2, 16, 5, 5, device=DEVICE)
    with triton_gate.observe(lambda kernel, grid, args, meta, warps, run: launched.append(kernel) or run()):
        grads(randomised(CBAM(16, 4)).train(), x, 'triton')
    assert len(seen) == len(launched) == 6 and all(d == x.device for d in seen)  # 3 forward, 3 backward


def test_a_cuda_launch_is_guarded_by_torch_cuda_device(monkeypatch):
    """On a second GPU without set_device, the guard makes it current for the launch."""
    entered = []

    @contextlib.contextmanager
    def device(d):
        entered.append(d)
        yield

    monkeypatch.setattr(torch.cuda, 'device', device)
    with triton_gate._on(torch.device('cuda', 1)):
        pass
    with triton_gate._on(torch.device('cpu')):
        pass
    assert entered == [torch.device('cuda', 1)]


# ---------------------------------------------------------------- 5./6. ties and NaN as torch has them


@pytest.mark.parametrize('with_bn', [False, True], ids=['plain', 'bn_folded'])
def test_tie_masks_of_the_kernels_and_of_their_twins_agree_bit_for_bit(with_bn):
    """The max masks compare values recomputed in different kernels; formed as a rounded
    multiply and a rounded add everywhere (no fp-fusion), the kernels' and the PyTorch twin's
    tie counts are identical, with many ties (integer inputs) and a BN's affine map."""
    g = numerics.generator(5)
    z = torch.randint(0, 4, (2, 32, 6, 7), generator=g).float().to(DEVICE)
    a = (torch.rand(32, generator=g) + 0.5).to(DEVICE) if with_bn else None
    b = torch.randn(32, generator=g).to(DEVICE) if with_bn else None
    gc = torch.sigmoid(torch.randint(-2, 3, (2, 32), generator=g).float()).to(DEVICE)
    _, smax = triton_gate.spatial_pool(z, a, b, gc)
    _, cmax = triton_gate.channel_pool(z, a, b)
    dy = torch.randn(z.shape, generator=g).to(DEVICE)
    gs = torch.rand(2, 42, generator=g).to(DEVICE)
    k = triton_gate.gate_grads(dy, z, a, b, gc, gs, smax)
    t = triton_fallback.gate_grads(dy, z, a, b, gc, gs, smax)
    assert torch.equal(k[-1], t[-1]) and float(k[-1].min()) >= 1  # every pixel finds its max
    w = torch.randn(2, 42, generator=g).to(DEVICE)
    k = triton_gate.spatial_pool_grad(z, a, b, gc, smax, w, w, cmax)
    t = triton_fallback.spatial_pool_grad(z, a, b, gc, smax, w, w, cmax)
    assert torch.equal(k[-1], t[-1]) and float(k[-1].min()) >= 1


@pytest.mark.parametrize('kind', ['cbam', 'se'])
def test_inf_and_nan_give_the_torch_backends_pattern_of_non_finite_values(kind):
    """An input with an Inf and a NaN: the same elements of the output and of every gradient
    are non-finite on the triton backend as on torch (the maxima propagate NaN as torch.amax)."""
    x = torch.randn(2, 16, 5, 6, device=DEVICE)
    x[0, 3, 1, 2] = float('nan')
    x[1, 5, 4, 0] = float('inf')
    m = randomised(CBAM(16, 4) if kind == 'cbam' else SE(16, 4)).eval()  # eval: no statistics mix the batch
    got, want = grads(copy.deepcopy(m), x, 'triton'), grads(copy.deepcopy(m), x, 'torch')
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(torch.isfinite(a), torch.isfinite(b)), f'tensor {i}'
        assert torch.equal(torch.isnan(a), torch.isnan(b)), f'tensor {i}'
    assert bool(torch.isnan(got[0][0]).any()) and not bool(torch.isfinite(got[0][1]).all())  # both reach y


def test_channel_max_propagates_nan_like_amax():
    z = torch.randn(2, 8, 4, 5, device=DEVICE)
    z[1, 2, 3, 4] = float('nan')
    mean, mx = triton_gate.channel_pool(z, None, None)
    assert torch.equal(torch.isnan(mx), torch.isnan(z.amax((2, 3))))
    _, zmax, zmin = triton_gate.channel_moments(z, z[0, :, 0, 0].contiguous())[1:]
    assert bool(torch.isnan(zmax[1, 2])) and bool(torch.isnan(zmin[1, 2])) and int(torch.isnan(zmax).sum()) == 1


# ---------------------------------------------------------------- 7. low precision: tie counts in float32


INTERPRETED_SLOW = [pytest.mark.slow] if triton_gate.INTERPRETED else []  # 67,200 pixels: ~1 min interpreted


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=INTERPRETED_SLOW)])
def test_a_constant_stage1_channel_keeps_its_max_gradient_in_low_precision(dtype, backend):
    """A constant channel of a stage-1 map (200×336 = 67,200 tied maxima, e.g. a γ = 0 BN from
    scratch): the gradient of its max is shared by a float32 count (a float16 count is inf,
    which gave 0; a bfloat16 one 67,072), so each tied element gets 1/67,200 of it rounded once
    to the dtype and the channel's total is the max's gradient, as in float32. The max-pool
    gradient alone: on torch ChannelPool's backward, on triton the tie count of the spatial-pool
    gradient pass and the input-gradient pass that shares it."""
    from cbam_det.kernels import lean

    hw = 200 * 336
    x = torch.randn(1, 2, 200, 336, device=DEVICE)
    x[0, 1] = 0.75
    x = x.to(dtype)
    g_max = torch.tensor([[0.5, 2.0]], device=DEVICE)
    if backend == 'torch':
        xr = x.detach().requires_grad_()
        _, mx = lean.ChannelPool.apply(xr)
        (dx,) = torch.autograd.grad(mx, [xr], g_max)
    else:
        zero_c, zero_p = torch.zeros(1, 2, device=DEVICE), torch.zeros(1, hw, device=DEVICE)
        _, cmax = triton_gate.channel_pool(x, None, None)
        gc = torch.ones(1, 2, device=DEVICE)
        smax = triton_gate.spatial_pool(x, None, None, gc)[1]
        _, ties = triton_gate.spatial_pool_grad(x, None, None, gc, smax, zero_p, zero_p, cmax)
        assert float(ties[0, 1]) == hw  # counted exactly
        dy = torch.zeros_like(x)
        dx = triton_gate.input_grad(dy, x, None, None, gc, zero_p, smax, zero_p, zero_p, cmax, zero_c, g_max / ties,
                                    zero_c)  # fmt: skip
    share = dx[0, 1].float()
    assert float(share.min()) == float(share.max())  # shared evenly
    # 2/67,200 rounded once to the dtype (the interpreter may truncate where a GPU rounds to nearest)
    numerics.assert_close(share, torch.full_like(share, 2.0 / hw), dtype=dtype, terms=1)
    numerics.assert_close(share.double().sum(), torch.tensor(2.0), dtype=dtype, terms=1)


# ---------------------------------------------------------------- 8. launchers


@pytest.mark.parametrize(
    'layout', ['sliced_channels', 'sliced_batch', 'transposed_hw'], ids=['C_slice', 'N_slice', 'HW_transposed']
)
def test_launchers_take_non_dense_tensors_and_write_in_bounds(layout):
    """Views with gaps (a slice of the channels or of the batch) or with H and W not merging:
    every launcher gives its PyTorch twin's result, and nothing outside the outputs is written."""
    g = numerics.generator(7)
    big = torch.randn(4, 64, 6, 7, generator=g).to(DEVICE)
    z = {
        'sliced_channels': big[:2, 8:40],
        'sliced_batch': big[::2, :32],
        'transposed_hw': big[:2, :32].transpose(2, 3),
    }[layout]
    guard = big.clone()
    n, c, h, w = z.shape
    a, b = (torch.rand(c, generator=g) + 0.5).to(DEVICE), torch.randn(c, generator=g).to(DEVICE)
    gc, gs = torch.rand(n, c, generator=g).to(DEVICE), torch.rand(n, h * w, generator=g).to(DEVICE)
    dy = torch.randn(z.shape, generator=g).to(DEVICE)
    _, smax = triton_fallback.spatial_pool(z, a, b, gc)
    _, cmax = triton_fallback.channel_pool(z, a, b)
    k = [torch.randn(n, c, generator=g).to(DEVICE) for _ in range(3)]
    wa, wm = torch.randn(n, h * w, generator=g).to(DEVICE), torch.randn(n, h * w, generator=g).to(DEVICE)
    calls = {
        'channel_pool': (z, a, b),
        'spatial_pool': (z, a, b, gc),
        'apply_gates': (z, a, b, gc, gs),
        'gate_grads': (dy, z, a, b, gc, gs, smax),
        'spatial_pool_grad': (z, a, b, gc, smax, wa, wm, cmax),
        'input_grad': (dy, z, a, b, gc, gs, smax, wa, wm, cmax, *k),
        'bam_apply': (z, gc, gs, False, True),
        'bam_grads': (dy, z, gc, gs, True, False),
    }
    for name, args in calls.items():
        got = getattr(triton_gate, name)(*args)
        want = getattr(triton_fallback, name)(*args)
        for u, v in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
            numerics.assert_close(u, v, msg=name)
    assert torch.equal(big, guard)  # the inputs' storage is untouched


def test_launchers_refuse_empty_tensors_and_mismatched_outputs():
    for shape in ((2, 0, 4, 4), (0, 8, 4, 4), (2, 8, 0, 4)):
        with pytest.raises(ValueError, match=r'is empty; N, C, H and W must be >= 1'):
            triton_gate.channel_pool(torch.randn(shape, device=DEVICE), None, None)
    z = torch.randn(2, 8, 4, 4, device=DEVICE)
    gc = torch.rand(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"out must have the input's shape \(2, 8, 4, 4\)"):
        triton_gate.apply_gates(z, None, None, gc, None, torch.empty(2, 8, 4, 5, device=DEVICE))
    with pytest.raises(ValueError, match='NCHW- or channels-last-contiguous'):
        triton_gate.apply_gates(z, None, None, gc, None, torch.empty(2, 16, 4, 4, device=DEVICE)[:, ::2])


def test_launch_planning_arithmetic_matches_tritons():
    """The host-side ⌈a/b⌉ and next power of two are plain Python (triton.cdiv and
    triton.next_power_of_2 are JIT functions: microseconds per call) and agree with Triton's."""
    import triton

    for a in list(range(1, 300)) + [2**20 - 1, 2**20, 2**20 + 1, 2 * 256 * 200 * 336]:
        assert triton_gate._pow2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 7, 16, 64, 1024):
            assert triton_gate._cdiv(a, b) == triton.cdiv(a, b), (a, b)


def test_a_launch_forms_its_specialization_key_only_once_something_failed(monkeypatch):
    """The key (an inspection of the kernel's signature, the largest host cost of a launch) is
    not formed while no specialization has failed; after a failure every launch checks it."""
    m = randomised(CBAM(24, 4))
    x = torch.randn(2, 24, 5, 7, generator=numerics.generator(0)).to(DEVICE)
    formed = []
    real = triton_gate._spec_key
    monkeypatch.setattr(triton_gate, '_spec_key', lambda *a: formed.append(a[0]) or real(*a))
    monkeypatch.setattr(triton_gate, '_failed', {})
    grads(m, x, auto_fallback=True)
    assert formed == []
    triton_gate._failed[('no such kernel', 4, ())] = 'injected'
    grads(m, x, auto_fallback=True)
    assert len(formed) >= 5  # every launch of a CBAM step (forward and backward)
