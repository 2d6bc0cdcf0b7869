"""The Triton backend is safe to hand to a user: a self-check that never gets in the way, a
fallback for every op call whose launch fails, launches under the tensor's device, ties and NaN
as the torch backend has them, float32 tie counts in low precision, kernels that take any layout
and refuse what they cannot write.

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

from cbam_det import BAM, CBAM, SE, kernels
from cbam_det.kernels import launch
from cbam_det.kernels.library import bam, gates

from . import numerics

DEVICE = 'cpu' if launch.INTERPRETED or not torch.cuda.is_available() else 'cuda'
pytestmark = pytest.mark.skipif(
    not launch.AVAILABLE or (DEVICE == 'cpu' and not launch.INTERPRETED), reason='no GPU and Triton interpreter off'
)


def randomised(m: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(numerics.seed(seed))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m.to(DEVICE)


def grads(m: nn.Module, x: torch.Tensor, backend=None, auto_fallback=False):
    """Output and every gradient of one weighted-sum step of ``m`` on ``x``: through
    ``kernels.use_backend(backend)``, or (``auto_fallback``) through the Triton kernels exactly as
    ``auto`` calls them on a GPU (fallback allowed)."""
    x = x.detach().clone().requires_grad_()
    params = [p for p in m.parameters() if p.requires_grad]
    if auto_fallback:
        y = gates.attend(m, x, None, None, True, True)
    else:
        with kernels.use_backend(backend):
            y = m(x)
    w = torch.randn(y.shape, generator=numerics.generator(3)).to(y.device)
    out = torch.autograd.grad((y.float() * w).sum(), [x] + params)
    return [y.detach().float()] + [g.float() for g in out]


def assert_steps_equal(got, want):
    """Output within float32 rounding of its scale, gradients of the largest gradient's."""
    numerics.assert_close(got[0], want[0], msg='output')
    numerics.assert_grads_close(got[1:], want[1:])


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


# ---------------------------------------------------------------- 2./3. a fallback for every op call


def _failing(kernel_name: str, when=lambda args: True):
    """An observer that fails the launches of ``kernel_name`` for which ``when(arguments by name)``
    holds (a compile error of one specialization), and runs every other launch."""
    failed = []

    def observer(kernel, grid, args, meta, warps, run):
        named = dict(zip(launch._parameter_names(kernel.fn), args))
        if kernel.fn.__name__ == kernel_name and when(named):
            failed.append(meta)
            raise RuntimeError(f'simulated compile failure of {kernel_name}')
        run()

    return observer, failed


@pytest.fixture(autouse=True)
def _forget_failed_variants():
    """Each test starts with no op variant marked failed (they are marked for the process)."""
    saved = dict(launch._failed)
    launch._failed.clear()
    yield
    launch._failed.clear()
    launch._failed.update(saved)


@pytest.mark.parametrize(
    'kernel,layout',
    [
        ('_gate_grads_kernel', 'channels_last'),  # backward only, one layout only
        ('_spatial_pool_kernel', 'nchw'),  # forward, the other layout
        ('_spatial_pool_grad_kernel', 'channels_last'),  # the third pass of backward
        ('_input_grad_kernel', 'nchw'),  # the last pass of backward
    ],
)
def test_a_failing_launch_falls_back_to_the_twin_with_one_warning(kernel, layout):
    """A failure injected into one kernel in one memory layout only (the stride of C is 1 exactly
    in channels-last): under auto the op call gives torch's result (its PyTorch twin computes it),
    one warning names the kernel and its specialization, later calls of that op variant go to the
    twin without trying again, and the other layout still runs its Triton kernels."""
    x = torch.randn(2, 48, 7, 9, device=DEVICE)
    cl = x.to(memory_format=torch.channels_last)
    m = randomised(CBAM(48, 4)).train()
    want = {name: grads(copy.deepcopy(m), t, 'torch') for name, t in (('nchw', x), ('channels_last', cl))}

    def in_layout(named):  # the layout of the module's input
        return (named['z_ptr'].stride(1) == 1) == (layout == 'channels_last')

    observer, failed = _failing(kernel, in_layout)
    target = cl if layout == 'channels_last' else x
    with launch.observe(observer):
        with pytest.warns(UserWarning, match=rf'Triton kernel {kernel}\[.*failed to compile or launch') as rec:
            got = grads(copy.deepcopy(m), target, auto_fallback=True)
        assert len([w for w in rec if 'failed to compile' in str(w.message)]) == 1
        assert len(failed) == 1
        assert_steps_equal(got, want[layout])
        with warnings.catch_warnings():
            warnings.simplefilter('error', UserWarning)  # no second warning: the variant is known to fail
            again = grads(copy.deepcopy(m), target, auto_fallback=True)
            other = grads(copy.deepcopy(m), cl if target is x else x, auto_fallback=True)
        assert len(failed) == 1  # not launched again
    assert_steps_equal(again, want[layout])
    assert_steps_equal(other, want['nchw' if layout == 'channels_last' else 'channels_last'])


