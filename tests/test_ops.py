"""The cbam_det operator families (cbam_det/kernels/library): ``torch.library.opcheck`` of every op
with its C++ kernel and its Triton kernel (in Triton's interpreter here, on the GPU where there is
one), the three kernel sets of each op (C++, Triton, PyTorch twin) against each other and against
the ``torch`` backend's autograd, and the networks under ``torch.compile`` and ``torch.export``:
one graph, the ops in it, outputs, gradients and BN buffers equal to eager."""

import copy
import os
import re

import pytest
import torch
from torch.library import opcheck

from cbam_det import CBAM, SE, kernels
from cbam_det.kernels import launch
from cbam_det.kernels.library import OPS, bam, gates

from . import numerics

no_ext = pytest.mark.skipif(os.environ.get('CBAM_DET_NO_EXT') == '1', reason='CBAM_DET_NO_EXT=1: no C++ kernels')
TRITON = launch.AVAILABLE and (launch.INTERPRETED or torch.cuda.is_available())
DEVICE = 'cuda' if torch.cuda.is_available() and not launch.INTERPRETED else 'cpu'
SHAPES = {'odd': (2, 6, 5, 7), 'one-pixel': (3, 4, 1, 1), 'ties': (2, 8, 6, 6)}


def _x(shape, gen):
    x = torch.randn(shape, generator=gen)
    return x if shape != SHAPES['ties'] else (x * 2).round() / 2  # many tied maxima


def _module_args(shape, gen, spatial: int, scale: bool):
    """The weights of a CBAM (``spatial`` 1 or 2) or SE (0) of C = shape[1], hidden 3."""
    c = shape[1]
    w1, b1 = torch.randn(3, c, generator=gen), torch.randn(3, generator=gen)
    w2, b2 = torch.randn(c, 3, generator=gen), torch.randn(c, generator=gen)
    cw = sw = sb = srm = srv = None
    if spatial:  # 7×7 (wider than the one-pixel and odd maps: the borders) and 3×3
        k = 7 if spatial == gates.SPATIAL_AVG_MAX else 3
        cw = torch.randn(1, 2, k, k, generator=gen)
        sw, sb = torch.rand(1, generator=gen) + 0.5, torch.randn(1, generator=gen)
        srm, srv = torch.randn(1, generator=gen), torch.rand(1, generator=gen) + 0.5
    return [w1, b1, w2, b2, cw, sw, sb, srm, srv, torch.tensor(2.0) if scale else None]


