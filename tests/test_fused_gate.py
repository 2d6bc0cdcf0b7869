"""The C++ CPU kernels (cbam_det/ops) against plain PyTorch: CBAM and SE, alone and with the
BatchNorm before them folded in (AttnResNet's fused blocks, and a plugin after a block's BN), BAM,
and its 1×1 reduction conv."""

import contextlib
import copy
import os

import pytest
import torch
from mmdet.registry import MODELS
from torch import nn

from cbam_det import BAM, CBAM, SE, kernels, ops
from cbam_det.kernels import dispatch as _dispatch
from cbam_det.kernels.library import bam as bam_ops
from cbam_det.kernels.library import gates as gate_ops
from cbam_det.ops import gate_ext

from . import numerics

no_ext = pytest.mark.skipif(
    os.environ.get('CBAM_DET_NO_EXT') == '1', reason='CBAM_DET_NO_EXT=1: the PyTorch fallback is under test'
)


@no_ext
def test_kernels_compiled():
    assert gate_ext() is not None, 'the fused CPU kernels did not compile (see the warning above)'


def test_kernels_are_built_for_the_named_cpu_target(monkeypatch):
    """CBAM_DET_CPU_ARCH names gcc's -march (default native): it is in the flags and the cache
    key; a bad name is refused with the allowed form; with a baseline x86-64 target set (as
    .ci/run's second pass does), the built library holds no AVX instruction."""
    import shutil
    import subprocess

    from cbam_det import ops

    arch = ops.cpu_arch()
    assert f'-march={arch}' in ops._flags()[0]
    key = ops.build_dir()
    monkeypatch.setenv('CBAM_DET_CPU_ARCH', 'x86-64-v3' if arch != 'x86-64-v3' else 'x86-64-v2')
    assert ops.build_dir() != key  # another target, another build
    monkeypatch.setenv('CBAM_DET_CPU_ARCH', 'native; rm -rf /')
    with pytest.raises(ValueError, match=r"CBAM_DET_CPU_ARCH='native; rm -rf /' is not a target name; allowed: native"):
        ops.cpu_arch()
    monkeypatch.undo()
    if arch in ('x86-64', 'x86-64-v2') and gate_ext() is not None and shutil.which('objdump'):
        libs = [os.path.join(d, f) for d, _, files in os.walk(key) for f in files if f.endswith('.so')]
        assert len(libs) == len(ops.FAMILIES)
        for lib in libs:
            dis = subprocess.run(['objdump', '-d', '--no-show-raw-insn', lib], capture_output=True, text=True).stdout
            assert dis and '%ymm' not in dis and '%zmm' not in dis and 'vfmadd' not in dis


@contextlib.contextmanager
def plain_pytorch(monkeypatch=None):
    """The eager reference: the ``torch`` backend (tests/test_lean.py checks it against the
    modules' equations)."""
    with kernels.use_backend('torch'):
        yield


