"""The contract every attention module with kernels meets, for every class registered with the kernels
(``kernels.dispatch.kernel_modules``, each setup of its ``kernel_setups``): a new module is tested
here by being defined, with no entry in this file.

- the ``triton`` backend (Triton's interpreter on the CPU) and the ``cpu`` backend equal ``torch``:
  output, input gradient and every parameter gradient, in training and in inference;
- a module call is one autograd node of its op family, whatever its ordinary layers add;
- every ``cbam_det::`` op a step calls passes ``torch.library.opcheck`` with the arguments it got;
- a Triton launch that fails falls back to the op's PyTorch twin under ``auto`` (same result, one
  warning) and raises naming the kernel where ``triton`` was named;
- a step runs no nested autograd and no host sync (tools/analysis/host_census.py's counters).

The module-specific tests (test_backends, test_triton_safety, test_ops, test_host_census,
test_kernel_census) hold tighter cases and budgets for CBAM, SE and BAM.
"""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cbam_det import kernels
from cbam_det.kernels import dispatch, launch

from . import numerics
from .helpers import analysis_tool

TRITON = launch.AVAILABLE and launch.INTERPRETED
needs_interpreter = pytest.mark.skipif(
    not TRITON, reason="the triton backend on CPU tensors needs Triton's interpreter"
)
C = dispatch.CHECK_CHANNELS
SETUPS = dispatch.kernel_setups(C)
SHAPE = (2, C, 5, 7)
#: in the default suite: every setup of a class defined since, and one setup of each op family of
#: CBAM, SE and BAM (whose own tests cover all their setups); every setup with ``-m slow``
DEFAULT = {'se_fused', 'bam'}
COVERED = ('CBAM', 'SE', 'BAM')
NAMES = [
    pytest.param(name, marks=[] if name in DEFAULT or cls.__name__ not in COVERED else [pytest.mark.slow])
    for name, (cls, _) in SETUPS.items()
]


def _backends():
    from cbam_det.ops import ext_ready

    return (['cpu'] if ext_ready() else []) + (['triton'] if TRITON else [])


def _step(name: str, backend: str, train: bool, fallback: bool = False):
    """Output and gradients (input, then every parameter) of one weighted-sum step of setup ``name``
    on ``backend`` (``fallback``: the Triton kernels as ``auto`` calls them on a GPU)."""
    cls, setup = SETUPS[name]
    torch.manual_seed(numerics.seed(1))
    m = setup.make().train(train)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    bn = nn.BatchNorm2d(C).train(train) if setup.with_bn else None
    x = torch.randn(SHAPE, generator=numerics.generator(2)).requires_grad_()
    params = [p for p in m.parameters() if p.requires_grad] + (list(bn.parameters()) if bn is not None else [])
    with kernels.use_backend(backend):
        if fallback:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(dispatch, '_backend_for', lambda *a: ('triton', True))
                y = m.forward_with_bn(x, bn) if bn is not None else m(x)
        else:
            y = m.forward_with_bn(x, bn) if bn is not None else m(x)
    w = torch.randn(y.shape, generator=numerics.generator(3))
    grads = torch.autograd.grad((y.float() * w).sum(), [x] + params, allow_unused=True)
    return [y.detach().float()] + [torch.zeros(()) if g is None else g.float() for g in grads]


def _assert_steps_equal(got, want):
    numerics.assert_close(got[0], want[0], msg='output')
    numerics.assert_grads_close(got[1:], want[1:])


def test_the_module_classes_register_their_setups():
    from cbam_det import BAM, CBAM, SE

    assert {CBAM, SE, BAM} <= set(dispatch.kernel_modules())
    assert {'cbam_plugin', 'cbam_fused', 'se_plugin', 'se_fused', 'bam'} <= set(SETUPS)
    with pytest.raises(TypeError, match='has no kernel_setups'):
        dispatch.register_kernel_module(int)


@pytest.mark.parametrize('backend', _backends())
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('name', NAMES)
def test_every_setup_equals_the_torch_backend(name, train, backend):
    _assert_steps_equal(_step(name, backend, train), _step(name, 'torch', train))


def _train_forward(name: str, backend: str) -> torch.Tensor:
    """The output of a training-mode forward of setup ``name`` on ``backend`` (its input needs a gradient)."""
    _, setup = SETUPS[name]
    torch.manual_seed(0)
    m = setup.make().train()
    bn = nn.BatchNorm2d(C) if setup.with_bn else None
    x = torch.randn(SHAPE, requires_grad=True)
    with kernels.use_backend(backend):
        return m.forward_with_bn(x, bn) if bn is not None else m(x)