def gates_cases(shape, seed: int = 0):
    """Argument tuples of ``cbam_det::gates`` (without the last two, ``triton`` and ``fallback``):
    CBAM in both spatial orders and SE, without a BatchNorm and with each BatchNorm mode."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    z = _x(shape, gen)
    cases = []
    for spatial in (gates.SPATIAL_AVG_MAX, gates.SPATIAL_MAX_AVG, gates.SPATIAL_NONE):
        for bn_mode in (gates.BN_NONE, gates.BN_BATCH, gates.BN_RUNNING, gates.BN_OWN):
            if bn_mode == gates.BN_OWN and n * h * w == 1:
                continue  # one value per channel: the BN refuses to train
            bnw = torch.randn(c, generator=gen) if bn_mode else None
            bnb = torch.randn(c, generator=gen) if bn_mode else None
            bnm = torch.randn(c, generator=gen) if bn_mode else None
            bnv = (torch.rand(c, generator=gen) + 0.5) if bn_mode in (gates.BN_BATCH, gates.BN_RUNNING) else None
            m = _module_args(shape, gen, spatial, scale=bn_mode == gates.BN_RUNNING)
            sbn_batch = spatial != gates.SPATIAL_NONE and n * h * w > 1 and bn_mode != gates.BN_RUNNING
            cases.append((z, bnw, bnb, bnm, bnv, *m, bn_mode, spatial, sbn_batch, 1e-5, 1e-5))
    return cases


def _on(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _trainable(args):
    return tuple(
        a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() else a
        for a in args
    )


def _kernel_sets():
    sets = []
    if os.environ.get('CBAM_DET_NO_EXT') != '1':
        sets.append(('cpp', False))
    if TRITON:
        sets.append(('triton', True))
    return sets


def test_every_op_has_kernels_for_both_devices():
    """(Their fakes and autograd: opcheck below.)"""
    from torch._C import _dispatch_has_kernel_for_dispatch_key as has

    for name in OPS:
        qualname = f'cbam_det::{name}'
        if name.startswith('pointwise_conv'):
            assert has(qualname, 'CPU') and not has(qualname, 'CUDA'), name  # cuDNN has it on CUDA
        else:
            assert has(qualname, 'CPU') and has(qualname, 'CUDA'), name


def _opcheck_params():
    """Every shape with the C++ kernels; Triton's interpreter (about 10 s a case here) at one shape
    in the default suite, the others slow."""
    out = []
    for shape in SHAPES:
        for name, triton in _kernel_sets():
            slow = triton and launch.INTERPRETED and shape != 'odd'
            out.append(
                pytest.param(shape, (name, triton), marks=[pytest.mark.slow] if slow else [], id=f'{shape}-{name}')
            )
    return out


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('shape,kernel_set', _opcheck_params())
def test_opcheck_gates(shape, kernel_set, mode):
    """Schema, fake (shapes, strides, dtypes), autograd registration and AOT dispatch of the
    forward op with each kernel set, every mode, with gradients wanted (train) and not (eval)."""
    _, triton = kernel_set
    for args in gates_cases(SHAPES[shape], numerics.seed()):
        args = _on(args, DEVICE) + (triton, False)
        if mode == 'train':
            args = _trainable(args)
        opcheck(OPS['gates'], args)


@pytest.mark.parametrize('kernel_set', _kernel_sets(), ids=lambda k: k[0])
def test_opcheck_the_other_gate_ops(kernel_set):
    """``gates_backward`` (from a forward's states), ``gates_`` (written into ``out``) and
    ``update_stats_`` (mutating a BatchNorm's buffers)."""
    _, triton = kernel_set
    for args in gates_cases(SHAPES['odd'], numerics.seed()):
        args = _on(args, DEVICE)
        y, cs, ps = OPS['gates'](*args, triton, False)
        z, bnw, bnb, *_rest = args
        w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial, sbn_batch = args[5:18]
        dy = torch.randn_like(y)
        opcheck(
            OPS['gates_backward'],
            (dy, z, cs, ps, bnw, bnb, w1, b1, w2, b2, cw, sw, sb, bn_mode, spatial, sbn_batch, True, triton, False),
        )
        opcheck(OPS['gates_'], (torch.empty_like(z),) + args + (triton, False))
    lay = gates.layout(2, 6, 35, 3, False, True)  # the last case: SE with its own BN
    rm, rv, nbt = (
        torch.zeros(6, device=DEVICE),
        torch.ones(6, device=DEVICE),
        torch.zeros((), dtype=torch.long, device=DEVICE),
    )
    opcheck(OPS['update_stats_'], (rm, rv, nbt, cs, lay.mean, lay.var, 0.1, 1.1, triton, False))


@pytest.mark.parametrize('kernel_set', _kernel_sets(), ids=lambda k: k[0])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_opcheck_bam(mode, kernel_set):
    _, triton = kernel_set
    gen = torch.Generator().manual_seed(numerics.seed())
    x = torch.randn(2, 6, 5, 7, generator=gen, device='cpu').to(DEVICE)
    c, s = torch.randn(2, 6, generator=gen).to(DEVICE), torch.randn(2, 35, generator=gen).to(DEVICE)
    for product, residual in ((False, True), (True, False)):
        args = (x, c, s, product, residual, triton, False)
        opcheck(OPS['bam_apply'], _trainable(args) if mode == 'train' else args)
        opcheck(OPS['bam_backward'], (torch.randn_like(x),) + args)
        opcheck(OPS['bam_apply_'], (torch.empty_like(x),) + args)


@no_ext
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_opcheck_pointwise_conv(mode):
    gen = torch.Generator().manual_seed(numerics.seed())
    x, w, b = torch.randn(2, 6, 5, 7, generator=gen), torch.randn(4, 6, generator=gen), torch.randn(4, generator=gen)
    for args in ((x, w, b), (x, w, None)):
        opcheck(OPS['pointwise_conv'], _trainable(args) if mode == 'train' else args)
    opcheck(OPS['pointwise_conv_input_grad'], (torch.randn(2, 4, 5, 7, generator=gen), w))


# ---------------------------------------------------------------- the kernel sets against each other


def _compare(got, want, what, terms):
    for i, (a, b) in enumerate(zip(got, want)):
        if a is None and b is None:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, (what, i, a.shape, b.shape)
        numerics.assert_close(a.float(), b.float(), terms=terms, depth=2, msg=f'{what} output {i}')


def _state_entries(cs, ps, shape, hd, spatial, bn_mode):
    n, c, h, w = shape
    v = gates._views(cs, ps, n, c, h, w, hd, spatial != gates.SPATIAL_NONE, bn_mode != gates.BN_NONE)
    names = ['gc', 'gl', 'avg', 'max', 'hid'] + (['savg', 'smax', 'o', 'gs', 'sstat'] if spatial else [])
    names += ['a', 'b', 'mean', 'invstd', 'z1'] if bn_mode else []
    return [v[k] for k in names]


@pytest.mark.parametrize('shape', list(SHAPES), ids=str)
def test_the_kernel_sets_and_the_twin_give_the_same_states_and_gradients(shape):
    """Each kernel set (C++, Triton) against the PyTorch twin, argument for argument: y, every
    entry of the states (the maxima bit for bit: the tie masks of the backward compare against
    them) and every gradient of the backward, for CBAM and SE with each BatchNorm mode."""
    for args in gates_cases(SHAPES[shape], numerics.seed()):
        args = _on(args, DEVICE)
        spatial, bn_mode = args[16], args[15]
        hd = args[5].shape[0]
        ref_y, ref_cs, ref_ps = gates.twin_forward(*args, None)
        dy = torch.randn(ref_y.shape, generator=numerics.generator(3)).to(DEVICE)
        bw = (args[1], args[2], *args[5:9], args[9], args[10], args[11], bn_mode, spatial, args[17], True)
        ref_g = gates.twin_backward(dy, args[0], ref_cs, ref_ps, *bw)
        terms = max(args[0][0].numel(), 1024)
        for name, triton in _kernel_sets():
            y, cs, ps = OPS['gates'](*args, triton, False)
            what = f'{name} bn_mode={bn_mode} spatial={spatial}'
            _compare([y], [ref_y], what + ' y', terms)
            got, want = (
                _state_entries(cs, ps, SHAPES[shape], hd, spatial, bn_mode),
                _state_entries(ref_cs, ref_ps, SHAPES[shape], hd, spatial, bn_mode),
            )
            _compare(got, want, what + ' state', terms)
            if bn_mode != gates.BN_OWN:  # (own BN: the statistics, thus x, round otherwise in the twin)
                assert torch.equal(got[3], want[3]), what  # the channel maxima (a value of x, exactly)
            g = OPS['gates_backward'](dy, args[0], cs, ps, *bw, triton, False)
            assert [t is None for t in g] == [t is None for t in ref_g]
            numerics.assert_grads_close([t.float() for t in g], [t.float() for t in ref_g], terms=terms)


@pytest.mark.parametrize('shape', ['odd', 'ties'], ids=str)
def test_the_twin_backward_equals_autograd_of_the_twin_forward(shape):
    """The hand-written backward (the twin's, which the kernels are checked against) against
    PyTorch's autograd through the twin forward in float64: the formulas are right."""
    for args in gates_cases(SHAPES[shape], numerics.seed()):
        args64 = tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        leaves = _trainable(args64)
        spatial, bn_mode = args[16], args[15]
        if bn_mode == gates.BN_BATCH:  # the saved statistics are constants of the BN's backward: its own node
            continue
        y = _twin_forward_autograd(*leaves)
        dy = torch.randn(y.shape, generator=numerics.generator(4), dtype=torch.float64)
        wrt = [i for i, a in enumerate(leaves) if isinstance(a, torch.Tensor) and a.requires_grad]
        wrt = [i for i in wrt if i in (0, 1, 2, 5, 6, 7, 8, 9, 10, 11)]
        auto = torch.autograd.grad(y, [leaves[i] for i in wrt], dy, allow_unused=True)
        _, cs, ps = gates.twin_forward(*args64, None)
        bw = (args64[1], args64[2], *args64[5:9], args64[9], args64[10], args64[11], bn_mode, spatial, args64[17], True)
        g = gates.twin_backward(dy, args64[0], cs.double(), ps.double(), *bw)
        order = {0: 0, 5: 1, 6: 2, 7: 3, 8: 4}
        if spatial:
            order.update({9: 5, 10: 6, 11: 7})
        if bn_mode:
            order.update({1: len(g) - 2, 2: len(g) - 1})
        pairs = [(g[order[i]].double(), a) for i, a in zip(wrt, auto) if i in order]
        numerics.assert_grads_close([p[0] for p in pairs], [p[1] for p in pairs], dtype=torch.float64)


def _twin_forward_autograd(z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial,
                           sbn_batch, eps, seps):  # fmt: skip
    """The twin forward's equations with autograd (no state), for :func:`test_the_twin_backward...`."""
    x = z
    if bn_mode:
        if bn_mode == gates.BN_OWN:
            mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
        else:
            mean, var = bnm, bnv
        x = (z - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None] * bnw[:, None, None] + bnb[:, None, None]
    s = scale if scale is not None else 1.0
    avg, mx = x.mean((2, 3)), x.amax((2, 3))
    hs = torch.relu(avg @ w1.t() + b1)
    if spatial:
        hs = hs + torch.relu(mx @ w1.t() + b1)
    gc = torch.sigmoid(hs @ w2.t() + b2 * (2.0 if spatial else 1.0)) * s
    y = x * gc[:, :, None, None]
    if spatial:
        savg, smax = y.mean(1), y.amax(1)
        desc = torch.stack([savg, smax] if spatial == gates.SPATIAL_AVG_MAX else [smax, savg], 1)
        o = torch.nn.functional.conv2d(desc, cw, padding=cw.shape[-1] // 2)[:, 0]
        m, v = (o.mean(), o.var(unbiased=False)) if sbn_batch else (srm.reshape(()), srv.reshape(()))
        y = y * (torch.sigmoid((o - m) * torch.rsqrt(v + seps) * sw + sb) * s)[:, None]
    return y


@pytest.mark.parametrize('kernel_set', _kernel_sets(), ids=lambda k: k[0])
def test_bam_kernel_sets_equal_the_twin(kernel_set):
    _, triton = kernel_set
    gen = torch.Generator().manual_seed(numerics.seed())
    for shape in ((2, 6, 5, 7), (1, 3, 1, 1), (2, 40, 9, 11)):
        n, ch, h, w = shape
        x = torch.randn(shape, generator=gen).to(DEVICE)
        c, s = (torch.randn(n, ch, generator=gen) * 3).to(DEVICE), (torch.randn(n, h * w, generator=gen) * 3).to(DEVICE)
        dy = torch.randn(shape, generator=gen).to(DEVICE)
        for product, residual in ((False, True), (True, False), (True, True)):
            _compare([OPS['bam_apply'](x, c, s, product, residual, triton, False)],
                     [bam.twin_apply(x, c, s, product, residual, None)], f'bam {shape}', ch * h * w)  # fmt: skip
            numerics.assert_grads_close(
                OPS['bam_backward'](dy, x, c, s, product, residual, triton, False),
                bam.twin_backward(dy, x, c, s, product, residual),
                terms=ch * h * w,
            )


def _autograd_kernel_calls(fn, *args) -> tuple:
    """``fn(*args)`` and how often torch.library's Python autograd kernel of an op ran inside it."""
    import sys

    calls = []

    def profile(frame, event, arg):
        if event == 'call' and frame.f_code.co_name == 'autograd_impl' and '_library' in frame.f_code.co_filename:
            calls.append(1)

    sys.setprofile(profile)
    try:
        out = fn(*args)
    finally:
        sys.setprofile(None)
    return out, len(calls)


def _eager_cases(triton: bool):
    """(name, node call, op, args, differentiable positions) of every eager node: CBAM and SE (after
    a folded BN) and BAM, each through the C++ node (where compiled) and the Python one, and (C++
    kernels only) the 1×1 conv."""
    from cbam_det.ops import ext

    gen = torch.Generator().manual_seed(numerics.seed())
    nodes = [('_Gates', gates._Gates.call)]
    if ext('gates') is not None:
        nodes.append(('GatesNode', ext('gates').gates_node))
    diff = (0, 1, 2, 5, 6, 7, 8, 9, 10, 11)
    cases = [
        (name, call, gates.GATES, gates_cases((2, 6, 5, 7))[i] + (triton, False), diff)
        for i in (1, 9)  # CBAM after a BN in training; SE after one
        for name, call in nodes
    ]
    x, c, s = (
        torch.randn(2, 6, 5, 7, generator=gen),
        torch.randn(2, 6, generator=gen),
        torch.randn(2, 35, generator=gen),
    )
    bam_nodes = [('_Bam', bam._Bam.call)] + ([('BamNode', ext('bam').bam_node)] if ext('bam') is not None else [])
    for name, call in bam_nodes:
        cases.append((name, call, bam.BAM_APPLY, (x, c, s, False, True, triton, False), (0, 1, 2)))
    if not triton:
        w, b = torch.randn(3, 6, generator=gen), torch.randn(3, generator=gen)
        cases.append(('_Pointwise', bam._Pointwise.call, bam.POINTWISE, (x, w, b), (0, 1, 2)))
    return cases


@pytest.mark.parametrize('kernel_set', _kernel_sets(), ids=lambda k: k[0])
def test_the_eager_nodes_skip_the_autograd_kernel_and_equal_the_plain_dispatch(kernel_set, monkeypatch):
    """Each eager node calls its op below the autograd key: torch.library's Python autograd kernel
    never runs (it does in a plain call), and outputs and gradients equal the plain dispatch (the
    fallback where this torch lacks the guard) and the op's registered formula called directly.
    The C++ node has no such fallback: it is compared with the op's formula."""
    from cbam_det.kernels.library import _autograd

    _, triton = kernel_set
    guard = _autograd._GUARD
    assert guard is not None  # both stacks' torch has it; the fallback is tested by removing it
    for name, call, op, args, diff in _eager_cases(triton):
        results = []
        for way in ('guarded', 'no guard', 'op'):
            monkeypatch.setattr(_autograd, '_GUARD', guard if way == 'guarded' else None)
            inputs = tuple(
                a.clone().requires_grad_() if i in diff and a is not None else a
                for i, a in enumerate(_on(args, DEVICE))
            )
            out, calls = _autograd_kernel_calls(call if way != 'op' else op, *inputs)
            y = out[0] if isinstance(out, (tuple, list)) else out
            wanted = [inputs[i] for i in diff if inputs[i] is not None]
            grads = torch.autograd.grad(y, wanted, torch.ones_like(y), allow_unused=True)
            expected = 1 if way == 'op' or (way == 'no guard' and not name.endswith('Node')) else 0
            assert calls == expected, (name, way, calls)
            results.append([y.detach()] + [g for g in grads])
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name


@pytest.mark.skipif(not TRITON, reason="the triton backend on CPU tensors needs Triton's interpreter")
def test_the_families_take_their_python_node_where_the_cpp_module_is_not_compiled():
    """A CBAM, an SE (both after a BatchNorm, as a plugin: the BN folded in) and a BAM: with the
    family's C++ module compiled the call is one C++ node (``GatesNode``, ``BamNode``); without it
    (no compiler, ``CBAM_DET_NO_EXT=1``) one Python node (``_Gates``, ``_Bam``), with outputs and
    gradients equal to the C++ node's."""
    from torch import nn

    from cbam_det import BAM, ops

    def step(make, way: str, names) -> list:
        torch.manual_seed(numerics.seed())
        m, bn = make().train().to(DEVICE), nn.BatchNorm2d(8).train().to(DEVICE)
        x = torch.randn(2, 8, 5, 7, device=DEVICE, requires_grad=True)
        with pytest.MonkeyPatch.context() as mp, kernels.use_backend('triton'):
            if way == 'python':
                mp.setattr(ops, 'ext', lambda family, verbose=False: None)
            y = m(bn(x))
        want = names[0] if way == 'python' else f'torch::autograd::CppNode<cbam_det::{names[1]}>'
        assert y.grad_fn.name() == want, (way, y.grad_fn.name())
        params = [x] + list(m.parameters()) + list(bn.parameters())
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), device=DEVICE).view_as(y)).sum(), params)
        return [y.detach()] + list(grads)

    ways = ('cpp', 'python') if ops.ext('gates') is not None else ('python',)
    for make, names in (
        (lambda: CBAM(8, 2), ('_GatesBackward', 'GatesNode')),
        (lambda: SE(8, 2), ('_GatesBackward', 'GatesNode')),
        (lambda: BAM(8, 2, 1), ('_BamBackward', 'BamNode')),
    ):
        results = [step(make, way, names) for way in ways]
        for a, b in zip(results[0], results[-1]):
            assert torch.equal(a, b)