def make(kind: str, c: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(numerics.seed(seed))
    m = {
        'cbam': lambda: CBAM(c, reduction=4),
        'cbam_official': lambda: CBAM(c, 4, spatial_pool='max_avg'),
        'se': lambda: SE(c, 4),
    }[kind]()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def step(fn, x: torch.Tensor, params):
    x = x.detach().clone().requires_grad_()
    params = [p for p in params if p.requires_grad]
    y = fn(x)
    w = torch.randn(y.shape, generator=numerics.generator(3))
    grads = torch.autograd.grad((y * w).sum(), [x] + params, allow_unused=True)
    return y.detach(), grads


def assert_same(a, b):
    """Outputs (one layer) and gradients (two: forward and backward) within float32 rounding;
    every gradient is judged against the largest one of the step: a parameter's gradient is a
    sum over the batch and the pixels whose terms are of that size (a bias right before a
    training BatchNorm has a true gradient of 0, and the terms' float noise is all there is)."""
    ya, ga = a
    yb, gb = b
    numerics.assert_close(ya, yb, msg='output')
    numerics.assert_grads_close(ga, gb)


@pytest.mark.parametrize('kind', ['cbam', 'cbam_official', 'se'])
@pytest.mark.parametrize('shape', [(2, 32, 9, 13), (1, 48, 7, 7), (3, 32, 1, 1), (2, 16, 1, 17)], ids=str)
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_fused_module_equals_plain_pytorch(kind, shape, train, monkeypatch):
    x = torch.randn(shape)
    assert kernels.select_backend(x) == 'cpu' or os.environ.get('CBAM_DET_NO_EXT') == '1'
    fused, ref = make(kind, shape[1]).train(train), make(kind, shape[1]).train(train)
    got = step(fused, x, fused.parameters())
    with plain_pytorch(monkeypatch):
        want = step(ref, x, ref.parameters())
    assert_same(got, want)
    for bf, br in zip(fused.buffers(), ref.buffers()):  # the spatial gate's BN statistics
        numerics.assert_close(bf, br)


@pytest.mark.parametrize('combine', ['sum', 'product'])
@pytest.mark.parametrize('residual', [True, False])
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_fused_bam_equals_plain_pytorch(combine, residual, train, monkeypatch):
    x = torch.randn(2, 32, 9, 13)
    fused, ref = (BAM(32, 4, 2, combine=combine, residual=residual).train(train) for _ in range(2))
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():  # logits of both signs and magnitudes up to ~10: exercises the sigmoid
        for m in (fused, ref):
            torch.manual_seed(numerics.seed(5))
            m.spatial_att.final.weight.normal_(0, 2)
            m.channel_att.fc2.weight.normal_(0, 2)
    got = step(fused, x, fused.parameters())
    with plain_pytorch(monkeypatch):
        want = step(ref, x, ref.parameters())
    assert_same(got, want)
    for bf, br in zip(fused.buffers(), ref.buffers()):
        numerics.assert_close(bf, br)


def test_bam_inplace_inference_writes_into_its_input():
    bam = BAM(16, 4, inplace=True).eval()
    x = torch.randn(2, 16, 6, 8)
    with torch.no_grad():
        ref = BAM(16, 4).eval()
        ref.load_state_dict(bam.state_dict())
        want = ref(x)
        got = bam(x)
    assert got.data_ptr() == x.data_ptr()
    numerics.assert_close(got, want)


def test_attn_resnet_makes_its_attention_inplace_unless_told():
    b = MODELS.build(
        dict(type='AttnResNet', depth=18, base_channels=16, attention=dict(type='CBAM'), bam=dict(type='BAM'))
    )
    assert b.layer1[0].cbam.inplace and b.bam1.inplace
    b = MODELS.build(dict(type='AttnResNet', depth=18, base_channels=16, attention=dict(type='SE', inplace=False)))
    assert not b.layer1[0].se.inplace


def test_fused_ties_share_the_max_gradient_like_torch(monkeypatch):
    """Integer-valued input: many tied maxima over H×W and over C."""
    x = torch.randint(0, 3, (2, 16, 5, 6)).float()
    fused, ref = make('cbam', 16), make('cbam', 16)
    got = step(fused, x, fused.parameters())
    with plain_pytorch(monkeypatch):
        want = step(ref, x, ref.parameters())
    assert_same(got, want)


def bn_variants():
    def bn(**kw):
        torch.manual_seed(numerics.seed(1))
        m = nn.BatchNorm2d(24, **kw)
        if m.affine:
            with torch.no_grad():
                m.weight.normal_(0, 1)  # negative γ too: the channel max comes from min(z)
                m.weight[:3] = 0  # zero_init_residual-like channels: x is constant
                m.bias.normal_(0, 1)
        if m.track_running_stats:
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2)
        return m

    frozen = bn().eval()
    frozen.requires_grad_(False)
    return {
        'train': bn(),
        'eval': bn().eval(),
        'cumulative_momentum': bn(momentum=None),
        'no_affine': bn(affine=False),
        'no_running_stats': bn(track_running_stats=False),
        'frozen': frozen,
    }


@pytest.mark.parametrize('kind', ['cbam', 'se'])
@pytest.mark.parametrize('variant', list(bn_variants()))
def test_forward_with_bn_equals_bn_then_module(kind, variant, monkeypatch):
    z = torch.randn(2, 24, 6, 10) * 3 + 5  # |mean| > std: the shifted moments keep the variance exact
    bn_f, bn_r = bn_variants()[variant], bn_variants()[variant]
    att_f, att_r = make(kind, 24), make(kind, 24)
    params_f = list(att_f.parameters()) + list(bn_f.parameters())
    params_r = list(att_r.parameters()) + list(bn_r.parameters())
    for _ in range(2):  # twice: running statistics feed the second step
        got = step(lambda t: att_f.forward_with_bn(t, bn_f), z, params_f)
        with plain_pytorch(monkeypatch):
            want = step(lambda t: att_r.forward_with_bn(t, bn_r), z, params_r)
        assert_same(got, want)
        for bf, br in zip(bn_f.buffers(), bn_r.buffers()):
            numerics.assert_close(bf, br)


