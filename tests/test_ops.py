"""The cbam_det operators (cbam_det/kernels/library): ``torch.library.opcheck`` of every op, their
values and gradients against PyTorch, their CUDA (Triton) kernels against the CPU ones (in Triton's
interpreter here; on the GPU where there is one), and the networks under ``torch.compile`` and
``torch.export``: one graph, the ops in it, outputs, gradients and BN buffers equal to eager."""

import copy
import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from cbam_det import CBAM, kernels
from cbam_det.kernels import triton_gate
from cbam_det.kernels.library import OPS, bam, convs, gates

from . import numerics

pytestmark = pytest.mark.skipif(os.environ.get('CBAM_DET_NO_EXT') == '1', reason='CBAM_DET_NO_EXT=1: no C++ kernels')
CUDA = torch.cuda.is_available() and not triton_gate.INTERPRETED
SHAPES = {'odd': (2, 6, 5, 7), 'one-pixel': (3, 4, 1, 1), 'ties': (2, 8, 6, 6)}


def _x(shape, gen):
    x = torch.randn(shape, generator=gen)
    return x if shape != SHAPES['ties'] else (x * 2).round() / 2  # many tied maxima


def op_cases(shape, seed: int = 0):
    """(op name, op, args) for every op at ``shape``; small tensors positive where they are gates."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = _x(shape, gen)
    gc, gs = torch.rand(n, c, generator=gen) + 0.1, torch.rand(n, h * w, generator=gen) + 0.1
    gc = (gc * 4).round() / 4 if shape == SHAPES['ties'] else gc  # x·g_c ties too
    dy = torch.randn(shape, generator=gen)
    smax = (x * gc[:, :, None, None]).amax(1).flatten(1)  # the spatial max, ties included
    wa, wm = torch.randn(n, h * w, generator=gen), torch.randn(n, h * w, generator=gen)
    cl, sl = torch.randn(n, c, generator=gen), torch.randn(n, h * w, generator=gen)
    d = torch.randn(n, 2, h, w, generator=gen)
    ws, wp, bp = torch.randn(1, 2, 7, 7, generator=gen), torch.randn(5, c, generator=gen), torch.randn(5, generator=gen)
    return [
        ('channel_pool', (x,)),
        ('spatial_pool', (x, gc)),
        ('apply_gates', (x, gc, gs)),
        ('apply_gates', (x, gc, None)),
        ('gate_grads', (dy, x, gc, gs)),
        ('se_gate_grad', (dy, x)),
        ('spatial_pool_grad', (x, gc, smax, wa, wm)),
        ('bam_apply', (x, cl, sl, False, True)),
        ('bam_apply', (x, cl, sl, True, False)),
        ('bam_grads', (dy, x, cl, sl, True, True)),
        ('spatial_conv', (d, ws)),
        ('spatial_conv_grad', (torch.randn(n, 1, h, w, generator=gen), d, ws)),
        ('pointwise_conv', (x, wp, bp)),
        ('pointwise_conv', (x, wp, None)),
        ('pointwise_conv_input_grad', (torch.randn(n, 5, h, w, generator=gen), wp)),
    ]


def _ids():
    return [f'{name}-{i}' for i, (name, _) in enumerate(op_cases(SHAPES['odd']))]


def test_every_op_is_covered():
    assert {name for name, _ in op_cases(SHAPES['odd'])} == set(OPS)


@pytest.mark.parametrize('shape', list(SHAPES), ids=str)
@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('case', range(len(_ids())), ids=_ids())
def test_opcheck(case, mode, shape):
    """Schema, fake (shapes, strides, dtypes), autograd registration and AOT dispatch of each op,
    with gradients wanted (train) and not (eval). The gradient ops are not differentiable
    themselves (no double backward, as the eager path's ``once_differentiable``): eval only."""
    name, args = op_cases(SHAPES[shape])[case]
    if mode == 'train' and name not in FORWARD:
        pytest.skip('a gradient op: no double backward')
    if mode == 'train':
        args = tuple(
            a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        )
    opcheck(OPS[name], args)


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_opcheck_after_a_batchnorm(mode):
    """The gating ops on a BatchNorm's output (a non-leaf in training), as in a block."""
    gen = torch.Generator().manual_seed(numerics.seed())
    bn = torch.nn.BatchNorm2d(6).train(mode == 'train')
    z = torch.randn(2, 6, 5, 7, generator=gen, requires_grad=mode == 'train')
    x = bn(z) if mode == 'train' else bn(z).detach()
    gc, gs = torch.rand(2, 6, generator=gen), torch.rand(2, 35, generator=gen)
    for op, args in ((gates.channel_pool, (x,)), (gates.spatial_pool, (x, gc)), (gates.apply_gates, (x, gc, gs))):
        opcheck(op, args)


def _strided(t):
    """``t``'s values in a non-contiguous layout (the last two dims' strides swapped)."""
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        return t
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def test_cpu_kernels_take_any_strides():
    """Every op gives the same result for inputs in another layout: a compiled graph may hand a
    backward formula gradients whose strides differ from the traced ones (torch 2.5.1)."""
    for name, args in op_cases(SHAPES['odd'], numerics.seed()):
        want, got = OPS[name](*args), OPS[name](*[_strided(a) for a in args])
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(g, w, rtol=0, atol=0, msg=name)


def _reference(name, args):
    """The op's outputs computed with PyTorch operations (float64)."""
    a = [t.double() if isinstance(t, torch.Tensor) else t for t in args]
    if name == 'channel_pool':
        return a[0].mean((2, 3)), a[0].amax((2, 3))
    if name == 'spatial_pool':
        y = a[0] * a[1][:, :, None, None]
        return y.mean(1).flatten(1), y.amax(1).flatten(1)
    if name == 'apply_gates':
        n, c, h, w = a[0].shape
        g = a[1][:, :, None, None] if a[2] is None else a[1][:, :, None, None] * a[2].view(n, 1, h, w)
        return (a[0] * g,)
    if name == 'bam_apply':
        x, cl, sl, product, residual = a
        n, c, h, w = x.shape
        t = cl[:, :, None, None] * sl.view(n, 1, h, w) if product else cl[:, :, None, None] + sl.view(n, 1, h, w)
        return (x * (float(residual) + torch.sigmoid(t)),)
    if name == 'spatial_conv':
        return (F.conv2d(a[0], a[1], padding=a[1].shape[-1] // 2),)
    if name == 'pointwise_conv':
        return (F.conv2d(a[0], a[1][:, :, None, None], a[2]),)
    raise KeyError(name)


FORWARD = ('channel_pool', 'spatial_pool', 'apply_gates', 'bam_apply', 'spatial_conv', 'pointwise_conv')


@pytest.mark.parametrize('shape', list(SHAPES), ids=str)
def test_ops_and_their_gradients_equal_pytorch(shape):
    """Every forward op and the gradients of all its inputs (its backward ops included) against
    PyTorch in float64; tied maxima share the gradient evenly, as ``amax``."""
    for i, (name, args) in enumerate(op_cases(SHAPES[shape], numerics.seed())):
        if name not in FORWARD:
            continue
        leaves = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        ref_leaves = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        out = OPS[name](*leaves)
        out = out if isinstance(out, tuple) else (out,)
        ref = _reference(name, ref_leaves)
        ups = [torch.randn_like(o) for o in out]
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        ref_tensors = [t for t in ref_leaves if isinstance(t, torch.Tensor)]
        grads = torch.autograd.grad(out, tensors, ups)
        ref_grads = torch.autograd.grad(ref, ref_tensors, [u.double() for u in ups])
        terms = max(args[0].numel() // args[0].shape[0], 49)
        for got, want in zip(out, ref):
            numerics.assert_close(got, want, terms=terms, msg=f'{name} case {i}')
        for got, want in zip(grads, ref_grads):
            numerics.assert_close(got, want, depth=2, terms=terms, msg=f'{name} case {i} gradient')


@pytest.mark.skipif(not (triton_gate.INTERPRETED or CUDA), reason='no GPU and Triton interpreter off')
@pytest.mark.parametrize('shape', ['odd', 'ties'], ids=str)
def test_cuda_kernels_equal_the_cpu_kernels(shape):
    """Each op's CUDA kernel (Triton: in the interpreter on CPU tensors, on the GPU where there is
    one) against its CPU kernel, same arguments, same results."""
    from cbam_det.ops import gate_ext

    if gate_ext() is None:
        pytest.skip('the C++ kernels (the reference here) do not compile on this machine')
    kernels_by_name = {**gates.CUDA_KERNELS, **bam.CUDA_KERNELS}
    device = 'cuda' if CUDA else 'cpu'
    for name, args in op_cases(SHAPES[shape], numerics.seed()):
        if name not in kernels_by_name:
            assert name in convs.__all__  # CPU only: cuDNN has these on CUDA
            continue
        want = OPS[name](*args)
        got = kernels_by_name[name](*[a.to(device) if isinstance(a, torch.Tensor) else a for a in args])
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert g.shape == w.shape and g.dtype == w.dtype, name
            numerics.assert_close(g.cpu(), w, terms=args[0][0].numel(), msg=name)


@pytest.mark.skipif(
    not CUDA, reason='needs a GPU: tracing wrap_triton in the interpreter is unsupported (pytorch#152868)'
)
def test_opcheck_on_cuda():
    for name, args in op_cases(SHAPES['odd']):
        if name in gates.CUDA_KERNELS or name in bam.CUDA_KERNELS:
            opcheck(OPS[name], tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))


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
    'resnet50-cbam-plugin': {'channel_pool', 'spatial_pool', 'apply_gates', 'spatial_conv'},
    'attnresnet50-se-fused': {'channel_pool', 'apply_gates'},
    'attnresnet18-bam': {'bam_apply', 'pointwise_conv'},
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


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('name', list(NETWORKS))
def test_compiled_network_is_one_graph_of_the_ops(name, mode):
    """``torch._dynamo.explain`` on the ``cpu`` backend: one graph, no break, the ``cbam_det::``
    ops in it."""
    model = _network(name)
    model.train(mode == 'train')  # (mmdet's ResNet.train returns None)
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    with kernels.use_backend('cpu'), torch.set_grad_enabled(mode == 'train'):
        explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    assert _graph_ops(explanation) == NETWORK_OPS[name]


@pytest.mark.parametrize('name', list(NETWORKS))
def test_compiled_network_matches_eager(name):
    """fullgraph compile (AOT autograd: the ops' autograd formulas traced) against eager on the
    ``cpu`` backend: outputs, every parameter gradient, BN buffers; then eval outputs."""
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
STATE = re.compile(r'os\.environ|_state\b|_active\b|_CHECKED|triton_ok|_bn_node_state|_sms')


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
    assert seen == {'cpu': NETWORK_OPS['resnet50-cbam-plugin'], 'torch': set()}


def test_export_keeps_the_ops():
    """``torch.export`` of CBAM (eval) on the ``cpu`` backend: the ops are in the exported graph
    and ``ep.module()`` equals eager."""
    torch.manual_seed(numerics.seed())
    model = CBAM(16, 4).eval()
    torch.nn.init.constant_(model.spatial_gate.bn.weight, 0.7)
    x = torch.randn(2, 16, 9, 11)
    with kernels.use_backend('cpu'), torch.no_grad():
        ep = torch.export.export(model, (x,))
        targets = {str(node.target) for node in ep.graph.nodes}
        assert {'cbam_det.channel_pool.default', 'cbam_det.spatial_pool.default'} <= targets, targets
        numerics.assert_close(ep.module()(x), model(x))


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('kind', ['cbam', 'se'])
def test_auto_under_compile_takes_what_was_measured_cheaper(kind, mode):
    """``auto`` under torch.compile on the CPU: the ops for CBAM's training step, inductor's torch
    path for inference and for what was not measured compiled (SE) (docs/performance.md,
    "Under torch.compile")."""
    from cbam_det import SE

    torch._dynamo.reset()
    model = (CBAM if kind == 'cbam' else SE)(16, 4).train(mode == 'train')
    x = torch.randn(2, 16, 9, 11, requires_grad=mode == 'train')
    with kernels.use_backend('auto'), torch.set_grad_enabled(mode == 'train'):
        explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    ops = {'channel_pool', 'spatial_pool', 'apply_gates'} if (kind, mode) == ('cbam', 'train') else set()
    assert _graph_ops(explanation) == ops