@pytest.mark.parametrize('kernel_set', _kernel_sets(), ids=lambda k: k[0])
def test_ops_take_any_strides(kernel_set):
    """Inputs in other layouts (a compiled graph may hand a backward formula gradients with other
    strides than the traced ones; channels-last activations): the same results."""
    _, triton = kernel_set
    args = _on(gates_cases(SHAPES['odd'], numerics.seed())[1], DEVICE)
    want = OPS['gates'](*args, triton, False)
    for z in (args[0].to(memory_format=torch.channels_last), args[0].transpose(2, 3).contiguous().transpose(2, 3)):
        got = OPS['gates'](z, *args[1:], triton, False)
        numerics.assert_close(got[0], want[0], msg='y')
        numerics.assert_close(got[1], want[1], msg='channel state')


# ---------------------------------------------------------------- networks under torch.compile

NETWORKS = {
    'resnet50-cbam-plugin': dict(
        type='ResNet',
        depth=50,
        base_channels=16,
        zero_init_residual=False,
        plugins=[dict(cfg=dict(type='CBAM', reduction=4), stages=(True,) * 4, position='after_conv3')],
    ),
    'attnresnet50-se-fused': dict(
        type='AttnResNet', depth=50, base_channels=16, attention=dict(type='SE', reduction=4)
    ),
    'attnresnet18-bam': dict(type='AttnResNet', depth=18, base_channels=16, bam=dict(type='BAM', reduction=4)),
}
NETWORK_OPS = {
    ('resnet50-cbam-plugin', 'train'): {'gates', 'update_stats_'},
    ('resnet50-cbam-plugin', 'eval'): {'gates'},
    ('attnresnet50-se-fused', 'train'): {'gates'},
    ('attnresnet50-se-fused', 'eval'): {'gates'},
    ('attnresnet18-bam', 'train'): {'bam_apply', 'pointwise_conv'},
    ('attnresnet18-bam', 'eval'): {'bam_apply', 'pointwise_conv'},
}