def _op_calls(fn) -> dict:
    """The cbam_det op calls of ``fn()``, by name (torch.profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    calls = {}
    for e in prof.events():
        if e.name.startswith('cbam_det::'):
            calls[e.name] = calls.get(e.name, 0) + 1
    return out, calls


@no_ext
@pytest.mark.parametrize('kind', ['cbam', 'cbam_official', 'se'])
@pytest.mark.parametrize('variant', ['none'] + list(bn_variants()))
@pytest.mark.parametrize('inplace', [False, True], ids=['copy', 'inplace'])
def test_inference_in_one_call_equals_plain_pytorch(kind, variant, inplace, monkeypatch):
    """No-grad inference runs the whole module in one op call (in place with ``inplace``), and one
    more per BatchNorm whose running statistics move; the result equals the plain PyTorch module."""
    z = torch.randn(2, 24, 6, 10) * 3 + 1
    att_f, att_r = make(kind, 24).eval(), make(kind, 24).eval()
    for att in (att_f, att_r):
        att.inplace = inplace
        if kind != 'se':  # non-trivial running statistics in the spatial gate's BN
            att.spatial_gate.bn.running_mean.fill_(0.7)
            att.spatial_gate.bn.running_var.fill_(2.5)
    bn_f, bn_r = (bn_variants()[variant], bn_variants()[variant]) if variant != 'none' else (None, None)
    x = z.clone()
    with torch.no_grad():
        got, calls = _op_calls(lambda: att_f(x) if bn_f is None else att_f.forward_with_bn(x, bn_f))
        with plain_pytorch(monkeypatch):
            want = att_r(z.clone()) if bn_r is None else att_r(bn_r(z.clone()))
    numerics.assert_close(got, want, depth=2)  # the folded BN and the module
    updates = int(variant in ('train', 'cumulative_momentum', 'no_affine'))  # a BN in training that tracks
    foldable = variant != 'no_affine'
    if foldable:
        assert calls == {'cbam_det::gates_' if inplace and not updates else 'cbam_det::gates': 1} | (
            {'cbam_det::update_stats_': updates} if updates else {}
        ), calls
        assert (got.data_ptr() == x.data_ptr()) == (inplace and not updates)
    if bn_f is not None:
        for bf, br in zip(bn_f.buffers(), bn_r.buffers()):
            numerics.assert_close(bf, br)


def backbone(depth: int, att: str, fuse: bool, seed: int = 0):
    torch.manual_seed(numerics.seed(seed))
    m = MODELS.build(
        dict(
            type='AttnResNet',
            depth=depth,
            base_channels=16,
            attention=dict(type=att),
            norm_eval=False,
            zero_init_residual=False,
            fuse_attention=fuse,
        )
    )
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.normal_(1, 0.3)
                mod.bias.normal_(0, 0.3)
    return m


@pytest.mark.parametrize('depth,att', [(50, 'CBAM'), (18, 'SE'), (18, 'CBAM')])
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_fused_backbone_equals_unfused(depth, att, train):
    fused = backbone(depth, att, True)
    plain = copy.deepcopy(fused)
    for blk in plain.modules():
        if hasattr(blk, 'fuse_attention'):
            blk.fuse_attention = False
    fused.train(train), plain.train(train)
    x = torch.randn(2, 3, 48, 80)
    outs = []
    for m in (fused, plain):
        y = m(x)
        grads = torch.autograd.grad(sum((o * o).mean() for o in y), list(m.parameters()))
        outs.append((y, grads))
    for a, b in zip(outs[0][0], outs[1][0]):  # through every layer of the network
        numerics.assert_close(a, b, depth=depth, msg='output')
    names = [name for name, _ in fused.named_parameters()]
    numerics.assert_grads_close(outs[0][1], outs[1][1], depth=2 * depth, names=names)  # there and back
    for (name, a), b in zip(fused.named_buffers(), plain.buffers()):
        numerics.assert_close(a, b, depth=depth, msg=name)
    assert list(fused.state_dict()) == list(plain.state_dict())


def kept_elements(out: torch.Tensor) -> int:
    """Elements of the distinct non-parameter tensors the autograd graph of ``out`` keeps
    (saved tensors of every node, custom functions' saved tensors and ctx attributes)."""
    storages, seen, stack = {}, set(), [out.grad_fn]

    def add(t):
        if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter) and t.numel():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
            stack.append(t.grad_fn)
        elif isinstance(t, (list, tuple)):
            for u in t:
                add(u)
        elif isinstance(t, dict):
            for u in t.values():
                add(u)

    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith('_saved_'):
                add(getattr(node, name))
        if hasattr(node, 'saved_tensors'):  # a custom autograd function's ctx
            add(node.saved_tensors)
            add(dict(vars(node)))
        stack.extend(f for f, _ in node.next_functions)
    return sum(storages.values())