def test_a_failing_bam_launch_falls_back_in_backward():
    x, c, s = torch.randn(2, 16, 5, 6), torch.randn(2, 16), torch.randn(2, 30)
    x, c, s = x.to(DEVICE), c.to(DEVICE), s.to(DEVICE)
    dy = torch.ones_like(x)
    observer, failed = _failing('_bam_sum_kernel')
    with launch.observe(observer), pytest.warns(UserWarning, match='_bam_sum_kernel'):
        got = torch.ops.cbam_det.bam_backward(dy, x, c, s, False, True, True, True)
    want = bam.twin_backward(dy, x, c, s, False, True)
    assert failed
    for a, b in zip(got, want):
        numerics.assert_close(a, b)


def test_explicit_triton_raises_the_launch_failure_with_its_reason():
    m = randomised(CBAM(48, 4)).train()
    observer, _ = _failing('_gate_grads_kernel')
    with (
        launch.observe(observer),
        pytest.raises(
            launch.TritonLaunchError, match=r'_gate_grads_kernel\[.*simulated compile failure.*named explicitly'
        ),
    ):
        grads(m, torch.randn(2, 48, 7, 9, device=DEVICE), 'triton')


def test_the_backward_inherits_the_forwards_fallback_setting():
    """What dispatch tells the ops (``fallback``: auto allows it, a named backend does not) reaches
    the backward op through the autograd node."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Spy(TorchDispatchMode):  # sees the op however the node calls it (C++ or Python)
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is gates.GATES_BACKWARD:
                seen.append(args[-1])
            return func(*args, **(kwargs or {}))

    m = randomised(SE(16, 4)).train()
    x = torch.randn(2, 16, 5, 5, device=DEVICE)
    with Spy():
        grads(m, x, 'triton')
        grads(m, x, auto_fallback=True)
    assert seen == [False, True]


def test_the_failure_key_is_formed_only_once_something_failed():
    """The key of an op variant (a tuple over its arguments, host work) is not formed while no
    launch has failed; after a failure every op call checks it."""
    formed = []
    key = lambda: formed.append(1) or ('k',)  # noqa: E731
    launch.run_or_twin(key, True, lambda: 1, lambda: 2)
    assert formed == []
    launch._failed[('other',)] = 'injected'
    assert launch.run_or_twin(key, True, lambda: 1, lambda: 2) == 1
    assert formed == [1]
    launch._failed[('k',)] = 'injected'
    assert launch.run_or_twin(key, True, lambda: 1, lambda: 2) == 2  # the twin, directly
    with pytest.raises(launch.TritonLaunchError, match='injected'):
        launch.run_or_twin(key, False, lambda: 1, lambda: 2)


# ---------------------------------------------------------------- 4. the tensor's device


def test_an_op_call_on_another_gpu_is_guarded_by_torch_cuda_device(monkeypatch):
    """On a second GPU without set_device, the guard makes it current for the op's launches;
    on the current device (and on the CPU) there is no guard to enter."""
    entered = []

    @contextlib.contextmanager
    def device(d):
        entered.append(d)
        yield

    monkeypatch.setattr(torch.cuda, 'device', device)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    with launch.guard_for(torch.device('cuda', 1)):
        pass
    assert entered == [torch.device('cuda', 1)]
    assert launch.guard_for(torch.device('cuda', 0)) is None


# ---------------------------------------------------------------- 5./6. ties and NaN as torch has them


@pytest.mark.parametrize('with_bn', [False, True], ids=['plain', 'bn_folded'])
def test_ties_give_the_twins_gradients(with_bn):
    """The max masks compare values recomputed in different kernels; formed as a rounded
    multiply and a rounded add everywhere (no fp-fusion), every tie is found as the twin finds it:
    integer inputs (many ties over H×W and over C) and a BN's affine map, the same states and
    gradients as the PyTorch twin."""
    from .test_ops import gates_cases

    g = numerics.generator(5)
    z = torch.randint(0, 4, (2, 32, 6, 7), generator=g).float()
    case = [a for a in gates_cases((2, 32, 6, 7), numerics.seed()) if a[16] == gates.SPATIAL_AVG_MAX]
    args = case[gates.BN_RUNNING if with_bn else gates.BN_NONE]
    args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in (z,) + args[1:])
    y, cs, ps = torch.ops.cbam_det.gates(*args, True, False)
    ry, rcs, rps = gates.twin_forward(*args, None)
    numerics.assert_close(y, ry)
    v, rv = gates._views(cs, ps, 2, 32, 6, 7, 3, True, with_bn), gates._views(rcs, rps, 2, 32, 6, 7, 3, True, with_bn)
    assert torch.equal(v['max'], rv['max'])
    dy = torch.randn(y.shape, generator=g).to(DEVICE)
    bw = (args[1], args[2], *args[5:12], args[15], args[16], args[17], True)
    got = torch.ops.cbam_det.gates_backward(dy, args[0], cs, ps, *bw, True, False)
    want = gates.twin_backward(dy, args[0], rcs, rps, *bw)
    numerics.assert_grads_close(got, want)


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
    from .test_ops import gates_cases

    z = torch.randn(2, 6, 5, 7, device=DEVICE)
    z[1, 2, 3, 4] = float('nan')
    for args in gates_cases((2, 6, 5, 7), numerics.seed())[:2]:  # CBAM, without and with a folded BN
        args = (z,) + tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args[1:])
        _, cs, ps = torch.ops.cbam_det.gates(*args, True, False)
        v = gates._views(cs, ps, 2, 6, 5, 7, 3, True, args[15] != gates.BN_NONE)
        assert torch.equal(torch.isnan(v['max']), torch.isnan(z.amax((2, 3))))


# ---------------------------------------------------------------- 7. low precision: tie counts in float32


INTERPRETED_SLOW = [pytest.mark.slow] if launch.INTERPRETED else []  # 67,200 pixels: ~1 min interpreted


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=INTERPRETED_SLOW)])
def test_a_constant_stage1_channel_keeps_its_max_gradient_in_low_precision(dtype, backend):
    """A constant channel of a stage-1 map (200×336 = 67,200 tied maxima, e.g. a γ = 0 BN from
    scratch): the gradient of its max is shared by a float32 count (a float16 count is inf,
    which gave 0; a bfloat16 one 67,072), so each tied element gets its share rounded once to the
    dtype and the channel's total is the max's gradient, as in float32. On torch ChannelPool's
    backward alone; on triton a whole SE step whose gate's gradient reaches only the max (CBAM's
    channel gate with max pooling, the spatial gate neutral), against its float32 twin."""
    from cbam_det.kernels import lean

    hw = 200 * 336
    x = torch.randn(1, 2, 200, 336, device=DEVICE)
    x[0, 1] = 0.75
    x = x.to(dtype)
    if backend == 'torch':
        g_max = torch.tensor([[0.5, 2.0]], device=DEVICE)
        xr = x.detach().requires_grad_()
        _, mx = lean.ChannelPool.apply(xr)
        (dx,) = torch.autograd.grad(mx, [xr], g_max)
        share = dx[0, 1].float()
        assert float(share.min()) == float(share.max())  # shared evenly
        numerics.assert_close(share, torch.full_like(share, 2.0 / hw), dtype=dtype, terms=1)
        numerics.assert_close(share.double().sum(), torch.tensor(2.0), dtype=dtype, terms=1)
        return
    from .test_ops import gates_cases

    args = list(gates_cases((1, 2, 4, 4), numerics.seed())[0])
    args[0] = x
    args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    y, cs, ps = torch.ops.cbam_det.gates(*args, True, False)
    dy = torch.zeros_like(y)
    dy[0, 1, 0, 0] = 1.0  # one pixel of the constant channel: its gate's gradient flows to the max
    bw = (args[1], args[2], *args[5:12], args[15], args[16], args[17], True)
    got = torch.ops.cbam_det.gates_backward(dy, x, cs, ps, *bw, True, False)[0][0, 1].float()
    want = gates.twin_backward(dy, x.float(), *gates.twin_forward(*((x.float(),) + args[1:]), None)[1:], *bw)
    want = want[0][0, 1].float()
    numerics.assert_close(got, want, dtype=dtype, terms=1, scale=float(want.abs().max()))
    numerics.assert_close(got.double().sum(), want.double().sum(), dtype=dtype, terms=hw)


# ---------------------------------------------------------------- 8. layouts and bad tensors


@pytest.mark.parametrize(
    'layout', ['sliced_channels', 'sliced_batch', 'transposed_hw'], ids=['C_slice', 'N_slice', 'HW_transposed']
)
def test_ops_take_non_dense_tensors_and_write_in_bounds(layout):
    """Views with gaps (a slice of the channels or of the batch) or with H and W not merging: the
    ops give their PyTorch twin's result, and nothing outside the outputs is written."""
    from .test_ops import gates_cases

    g = numerics.generator(7)
    big = torch.randn(4, 64, 6, 7, generator=g).to(DEVICE)
    z = {
        'sliced_channels': big[:2, 8:40],
        'sliced_batch': big[::2, :32],
        'transposed_hw': big[:2, :32].transpose(2, 3),
    }[layout]
    guard = big.clone()
    n, c, h, w = z.shape
    for args in gates_cases((n, c, h, w), numerics.seed())[:2]:
        args = (z,) + tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args[1:])
        y, cs, ps = torch.ops.cbam_det.gates(*args, True, False)
        numerics.assert_close(y, gates.twin_forward(*args, None)[0], msg=layout)
        dy = torch.randn(z.shape, generator=g).to(DEVICE)
        bw = (args[1], args[2], *args[5:12], args[15], args[16], args[17], True)
        got = torch.ops.cbam_det.gates_backward(dy, z, cs, ps, *bw, True, False)
        numerics.assert_grads_close(got, gates.twin_backward(dy, z, cs, ps, *bw))
    c2, s2 = torch.randn(n, c, generator=g).to(DEVICE), torch.randn(n, h * w, generator=g).to(DEVICE)
    numerics.assert_close(torch.ops.cbam_det.bam_apply(z, c2, s2, False, True, True, False),
                          bam.twin_apply(z, c2, s2, False, True, None))  # fmt: skip
    assert torch.equal(big, guard)  # the inputs' storage is untouched


