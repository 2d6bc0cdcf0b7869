"""The backend switch of cbam_det.kernels, and the Triton kernels against the ``torch`` backend.

The Triton tests run on CUDA tensors when a GPU is there and Triton's interpreter is off
(``TRITON_INTERPRET=0``), else on CPU tensors in the interpreter (tests/conftest.py turns it
on): forward and every gradient, odd shapes, ties, train and eval BatchNorm statistics.
"""

import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from cbam_det import BAM, CBAM, SE, kernels
from cbam_det.kernels import launch
from cbam_det.kernels.library import gates as gate_ops

from . import numerics
from .helpers import REPO, analysis_tool

census = analysis_tool('census')
kernel_compile = analysis_tool('kernel_compile')

no_ext = pytest.mark.skipif(os.environ.get('CBAM_DET_NO_EXT') == '1', reason='CBAM_DET_NO_EXT=1: no C++ kernels')
DEVICE = 'cpu' if launch.INTERPRETED or not torch.cuda.is_available() else 'cuda'
needs_triton = pytest.mark.skipif(
    not launch.AVAILABLE or (DEVICE == 'cpu' and not launch.INTERPRETED), reason='no GPU and Triton interpreter off'
)


_launched: list = []


@pytest.fixture(autouse=True)
def _record_launches():
    """Every Triton launch of this module's tests, for the ahead-of-time compile test at the end."""
    with census.recording(execute=True, read_bn_nodes=True) as launches:
        yield
    _launched.extend(launches)


# ---------------------------------------------------------------- the switch


def test_switch_precedence_and_restoring(monkeypatch):
    monkeypatch.delenv('CBAM_DET_BACKEND', raising=False)
    assert kernels.get_backend() == 'auto'
    monkeypatch.setenv('CBAM_DET_BACKEND', 'torch')
    assert kernels.get_backend() == 'torch'
    with kernels.use_backend('cpu'):
        assert kernels.get_backend() == 'cpu'
        with kernels.use_backend('auto'):
            assert kernels.get_backend() == 'auto'
        assert kernels.get_backend() == 'cpu'
    assert kernels.get_backend() == 'torch'
    assert kernels.set_backend('triton') is None
    assert kernels.set_backend(None) == 'triton'
    assert kernels.get_backend() == 'torch'


def test_the_tracing_query_agrees_with_torch_jit_is_tracing():
    """The backend cache's tracing query (torch's own, one call) says what ``torch.jit.is_tracing``
    says, outside a trace and inside one; so does its fallback, the public function."""
    from cbam_det.kernels import dispatch

    seen = []

    def f(x):
        seen.append((dispatch._is_tracing(), torch.jit.is_tracing()))
        return x + 1

    assert dispatch._is_tracing() is False and torch.jit.is_tracing() is False
    torch.jit.trace(f, torch.zeros(2))  # (its trace check runs f again, untraced)
    assert (True, True) in seen and all(a == b for a, b in seen), seen


def test_unknown_backend_names_the_switch_and_the_choices(monkeypatch):
    monkeypatch.setenv('CBAM_DET_BACKEND', 'cuda')
    with pytest.raises(ValueError, match=r"CBAM_DET_BACKEND='cuda'.*'auto', 'torch', 'cpu', 'triton'"):
        CBAM(8, 2)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"backend='fast'"):
        kernels.set_backend('fast')


@no_ext
def test_auto_picks_cpu_for_float32_nchw_and_torch_otherwise(monkeypatch):
    x = torch.randn(2, 16, 5, 7)
    m = CBAM(16, 4)
    assert kernels.select_backend(x, m) == 'cpu'
    assert kernels.select_backend(x, CBAM(16, 4, arrangement='parallel')) == 'torch'  # no kernel for it
    assert kernels.select_backend(x.to(memory_format=torch.channels_last), m) == 'torch'
    assert kernels.select_backend(x.double(), m) == 'torch'
    assert kernels.select_backend(x[:, :, :, :4], m) == 'torch'  # not contiguous
    assert kernels.select_backend(x.bfloat16(), m) == 'torch'  # CPU tensor: triton only when asked
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert kernels.select_backend(x, m) == 'torch'
    assert kernels.select_backend(x, m, nn.SyncBatchNorm(16)) == 'torch'
    seen = []
    torch.jit.trace(lambda t: seen.append(kernels.select_backend(t, m)) or t * 2, x, check_trace=False)
    assert seen == ['torch']  # while tracing
    monkeypatch.setenv('CBAM_DET_NO_EXT', '1')
    assert kernels.select_backend(x, m) == 'torch'