def mmdet_block(att=None, inplace=False, **kw) -> nn.Module:
    """Second bottleneck of stage 1 of a thin mmdet ResNet-50, the attention as a plugin."""
    torch.manual_seed(numerics.seed())
    plugins = (
        None if att is None else [dict(cfg=dict(type=att, inplace=inplace), stages=(True,) * 4, position='after_conv3')]
    )
    block = MODELS.build(dict(type='ResNet', depth=50, base_channels=16, plugins=plugins, **kw)).layer1[1]
    block.train()
    return block


@no_ext
def test_fused_block_keeps_no_more_for_backward_than_the_plain_block(monkeypatch):
    """Memory: the fused BN + CBAM block, and a CBAM/SE plugin right after the block's last BN
    (which computes from the BN's saved input), keep no full-size tensor beyond the plain block's:
    only their states (gates, pooled maps: a few per-channel and per-pixel values). Under
    saved-tensor hooks the plugin falls back to keeping the BN output. The saved tensors are read
    from the graph's nodes, so the Python node stands in for the C++ one here (it saves the same
    tensors: the input, the two states and the parameters); the C++ node's are checked below."""
    monkeypatch.setattr(gate_ops, 'eager_node_of_gates', lambda: gate_ops._Gates.call)
    x = torch.randn(2, 64, 40, 48, requires_grad=True)
    full = 2 * 64 * 40 * 48
    lay = gate_ops.layout(2, 64, 40 * 48, 64 // 16, True, True)
    states = lay.csize + lay.psize
    plain = MODELS.build(dict(type='AttnResNet', depth=50, base_channels=16)).layer1[1].train()
    fused = (
        MODELS.build(dict(type='AttnResNet', depth=50, base_channels=16, attention=dict(type='CBAM'))).layer1[1].train()
    )
    n_plain = kept_elements(plain(x))
    assert n_plain == kept_elements(mmdet_block()(x))
    for block in (fused, mmdet_block('CBAM'), mmdet_block('CBAM', inplace=True), mmdet_block('SE')):
        assert n_plain - 4 * 64 <= kept_elements(block(x)) <= n_plain + states  # BN statistics: 2-4 × C
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert kept_elements(mmdet_block('CBAM')(x)) >= n_plain + full


@no_ext
def test_the_cpp_node_keeps_the_bn_output_only_under_saved_tensor_hooks():
    """The C++ node's saved tensors cannot be read from Python; a tensor that the graph keeps keeps
    its Python object alive, so a weak reference to the BatchNorm's output tells whether a plugin
    after it keeps that output: not when it folds the BN in, yes under saved-tensor hooks."""
    import weakref

    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    for make in (lambda: CBAM(16, 4), lambda: SE(16, 4)):
        for hooks in (False, True):
            bn, m = nn.BatchNorm2d(16).train(), make().train()
            with kernels.use_backend('cpu'), contextlib.ExitStack() as stack:
                if hooks:
                    stack.enter_context(torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t))
                out = bn(x)
                kept = weakref.ref(out)
                y = m(out)
                del out
            assert y.grad_fn.name() == 'torch::autograd::CppNode<cbam_det::GatesNode>'
            assert (kept() is not None) == hooks, (type(m).__name__, hooks)