def test_ops_refuse_empty_tensors_and_mismatched_outputs():
    from .test_ops import gates_cases

    args = gates_cases((2, 6, 5, 7), numerics.seed())[0]
    args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    for shape in ((2, 6, 0, 7), (0, 6, 5, 7)):
        with pytest.raises(ValueError, match=r'is empty; N, C, H and W must be >= 1'):
            torch.ops.cbam_det.gates(torch.randn(shape, device=DEVICE), *args[1:], True, False)
    with pytest.raises(ValueError, match=r"out must have the input's shape \(2, 6, 5, 7\)"):
        torch.ops.cbam_det.gates_(torch.empty(2, 6, 5, 8, device=DEVICE), *args, True, False)
    with pytest.raises(ValueError, match='NCHW- or channels-last-contiguous'):
        torch.ops.cbam_det.gates_(torch.empty(2, 12, 5, 7, device=DEVICE)[:, ::2], *args, True, False)


def test_launch_planning_arithmetic_matches_tritons():
    """The host-side ⌈a/b⌉ and next power of two are plain Python (triton.cdiv and
    triton.next_power_of_2 are JIT functions: microseconds per call) and agree with Triton's."""
    import triton

    for a in list(range(1, 300)) + [2**20 - 1, 2**20, 2**20 + 1, 2 * 256 * 200 * 336]:
        assert launch.pow2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 7, 16, 64, 1024):
            assert launch.cdiv(a, b) == triton.cdiv(a, b), (a, b)