def _is_library_node(node) -> bool:
    """Whether ``node`` is an op family's eager node: a Python ``autograd.Function`` of
    ``cbam_det.kernels.library`` or a C++ one of the families' compiled modules (its name
    ``torch::autograd::CppNode<cbam_det::...>``)."""
    python = getattr(getattr(node, '_forward_cls', None), '__module__', '').startswith('cbam_det.kernels.library')
    return python or node.name().startswith('torch::autograd::CppNode<cbam_det::')


def _library_nodes(y: torch.Tensor) -> list:
    """The autograd nodes of the op families' eager functions in y's graph, y's own first (BAM's
    branches hold one more on the ``cpu`` backend: its 1×1 reduction)."""
    seen, todo, ours = set(), [y.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if _is_library_node(node):
            ours.append(node)
        todo.extend(f for f, _ in node.next_functions)
    return ours


@pytest.mark.parametrize('backend', _backends())
@pytest.mark.parametrize('name', NAMES)
def test_a_module_call_is_one_node_of_its_op_family(name, backend):
    """The output is one op call's, one autograd node; nothing else in the module's graph is that op's."""
    y = _train_forward(name, backend)
    ours = _library_nodes(y)
    assert ours and ours[0] is y.grad_fn, [n.name() for n in ours]  # the output is the op's
    assert [n.name() for n in ours].count(y.grad_fn.name()) == 1, [n.name() for n in ours]


class _OpCalls(TorchDispatchMode):
    """Every ``cbam_det::`` op call below autograd, with its arguments (cloned: in-place ops and
    later calls must not change what is checked)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == 'cbam_det':
            clone = torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), (args, kwargs))
            self.calls.append((func, *clone))
        return func(*args, **kwargs)


@pytest.mark.parametrize('backend', _backends())
@pytest.mark.parametrize('name', NAMES)
def test_every_op_a_step_calls_passes_opcheck(name, backend):
    with _OpCalls() as rec:
        y = _train_forward(name, backend)
        y.backward(torch.ones_like(y))
    assert rec.calls, 'the step called no cbam_det op'
    for op, args, kwargs in rec.calls:
        differentiable = torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), 'AutogradCPU')
        trainable = [
            a.requires_grad_() if differentiable and isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args
        ]
        torch.library.opcheck(
            op, tuple(trainable), kwargs, test_utils=('test_schema', 'test_autograd_registration', 'test_faketensor')
        )


def _kernels_of(name: str) -> list:
    """The Triton kernels one training step of setup ``name`` launches, first the forward's."""
    seen = []

    def observer(kernel, grid, args, meta, warps, run):
        if kernel.fn.__name__ not in seen:
            seen.append(kernel.fn.__name__)
        run()

    with launch.observe(observer):
        _step(name, 'triton', True)
    return seen


@needs_interpreter
@pytest.mark.parametrize('name', NAMES)
def test_a_failing_launch_falls_back_to_the_twin_or_raises(name):
    """The first kernel of the forward, and the last of the backward, fail (a compile error of
    one specialization): ``auto`` gives the torch backend's step with one warning naming the
    kernel; ``triton`` named explicitly raises it."""
    want = _step(name, 'torch', True)
    launched = _kernels_of(name)
    for failing in dict.fromkeys(launched[:1] + launched[-1:]):

        def observer(kernel, grid, args, meta, warps, run, failing=failing):
            if kernel.fn.__name__ == failing:
                raise RuntimeError(f'simulated compile failure of {failing}')
            run()

        saved = dict(launch._failed)
        try:
            with launch.observe(observer):
                with pytest.warns(UserWarning, match=rf'Triton kernel {failing}\[.*failed to compile or launch'):
                    got = _step(name, 'triton', True, fallback=True)
                _assert_steps_equal(got, want)
                launch._failed.clear()
                with pytest.raises(launch.TritonLaunchError, match=failing), warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    _step(name, 'triton', True)
        finally:
            launch._failed.clear()
            launch._failed.update(saved)


@pytest.mark.parametrize('backend', _backends())
@pytest.mark.parametrize('kind', analysis_tool('host_census').kernel_kinds())
def test_a_step_runs_no_nested_autograd_and_no_host_sync(kind, backend):
    census = analysis_tool('host_census')
    dtype = 'float32' if backend == 'cpu' else 'bfloat16'
    for train in (True, False):
        got = census.module_census(kind, backend, dtype, bn_before=True, train=train)['step']
        assert got['nested_autograd'] == 0 and got['syncs'] == 0, (kind, backend, train, got)


def test_the_setups_build_fresh_modules():
    """Each ``make()`` builds a new module (the tools and tests run them side by side)."""
    for name, (cls, setup) in SETUPS.items():
        a, b = setup.make(), setup.make()
        assert isinstance(a, cls) and a is not b and a.in_channels == C, name
        assert copy.deepcopy(a).in_channels == C


NEW_CLASS = """
import sys
from cbam_det import SE
from cbam_det.kernels import dispatch, probe_triton


class SEAgain(SE):  # a module class defined elsewhere, with kernels: no file of cbam_det names it
    _abbr_ = 'se_again'

    @classmethod
    def kernel_setups(cls, channels, inplace=False):
        return {'se_again_plugin': dispatch.KernelSetup(lambda: cls(channels, 4, inplace=inplace), False)}


sys.path.insert(0, sys.argv[1])
import census, host_census

assert 'se_again_plugin' in census.KINDS and 'se_again' in host_census.kernel_kinds()
assert {'se_again_cpu', 'se_again_triton'} <= set(host_census.replay_variants())
assert len(census.module_launches('se_again_plugin', (1, 24, 5, 9))) == 7  # SE's 3 + 4, on meta tensors
seen = []
dispatch._compare_backends = lambda device, dtype, cases: seen.extend(cases)
probe_triton('cpu', __import__('torch').float32, force=True)
assert any(type(case.make()) is SEAgain for case in seen)
print('picked up')
"""


@needs_interpreter
def test_a_class_defined_with_kernel_setups_is_picked_up_by_the_tools_and_the_self_check(tmp_path):
    """Defining the class is enough: the census kinds, the host census's table and replay and the
    self-check take it (in a fresh process: the registry is the process's)."""
    import os
    import subprocess
    import sys

    from .helpers import ANALYSIS, REPO

    script = tmp_path / 'new_class.py'
    script.write_text(NEW_CLASS)
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, str(script), ANALYSIS], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and 'picked up' in out.stdout, out.stderr[-3000:]