@no_ext
@pytest.mark.parametrize('kind', ['cbam', 'cbam_official', 'se'])
@pytest.mark.parametrize('variant', list(bn_variants()))
@pytest.mark.parametrize('inplace', [False, True], ids=['copy', 'inplace'])
def test_module_after_bn_equals_plain_pytorch(kind, variant, inplace, monkeypatch):
    """A plugin fed by a BatchNorm computes from the BN's saved input (affine BN with a
    trainable bias) or falls back; either way outputs, every gradient and the BN buffers
    match plain PyTorch, ``inplace`` or not."""
    z = torch.randn(2, 24, 6, 10) * 3 + 5
    bn_f, bn_r = bn_variants()[variant], bn_variants()[variant]
    att_f, att_r = make(kind, 24), make(kind, 24)
    att_f.inplace = inplace
    params_f = list(att_f.parameters()) + list(bn_f.parameters())
    params_r = list(att_r.parameters()) + list(bn_r.parameters())
    sources = []
    spy = _dispatch._bn_source
    monkeypatch.setattr(_dispatch, '_bn_source', lambda t: sources.append(spy(t)) or sources[-1])

    def fused(t):
        return att_f(bn_f(t))

    for _ in range(2):  # twice: running statistics feed the second step
        got = step(fused, z, params_f)
        with plain_pytorch(monkeypatch):
            want = step(lambda t: att_r(bn_r(t)), z, params_r)
        assert_same(got, want)
        for bf, br in zip(bn_f.buffers(), bn_r.buffers()):
            numerics.assert_close(bf, br)
    used = variant not in ('no_affine', 'frozen')  # no trainable bias on the node: falls back
    assert sources and all((s is not None) == used for s in sources) or os.environ.get('CBAM_DET_NO_EXT') == '1'


@no_ext
@pytest.mark.parametrize('kind', ['cbam', 'se'])
def test_bn_node_guard_failure_falls_back_to_the_plain_graph(kind, monkeypatch):
    """The plugin-after-BN path reads private fields of torch's BatchNorm autograd node. Where
    a torch lacks one (simulated by asking the guard for a field no torch has), the guard
    fails, the plugin keeps the plain graph (it keeps the BN output) and outputs, gradients
    and BN buffers equal both the node path and plain PyTorch."""
    z = torch.randn(2, 24, 6, 10) * 3 + 5
    assert _dispatch.bn_node_readable(), 'this torch should pass the guard'
    results, kept = [], []
    for fields in (_dispatch._BN_NODE_FIELDS, _dispatch._BN_NODE_FIELDS + ('_saved_no_such_field',)):
        monkeypatch.setattr(_dispatch, '_BN_NODE_FIELDS', fields)
        bn, att = bn_variants()['train'], make(kind, 24)
        assert _dispatch.bn_node_readable() == (len(fields) == 8)
        results.append(step(lambda t, att=att, bn=bn: att(bn(t)), z, list(att.parameters()) + list(bn.parameters())))
        kept.append(kept_elements(att(bn(z.clone().requires_grad_()))))
        results[-1] += (tuple(b.clone() for b in bn.buffers()),)
    monkeypatch.setattr(_dispatch, '_BN_NODE_FIELDS', _dispatch._BN_NODE_FIELDS[:8])
    assert kept[1] - kept[0] > z.numel() // 2  # the fallback keeps the BN output x too (the node path: z)
    bn, att = bn_variants()['train'], make(kind, 24)
    with plain_pytorch(monkeypatch):
        want = step(lambda t: att(bn(t)), z, list(att.parameters()) + list(bn.parameters()))
    for got in results:
        assert_same(got[:2], want)
    for b_node, b_plain in zip(results[0][2], results[1][2]):
        numerics.assert_close(b_node, b_plain)


@pytest.mark.parametrize('with_cp', [True, False], ids=['mmdet_with_cp', 'torch_non_reentrant'])
def test_plugin_under_checkpointing_trains_like_without(with_cp):
    """mmdet's with_cp (reentrant checkpoint) and PyTorch's non-reentrant checkpoint (saved
    tensor hooks) give the same step as the plain plugin block."""
    x = torch.randn(2, 64, 12, 16)
    ref, blk = mmdet_block('CBAM', inplace=True), mmdet_block('CBAM', inplace=True, with_cp=with_cp)

    def run(module, fn):  # .backward(): reentrant checkpointing refuses autograd.grad
        xi = x.detach().clone().requires_grad_()
        y = fn(xi)
        (y * y).mean().backward()
        return (y.detach(), xi.grad) + tuple(p.grad for p in module.parameters())

    want = run(ref, ref)
    got = run(blk, blk if with_cp else lambda t: torch.utils.checkpoint.checkpoint(blk, t, use_reentrant=False))
    for a, b in zip(got, want):
        numerics.assert_close(a, b, depth=8)  # one bottleneck (3 convs, 3 BNs, CBAM) there and back