def _network(name):
    from mmdet.registry import MODELS

    torch.manual_seed(numerics.seed())
    model = MODELS.build(NETWORKS[name])
    for m in model.modules():  # away from the init (spatial BN γ = 0) so every path carries gradient
        if isinstance(m, torch.nn.BatchNorm2d) and m.num_features == 1:
            torch.nn.init.constant_(m.weight, 0.7)
    return model


def _graph_ops(explanation) -> set:
    return {
        str(node.target).split('.')[1]
        for g in explanation.graphs
        for node in g.graph.nodes
        if str(node.target).startswith('cbam_det.')
    }


@no_ext
@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('name', list(NETWORKS))
def test_compiled_network_is_one_graph_of_the_ops(name, mode):
    """``torch._dynamo.explain`` on the ``cpu`` backend: one graph, no break, the ``cbam_det::``
    ops in it (the BatchNorms before the fused SE are PyTorch's under compile)."""
    model = _network(name)
    model.train(mode == 'train')  # (mmdet's ResNet.train returns None)
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    with kernels.use_backend('cpu'), torch.set_grad_enabled(mode == 'train'):
        explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    assert _graph_ops(explanation) == NETWORK_OPS[(name, mode)]


@no_ext
@pytest.mark.parametrize('name', list(NETWORKS))
def test_compiled_network_matches_eager(name):
    """fullgraph compile (AOT autograd: the ops' registered autograd formulas traced) against eager
    on the ``cpu`` backend: outputs, every parameter gradient, BN buffers; then eval outputs."""
    eager = _network(name)
    eager.train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend='aot_eager', fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    depth = 50 if '50' in name else 18
    torch._dynamo.reset()
    with kernels.use_backend('cpu'):
        ref = eager(x)
        sum(o.square().sum() for o in ref).backward()
        out = compiled(x)
        sum(o.square().sum() for o in out).backward()
        for a, b in zip(out, ref):
            numerics.assert_close(a, b, depth=depth)
        names = [n for n, _ in eager.named_parameters()]
        numerics.assert_grads_close(
            [q.grad for q in compiled_model.parameters()],
            [p.grad for p in eager.parameters()],
            depth=2 * depth,
            names=names,
        )
        for (buf, b), c in zip(eager.named_buffers(), compiled_model.buffers()):
            numerics.assert_close(c, b, depth=depth, msg=buf)
        eager.eval(), compiled_model.eval()
        with torch.no_grad():
            for a, b in zip(compiled(x), eager(x)):
                numerics.assert_close(a, b, depth=depth)