@no_ext
def test_explicit_cpu_raises_where_it_cannot_run(monkeypatch):
    x = torch.randn(2, 16, 5, 7)
    with kernels.use_backend('cpu'):
        assert kernels.select_backend(x, CBAM(16, 4)) == 'cpu'
        cases = [
            (x.double(), CBAM(16, 4), 'float32'),
            (x.to(memory_format=torch.channels_last), CBAM(16, 4), 'contiguous NCHW'),
            (x, CBAM(16, 4, arrangement='parallel'), 'ablation variant'),
            (x, BAM(16, 4, combine='max'), 'ablation variant'),
        ]
        for t, m, why in cases:
            with pytest.raises(kernels.BackendUnavailable, match=f"backend 'cpu'.*{why}"):
                m(t)
        with pytest.raises(kernels.BackendUnavailable, match='trace or ONNX export'):
            torch.jit.trace(CBAM(16, 4).eval(), x)
        monkeypatch.setenv('CBAM_DET_NO_EXT', '1')  # as without a compiler
        with pytest.raises(kernels.BackendUnavailable, match='not compiled'):
            CBAM(16, 4)(x)


def test_explicit_triton_without_gpu_or_interpreter_raises():
    """A fresh interpreter without TRITON_INTERPRET and without a GPU: the request raises."""
    code = (
        'import torch; from cbam_det import CBAM, kernels\n'
        'assert not torch.cuda.is_available()\n'
        'try:\n    CBAM(8, 2)(torch.randn(1, 8, 4, 4))\n'
        'except kernels.BackendUnavailable as e:\n    print("RAISED", e)\n'
    )
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.update(CBAM_DET_BACKEND='triton', CUDA_VISIBLE_DEVICES='')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RAISED cbam_det backend 'triton'" in out.stdout and 'TRITON_INTERPRET=1' in out.stdout, out.stdout


# ---------------------------------------------------------------- Triton against torch