@no_ext
def test_kernels_refuse_bad_tensors():
    ext = ops.ext('gates')
    x = torch.randn(2, 8, 4, 4)
    w1, b1, w2, b2 = torch.randn(2, 8), torch.randn(2), torch.randn(8, 2), torch.randn(8)
    lay = list(gate_ops.layout(2, 8, 16, 2, False, False))
    with pytest.raises(RuntimeError, match='contiguous float32 CPU tensor'):
        ext.gates_forward(x.to(memory_format=torch.channels_last), None, None, None, None, w1, b1, w2, b2, None,
                          None, None, None, None, None, 0, 0, False, 1e-5, 1e-5, None, lay)  # fmt: skip
    with pytest.raises(RuntimeError, match='layout has 18 entries'):
        ext.gates_forward(x, None, None, None, None, w1, b1, w2, b2, None, None, None, None, None, None, 0, 0,
                          False, 1e-5, 1e-5, None, lay[:5])  # fmt: skip


@pytest.mark.parametrize('att', ['CBAM', 'SE'])
def test_inplace_plugin_trains_exactly_like_the_default(att):
    """inplace=True (mmdet's ResNet default for cbam_det plugins) against inplace=False: a
    training step must not change (inference writes into the input: see above)."""
    torch.manual_seed(numerics.seed())
    cfg = dict(
        type='ResNet',
        depth=50,
        base_channels=16,
        norm_eval=False,
        zero_init_residual=False,
        plugins=[dict(cfg=dict(type=att, inplace=True), stages=(True,) * 4, position='after_conv3')],
    )
    inplace = MODELS.build(cfg)
    default = copy.deepcopy(inplace)
    for m in default.modules():
        if isinstance(m, (CBAM, SE)):
            m.inplace = False
    x = torch.randn(2, 3, 64, 96)
    results = []
    for model in (inplace, default):
        model.train()
        y = model(x)
        results.append((y, torch.autograd.grad(sum((o * o).mean() for o in y), list(model.parameters()))))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@no_ext
@pytest.mark.parametrize(
    'shape,out_channels',
    [((2, 5, 7, 9), 3), ((1, 40, 13, 17), 7), ((2, 64, 16, 20), 16), ((2, 33, 4, 8), 21), ((1, 8, 1, 1), 2)],
    ids=str,
)
def test_pointwise_conv_equals_conv2d_in_float64(shape, out_channels):
    """BAM's 1×1 reduction conv kernel (forward; input gradient), with the weight and bias
    gradients, against F.conv2d in float64: full and partial register groups (16, 21, 3
    outputs), pixel counts with and without a remainder of 16."""
    torch.manual_seed(numerics.seed())
    x64 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(out_channels, shape[1], 1, 1, dtype=torch.float64, requires_grad=True)
    b64 = torch.randn(out_channels, dtype=torch.float64, requires_grad=True)
    y64 = torch.nn.functional.conv2d(x64, w64, b64)
    g = torch.randn_like(y64)
    want = (y64,) + torch.autograd.grad(y64, [x64, w64, b64], g)
    x, w, b = (t.detach().float().requires_grad_() for t in (x64, w64, b64))
    y = bam_ops.pointwise_conv(x, w, b)
    got = (y,) + torch.autograd.grad(y, [x, w, b], g.float())
    for u, v in zip(got, want):
        assert u.shape == v.shape
        numerics.assert_close(u, v, terms=shape[0] * shape[2] * shape[3] * max(shape[1], out_channels))


@no_ext
def test_pointwise_conv_refuses_bad_weights():
    ext = ops.ext('bam')
    with pytest.raises(RuntimeError, match=r'weight \(O, C\)'):
        ext.pointwise_conv(torch.randn(2, 4, 3, 3), torch.randn(3, 5), None)
    with pytest.raises(RuntimeError, match=r'weight \(O, C\)'):
        ext.pointwise_conv_input_grad(torch.randn(2, 3, 3, 3), torch.randn(4, 5))


def test_mmdet_resnet_plugins_are_inplace_unless_told():
    """Plugins of mmdet's ResNet get inplace=True unless their config sets it; others untouched."""

    def build(cfg):
        return MODELS.build(
            dict(
                type='ResNet',
                depth=50,
                base_channels=16,
                plugins=[dict(cfg=cfg, stages=(True,) * 4, position='after_conv3')],
            )
        )

    def flags(model):
        return {m.inplace for m in model.modules() if isinstance(m, (CBAM, SE))}

    assert flags(build(dict(type='CBAM'))) == {True}
    assert flags(build(dict(type='SE', inplace=False))) == {False}
    ctx = build(dict(type='ContextBlock', ratio=1 / 4))  # mmcv's plugin: no inplace argument, built as before
    assert any(type(m).__name__ == 'ContextBlock' for m in ctx.modules())