def test_run_names_the_families_it_can_hand_a_module_to():
    from cbam_det import SE

    with pytest.raises(TypeError, match=r'SE.kernel_family=None; allowed: bam'):
        kernels.run(SE(C, 4), torch.randn(SHAPE))


def test_a_module_that_ran_on_the_kernels_saves_and_loads_whole_in_a_new_process(tmp_path):
    """``torch.save(model)`` after steps on the kernels: the module's kernel caches (which hold the
    compiled modules' functions) are left out, so a fresh process loads it and gets the same output."""
    import os
    import subprocess
    import sys

    from .helpers import REPO

    saved = {}
    x = torch.randn(SHAPE)
    for backend in _backends():
        torch.manual_seed(0)
        modules = {name: SETUPS[name][1].make().train() for name in ('cbam_plugin', 'se_plugin', 'bam')}
        for m in modules.values():
            with kernels.use_backend(backend):
                m(nn.BatchNorm2d(C)(x.clone().requires_grad_())).sum().backward()
            assert any(k in m.__dict__ for k in ('_gates_args', '_bam_node'))
            m.eval()
        with torch.no_grad(), kernels.use_backend(backend):
            saved[backend] = (modules, {name: m(x.clone()) for name, m in modules.items()})
    torch.save({'saved': saved, 'x': x}, tmp_path / 'modules.pt')
    code = (
        'import sys, torch, cbam_det\n'
        'got = torch.load(sys.argv[1], weights_only=False)\n'
        'for backend, (modules, want) in got["saved"].items():\n'
        '    with torch.no_grad(), cbam_det.kernels.use_backend(backend):\n'
        '        for name, m in modules.items():\n'
        '            assert torch.equal(m(got["x"].clone()), want[name]), (backend, name)\n'
        'print("loaded", len(got["saved"]))\n'
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    path = str(tmp_path / 'modules.pt')
    out = subprocess.run([sys.executable, '-c', code, path], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and f'loaded {len(saved)}' in out.stdout, out.stderr[-3000:]