def randomised(m: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(numerics.seed(seed))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        for b in m.modules():
            if isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
                b.running_mean.normal_(0, 0.3)
                b.running_var.uniform_(0.5, 2)
    return m


def run(backend: str, m: nn.Module, x: torch.Tensor, bn=None):
    """Output, input gradient and parameter gradients of one weighted-sum step."""
    x = x.detach().clone().requires_grad_()
    params = [p for p in list(m.parameters()) + (list(bn.parameters()) if bn is not None else []) if p.requires_grad]
    with kernels.use_backend(backend):
        y = m.forward_with_bn(x, bn) if bn is not None else m(x)
        w = torch.randn(y.shape, generator=numerics.generator(3)).to(y.device)
        grads = torch.autograd.grad((y.float() * w).sum(), [x] + params)
    return [y.detach().float()] + [g.float() for g in grads]


def assert_matches(got, want):
    """The output (one layer) within float32 rounding of its scale, every gradient (two layers)
    of the largest gradient's: a parameter's gradient sums terms of that size over the batch and
    the pixels (a bias right before a training BN has a true gradient of 0)."""
    scale = max(float(g.abs().max()) for g in want[1:])
    for i, (a, b) in enumerate(zip(got, want)):
        numerics.assert_close(a, b, depth=2 if i else 1, scale=scale if i else None, msg=f'tensor {i}')


def check(make, x, bn_make=None, train=True):
    m = randomised(make()).to(DEVICE).train(train)
    bn = randomised(bn_make()).to(DEVICE).train(train) if bn_make else None
    m2, bn2 = copy.deepcopy(m), copy.deepcopy(bn)
    x = x.to(DEVICE)
    got = run('triton', m, x, bn)
    want = run('torch', m2, x, bn2)
    assert_matches(got, want)
    for b1, b2 in zip(m.buffers(), m2.buffers()):  # BN running statistics moved alike
        numerics.assert_close(b1.float(), b2.float())


MODULES = {
    'cbam': lambda c: CBAM(c, 4),
    'cbam_official': lambda c: CBAM(c, 4, spatial_pool='max_avg'),
    'se': lambda c: SE(c, 4),
    'bam_sum': lambda c: BAM(c, 4, 1),
    'bam_product_plain': lambda c: BAM(c, 4, 1, combine='product', residual=False),
}
SHAPES = [(2, 48, 13, 21), (1, 48, 13, 21), (2, 48, 1, 1)]


@needs_triton
@pytest.mark.parametrize('kind', list(MODULES))
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_triton_equals_torch(kind, shape):
    if kind.startswith('bam') and shape[0] * shape[2] * shape[3] == 1:
        pytest.skip("BAM's BatchNorms need more than one value per channel in training")
    check(lambda: MODULES[kind](shape[1]), torch.randn(shape))


@needs_triton
@pytest.mark.parametrize('kind', ['cbam', 'se', 'bam_sum'])
def test_triton_eval_and_channels_last(kind):
    x = torch.randn(2, 48, 13, 21)
    check(lambda: MODULES[kind](48), x, train=False)
    check(lambda: MODULES[kind](48), x.to(memory_format=torch.channels_last))


@needs_triton
def test_triton_ties_share_the_max_gradient_like_torch():
    """Integer-valued input with zeros: many tied maxima over H×W and over C."""
    x = torch.randint(0, 3, (2, 16, 5, 6)).float()
    x[:, :, :2] = 0
    check(lambda: CBAM(16, 4), x)


@needs_triton
@pytest.mark.parametrize('kind', ['cbam', 'se'])
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_triton_bn_fused_and_after_bn(kind, train):
    """The BN-fused block (forward_with_bn) and a plugin fed by a BatchNorm's output."""
    z = torch.randn(2, 48, 7, 9) * 2 + 1
    check(lambda: MODULES[kind](48), z, bn_make=lambda: nn.BatchNorm2d(48), train=train)

    class AfterBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.att = nn.BatchNorm2d(48), MODULES[kind](48)

        def forward(self, t):
            return self.att(self.bn(t))

    check(AfterBN, z, train=train)


@needs_triton
@pytest.mark.parametrize('kind', ['cbam', 'se'])
@pytest.mark.parametrize('case', ['zero_gamma', 'frozen_bn', 'norm_eval', 'input_frozen'])
def test_triton_bn_cases_detectors_meet(kind, case):
    """mmdet's zero_init_residual (γ = 0: x constant, every pixel ties for the channel max),
    a frozen BN (eval, no trainable γ/β), norm_eval (eval statistics, trainable γ/β), and an
    input that needs no gradient (frozen layers before): the folded BN backward in each."""
    z = torch.randn(2, 48, 7, 9) * 2 + 1
    train = case in ('zero_gamma', 'input_frozen')

    def bn_make():
        bn = nn.BatchNorm2d(48)
        if case == 'frozen_bn':
            bn.requires_grad_(False)
        return bn

    m = randomised(MODULES[kind](48)).to(DEVICE).train(train)
    bn = randomised(bn_make()).to(DEVICE).train(train)
    if case == 'zero_gamma':
        with torch.no_grad():
            bn.weight.zero_()
    m2, bn2 = copy.deepcopy(m), copy.deepcopy(bn)
    x = z.to(DEVICE).requires_grad_(case != 'input_frozen')
    outs = []
    for backend, mm, bb in (('triton', m, bn), ('torch', m2, bn2)):
        params = [p for p in list(mm.parameters()) + list(bb.parameters()) if p.requires_grad]
        xi = x.detach().clone().requires_grad_(x.requires_grad)
        with kernels.use_backend(backend):
            y = mm.forward_with_bn(xi, bb)
            w = torch.randn(y.shape, generator=numerics.generator(3)).to(y.device)
            grads = torch.autograd.grad((y.float() * w).sum(), ([xi] if xi.requires_grad else []) + params)
        outs.append([y.detach().float()] + [g.float() for g in grads])
    assert_matches(*outs)
    if case == 'zero_gamma':  # γ's gradient is what lets it leave 0: it must be there, and right
        assert float(outs[0][-2].abs().max()) > 0


@needs_triton
def test_triton_is_deterministic():
    """The same inputs give the same bits: split reductions add their partials in a fixed order."""
    x = torch.randn(2, 48, 13, 21)
    first = run('triton', randomised(CBAM(48, 4)).to(DEVICE), x.to(DEVICE))
    again = run('triton', randomised(CBAM(48, 4)).to(DEVICE), x.to(DEVICE))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@needs_triton
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
def test_triton_low_precision(dtype):
    """bf16/fp16 activations, float32 accumulation: as close to the float32 result as the
    torch backend in that dtype is."""
    x = torch.randn(2, 48, 13, 21)
    ref = run('torch', randomised(CBAM(48, 4)).to(DEVICE), x.to(DEVICE))
    for backend in ('triton', 'torch'):
        got = run(backend, randomised(CBAM(48, 4)).to(DEVICE), x.to(DEVICE, dtype))
        err = max(float((a - b).abs().max()) / float(b.abs().max()) for a, b in zip(got[:2], ref[:2]))
        if backend == 'triton':
            triton_err = err
    # the output itself is rounded to ``dtype``: a few ulps of it (numerics.tolerance at one term)
    # are the floor; above it, at most twice the torch backend's error in that dtype
    floor = max(2e-2, numerics.tolerance(1.0, terms=1, dtype=dtype))
    assert triton_err <= max(2 * err, floor), (triton_err, err, floor)


@needs_triton
def test_inplace_inference_on_triton_writes_into_the_input():
    m = randomised(CBAM(48, 4, inplace=True)).to(DEVICE).eval()
    x = torch.randn(2, 48, 13, 21, device=DEVICE)
    with torch.no_grad(), kernels.use_backend('torch'):
        want = m(x.clone())
    y = x.clone()
    with torch.no_grad(), kernels.use_backend('triton'):
        got = m(y)
    assert got.data_ptr() == y.data_ptr()
    numerics.assert_close(got, want)


@needs_triton
def test_probe_reports_a_failing_kernel_and_warns_once(monkeypatch):
    assert kernels.probe_triton(DEVICE, torch.float32, force=True)

    def broken(*args, **kwargs):
        raise RuntimeError('simulated compile failure')

    monkeypatch.setattr(gate_ops, 'triton_forward', broken)
    with pytest.warns(UserWarning, match='failed their self-check.*simulated compile failure'):
        assert not kernels.probe_triton(DEVICE, torch.float32, force=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert not kernels.probe_triton(DEVICE, torch.float32)  # cached: no second warning
    monkeypatch.undo()
    assert kernels.probe_triton(DEVICE, torch.float32, force=True)


@needs_triton
def test_the_self_check_runs_the_setups_each_module_class_registers(monkeypatch):
    """The probe knows no module class: each registers its own setups (AttentionModule subclasses
    with kernel_setups), and a registered setup that disagrees with PyTorch fails the probe."""
    from cbam_det.kernels import dispatch

    assert {CBAM, SE, BAM} <= set(dispatch.kernel_modules())

    class Doubled(nn.Module):  # the triton backend's answer, twice: far from the torch backend's
        def __init__(self):
            super().__init__()
            self.inner = CBAM(dispatch.CHECK_CHANNELS, 4)

        def forward(self, x):
            y = self.inner(x)
            return y * 2 if kernels.get_backend() == 'triton' else y

    class Checked:
        @classmethod
        def kernel_setups(cls, channels, inplace=False):
            return {'doubled': dispatch.KernelSetup(Doubled, False)}

    monkeypatch.setattr(dispatch, '_KERNEL_MODULES', list(dispatch._KERNEL_MODULES))
    assert kernels.probe_triton(DEVICE, torch.float32, force=True)
    dispatch.register_kernel_module(Checked)
    with pytest.warns(UserWarning, match='failed their self-check.*Doubled: relative difference'):
        assert not kernels.probe_triton(DEVICE, torch.float32, force=True)
    monkeypatch.undo()
    assert kernels.probe_triton(DEVICE, torch.float32, force=True)
    with pytest.raises(TypeError, match='has no kernel_setups'):
        dispatch.register_kernel_module(int)


def _kernel_sources():
    import pathlib

    root = pathlib.Path(kernels.__file__).parent
    return sorted(root.glob('*.py')) + sorted((root / 'library').glob('*.py'))


def test_nothing_under_kernels_imports_the_modules():
    """The kernels read nothing from models/ (no import circle)."""
    import ast

    for path in _kernel_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = ('.' * node.level) + (node.module or '')
            elif isinstance(node, ast.Import):
                name = ','.join(a.name for a in node.names)
            else:
                continue
            assert 'models' not in name, f'{path.name} imports {name}'


def test_each_op_family_keeps_its_parts_in_one_file_and_the_kernels_probe_no_module():
    """Every op family (kernels/library/<family>.py) defines its schemas, registers a CPU and a
    CUDA kernel, its fakes and its autograd, and has a PyTorch twin and Triton launchers beside
    them; its C++ kernels are ops/csrc/<family>.cpp. Nothing under kernels/ probes a module with
    getattr/hasattr: a module is read through the contract of models/layers/base.py."""
    import ast
    import pathlib
    import re

    from cbam_det import ops
    from cbam_det.kernels import library

    assert sorted(library.FAMILIES) == ['bam', 'gates']  # found by the package itself
    for family, module in library.FAMILIES.items():
        path = pathlib.Path(module.__file__)
        assert path.name == f'{family}.py'
        text = path.read_text()
        for part in ('_lib.define(', "'CPU')", 'register_fake(', 'register_autograd(', 'def twin_', 'def triton_'):
            assert part in text or part == "'CPU')" and '_lib.impl(' in text, (family, part)
        assert family in ops.FAMILIES
        defined = re.findall(r"_lib\.define\(\s*f?'(\w+)\(", text)
        assert sorted(defined) == sorted(module.OPS), (family, defined)  # OPS lists every op it defines
        assert set(module.SMALL_KERNELS) <= set(library.KERNELS)
    for path in _kernel_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ('getattr', 'hasattr')
            ):
                target = ast.unparse(node.args[0])
                assert target not in ('module', 'ext', 'ctx.module'), f'{path.name}: {ast.unparse(node)}'


# ---------------------------------------------------------------- ahead of time, for real GPUs (last: it
# compiles what the tests above launched)


#: the architectures of the GPUs detectors are mostly trained on (A100, H100/H200); sm_100 and
#: sm_120 (Blackwell) compile every specialization of the shipped detection configs in the slow
#: suite (tests/test_kernel_census.py::test_every_detection_specialization_compiles)
_ARCHS = (80, 90)


@pytest.mark.parametrize('arch', _ARCHS, ids=lambda a: f'sm_{a}')
def test_every_launched_specialization_compiles_within_128_registers_without_spills(arch):
    """Triton's compiler and ptxas for sm_80 and sm_90 on this machine, no GPU: registers per
    thread and stack (spills) of every kernel specialization this module's tests launched."""
    specs = census.unique_specs(_launched)
    if not specs:
        pytest.skip('no Triton launch recorded: run the whole module')
    results = kernel_compile.compile_specs(specs, archs=[arch], jobs=2)
    skipped = {r['skipped'] for r in results if 'skipped' in r}
    if skipped:
        assert all('skipped' in r for r in results), skipped  # a target is supported or not, never in part
        pytest.skip(sorted(skipped)[0])
    assert len(results) == len(specs)
    most = max(results, key=lambda r: r['registers'])
    print(f'sm_{arch}: {len(results)} specializations, at most {most["registers"]} registers ({most["kernel"]})')
    # over 128 registers, spills, a fused multiply-add (the tie masks need the interpreter's
    # rounding), a maximum that ignores NaN
    assert kernel_compile.compile_problems(results) == []


def test_train_keeps_the_cached_decisions_unless_a_mode_changes():
    """``train()`` every step (as some loops and the benchmarks call it) keeps what the module
    decided once; a change of its own mode or of a submodule's (the spatial gate's BN put in eval
    alone) drops it, and the next call follows the new mode: batch statistics again."""
    m = randomised(CBAM(16, 4)).train()
    x = torch.randn(2, 16, 5, 7)
    with kernels.use_backend('torch'):
        m(x)
    cached = m.__dict__['_backend_cache']
    m.train()
    assert m.__dict__.get('_backend_cache') is cached
    m.eval()
    assert '_backend_cache' not in m.__dict__
    m.train()
    with kernels.use_backend('torch'):
        m(x)
    assert '_backend_cache' in m.__dict__
    m.spatial_gate.bn.eval()
    m.train()
    assert '_backend_cache' not in m.__dict__ and m.spatial_gate.bn.training
    before = m.spatial_gate.bn.running_mean.clone()
    with kernels.use_backend('cpu' if kernels.select_backend(x) == 'cpu' else 'torch'):
        y = m(x)
    assert not torch.equal(m.spatial_gate.bn.running_mean, before)  # batch statistics, updated
    numerics.assert_close(y, copy.deepcopy(m).reference(x))