# state of cbam_det a compiled graph must not guard on (a guard there would recompile as it changes)
STATE = re.compile(r'os\.environ|_state\b|_active\b|_KERNEL_MODULES|triton_ok|_failed|_sms|_backend_cache|_gates_args')


@no_ext
def test_three_shapes_compile_three_times_with_no_guard_on_cbam_det_state():
    """``dynamic=False``: one compile per input shape, none more; the guards name the backend
    request and no cache, counter or environment variable of cbam_det."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = CBAM(16, 4).train()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=False)
    with kernels.use_backend('cpu'):
        for shape in ((2, 16, 9, 11), (1, 16, 20, 8), (2, 16, 5, 5), (2, 16, 9, 11), (1, 16, 20, 8)):
            x = torch.randn(shape, requires_grad=True)
            compiled(x).sum().backward()
        explanation = torch._dynamo.explain(model)(torch.randn(2, 16, 9, 11))
    assert counter.frame_count == 3
    guards = [code for g in explanation.out_guards for code in (g.code_list or [])]
    assert not [code for code in guards if STATE.search(code)]
    assert any("_backend == 'cpu'" in code for code in guards)  # use_backend is honoured: a change recompiles


@no_ext
def test_a_compiled_model_follows_use_backend():
    """A compiled model called under another backend recompiles for it (the request is guarded)."""
    torch._dynamo.reset()
    model = CBAM(16, 4).eval()
    compiled = torch.compile(model, backend='aot_eager')
    x = torch.randn(2, 16, 9, 11)
    seen = {}
    for backend in ('cpu', 'torch'):
        with kernels.use_backend(backend), torch.no_grad():
            explanation = torch._dynamo.explain(model)(x)
            seen[backend] = _graph_ops(explanation)
            numerics.assert_close(compiled(x), model(x))
    assert seen == {'cpu': {'gates'}, 'torch': set()}


@no_ext
def test_export_keeps_the_ops():
    """``torch.export`` of CBAM (eval) on the ``cpu`` backend: the op is in the exported graph
    and ``ep.module()`` equals eager."""
    torch.manual_seed(numerics.seed())
    model = CBAM(16, 4).eval()
    torch.nn.init.constant_(model.spatial_gate.bn.weight, 0.7)
    x = torch.randn(2, 16, 9, 11)
    with kernels.use_backend('cpu'), torch.no_grad():
        ep = torch.export.export(model, (x,))
        targets = {str(node.target) for node in ep.graph.nodes}
        assert 'cbam_det.gates.default' in targets, targets
        numerics.assert_close(ep.module()(x), model(x))


@no_ext
@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('kind', ['cbam', 'se'])
def test_auto_under_compile_takes_what_was_measured_cheaper(kind, mode):
    """``auto`` under torch.compile on the CPU: the ops for CBAM's training step, inductor's torch
    path for inference and for what was not measured compiled (SE) (docs/performance.md,
    "Under torch.compile")."""
    torch._dynamo.reset()
    model = (CBAM if kind == 'cbam' else SE)(16, 4).train(mode == 'train')
    x = torch.randn(2, 16, 9, 11, requires_grad=mode == 'train')
    with kernels.use_backend('auto'), torch.set_grad_enabled(mode == 'train'):
        explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    ops = {'gates', 'update_stats_'} if (kind, mode) == ('cbam', 'train') else set()
    assert _graph_ops(explanation) == ops