def test_launch_plans_are_computed_once_per_problem():
    """What a launch needs (grids, splits, tiles, warps) is decided once per shape, layout, module
    kind and SM count: a second call of the same problem computes nothing."""
    gates._forward_plan.cache_clear()
    gates._backward_plan.cache_clear()
    m = randomised(CBAM(24, 4)).train()
    x = torch.randn(2, 24, 5, 7, device=DEVICE)
    for _ in range(3):
        grads(m, x, 'triton')
    assert gates._forward_plan.cache_info().misses == 1 and gates._forward_plan.cache_info().hits == 2
    assert gates._backward_plan.cache_info().misses == 1 and gates._backward_plan.cache_info().hits == 2


@pytest.mark.parametrize('kind', ['cbam', 'se', 'bam'])
def test_a_module_call_is_one_autograd_node(kind):
    """The whole module is one node of the graph between its input and its output (BAM: its
    refinement is one node; its branches are ordinary layers)."""
    m = randomised({'cbam': CBAM(16, 4), 'se': SE(16, 4), 'bam': BAM(16, 4, 1)}[kind]).train()
    x = torch.randn(2, 16, 5, 6, device=DEVICE, requires_grad=True)
    with kernels.use_backend('triton'):
        y = m(x)
    node = y.grad_fn
    names = ('_GatesBackward', '_BamBackward', 'torch::autograd::CppNode<cbam_det::GatesNode>')
    names += ('torch::autograd::CppNode<cbam_det::BamNode>',)
    assert node.name().startswith(names), node.name()
    if kind != 'bam':
        assert any(f is not None and getattr(f, 'variable', None) is x for f, _ in node.next_functions)
