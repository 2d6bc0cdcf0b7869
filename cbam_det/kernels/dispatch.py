"""One switch for the attention modules' acceleration (CBAM, SE, BAM): which backend runs them.

Backends:

- ``torch``: PyTorch operations only (:mod:`.lean`'s memory-lean autograd functions for the
  paper's CBAM, the modules' own equations otherwise). Runs everywhere, exports, compiles.
- ``cpu``: the op families' C++ kernels (:mod:`.library`): float32, contiguous NCHW CPU tensors.
- ``triton``: the op families' Triton kernels: CUDA tensors in float32, float16 or bfloat16,
  NCHW or channels-last; CPU tensors only in Triton's interpreter (``TRITON_INTERPRET=1`` set
  before cbam_det is imported), which is for tests.
- ``auto`` (default): ``cpu`` where it applies, else ``triton`` on CUDA tensors (after a
  once-per-device self-check, :func:`probe_triton`), else ``torch``; ``torch`` while tracing or
  exporting to ONNX; under ``torch.compile`` what was measured cheaper there (:func:`_compiled_auto`).

The choice: ``set_backend(name)`` / ``with use_backend(name):`` over the environment variable
``CBAM_DET_BACKEND`` (read at every call), over ``auto``. A backend named explicitly that cannot
run a call raises :class:`BackendUnavailable` saying why; it is never replaced by another. Under
``auto`` a failing Triton launch is computed by the op's PyTorch twin (warned once); a backend
named explicitly raises it. The kernels cover CBAM as in the paper (channel first, [avg; max]
channel pooling, [avg; max] or the official [max; avg] spatial pooling), SE, and BAM with
``combine`` 'sum' or 'product'; ``auto`` runs the other ablation variants on ``torch``.

What a call costs the host is decided once: the backend for a module, its mode, the input's
device, dtype and layout, CPU autocast and tracing is cached on the module (:func:`_backend_for`),
and the op family caches what it passes the kernels. Eager mode and ``torch.compile`` call the
same ``cbam_det::`` ops (a compiled graph holds them with no break; the backend request is one of
its guards, the environment variables are read when the graph is traced).
"""

import contextlib
import functools
import warnings
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..config import BACKENDS, get_backend, set_backend, use_backend
from . import lean
from .library import FAMILIES
from .library import bam as bam_ops
from .library import gates as gate_ops

__all__ = [
    'BACKENDS',
    'BackendUnavailable',
    'get_backend',
    'set_backend',
    'use_backend',
    'select_backend',
    'exporting',
    'probe_triton',
    'KernelSetup',
    'register_kernel_module',
    'kernel_modules',
    'attend',
    'run',
    'pointwise_conv',
    'bn_node_readable',
]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_state: dict = {'triton_ok': {}}


#: ``torch.jit.is_tracing()`` in eager mode (where TorchScript is not scripting): torch's own query,
#: one call instead of two; the public function where this torch lacks it (tests/test_backends.py)
_is_tracing = getattr(torch._C, '_is_tracing', None) or torch.jit.is_tracing


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run this call (the message says why)."""


def exporting() -> bool:
    """Whether a trace or an ONNX export is recording the forward (only PyTorch ops export)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _variant_problem(module: Optional[nn.Module]) -> Optional[str]:
    if module is None or module.kernel_variant is not None:
        return None
    return f'{type(module).__name__}({module.extra_repr()}) is an ablation variant the kernels do not cover'


def _bn_problem(bn: Optional[nn.Module]) -> Optional[str]:
    if bn is not None and (type(bn) is not nn.BatchNorm2d or not bn.affine):
        return f'only a plain affine nn.BatchNorm2d folds into the kernels, got {bn!r}'
    return None


def _traced_problem() -> Optional[str]:
    return 'a trace or ONNX export records only PyTorch ops' if exporting() else None


def _cpu_problem(x: torch.Tensor, module, bn) -> Optional[str]:
    if x.device.type != 'cpu':
        return f'the tensor is on {x.device}, the compiled kernels run on the CPU'
    if x.dtype != torch.float32:
        return f'dtype {x.dtype}; the compiled kernels take float32'
    if x.dim() != 4 or not x.is_contiguous():
        return 'the compiled kernels take contiguous NCHW tensors'
    if torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') != torch.float32:
        return 'lower-precision CPU autocast is on'
    problem = _traced_problem() or _variant_problem(module) or _bn_problem(bn)
    if problem is None:
        from ..ops import ext_ready

        if not ext_ready():
            problem = 'the C++ kernels are not compiled here (no compiler, or CBAM_DET_NO_EXT=1; see the warning)'
    return problem


def _triton_problem(x: torch.Tensor, module, bn) -> Optional[str]:
    from . import launch

    if not launch.AVAILABLE:
        return 'triton cannot be imported here'
    if x.device.type == 'cpu' and not launch.INTERPRETED:
        return "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing cbam_det"
    if x.device.type not in ('cuda', 'cpu'):
        return f'the tensor is on {x.device}; the Triton kernels run on CUDA'
    return _triton_input_problem(x, module, bn)


def _triton_input_problem(x: torch.Tensor, module, bn) -> Optional[str]:
    """What the Triton kernels cannot take, whatever the device."""
    if x.dtype not in _KERNEL_DTYPES or x.dim() != 4:
        return f'a 4-d float32/float16/bfloat16 tensor is needed, got {x.dtype} of {x.dim()} dims'
    return _traced_problem() or _variant_problem(module) or _bn_problem(bn)


_PROBLEMS = {'cpu': _cpu_problem, 'triton': _triton_problem}


def select_backend(x: torch.Tensor, module: Optional[nn.Module] = None, bn: Optional[nn.Module] = None) -> str:
    """The backend that runs ``module`` on ``x`` (after the BatchNorm ``bn``, if given):
    ``'torch'``, ``'cpu'`` or ``'triton'``. Raises :class:`BackendUnavailable` when the
    requested backend cannot run it."""
    name = get_backend()
    if name == 'torch':
        return name
    if name == 'auto':
        if exporting():
            return 'torch'
        if torch.compiler.is_compiling():
            return _compiled_auto(x, module, bn)
        if _cpu_problem(x, module, bn) is None:
            return 'cpu'
        if x.device.type == 'cuda' and _triton_problem(x, module, bn) is None and probe_triton(x.device, x.dtype):
            return 'triton'
        return 'torch'
    problem = _PROBLEMS[name](x, module, bn)
    if problem is not None:
        what = type(module).__name__ if module is not None else 'this call'
        raise BackendUnavailable(
            f'cbam_det backend {name!r} (set by set_backend/use_backend or CBAM_DET_BACKEND) cannot run {what}: '
            f'{problem}. Allowed backends: {", ".join(BACKENDS)}; auto picks one that applies.'
        )
    return name


def _compiled_auto(x: torch.Tensor, module: Optional[nn.Module], bn: Optional[nn.Module]) -> str:
    """``auto`` under ``torch.compile``, as measured (docs/performance.md, "Under torch.compile"):
    CBAM's training step on the CPU is cheaper as the graph of ``cbam_det::`` ops; its inference is
    cheaper on inductor's ``torch`` path (which fuses the eval-mode BN before the module into the
    pools; the ops cannot take it). What was not measured compiled with the ops (SE, BAM, CUDA)
    keeps the ``torch`` path."""
    measured = module is not None and module.kernel_variant == 'cbam'
    if measured and x.device.type == 'cpu' and torch.is_grad_enabled() and _cpu_problem(x, module, bn) is None:
        return 'cpu'
    return 'torch'


def _backend_for(module: nn.Module, x: torch.Tensor, bn: Optional[nn.Module], compiling: bool) -> Tuple[str, bool]:
    """(backend, fallback allowed) for this call, from a cache on the module keyed by everything
    :func:`select_backend` reads that can change between calls: the request, the input's device,
    dtype and layout, CPU autocast, tracing, and the BatchNorm given (``compiling``: traced once,
    nothing cached, and no cache for the graph to guard on). An ONNX export of the TorchScript
    kind traces the forward, and one of the dynamo kind compiles it, so tracing stands for
    :func:`exporting` in the key. The self-check runs once per device and dtype before ``auto``
    first picks ``triton``."""
    request = get_backend()
    if compiling:
        return select_backend(x, module, bn), request == 'auto'
    key = (
        request,
        x.device,
        x.dtype,
        x.dim() == 4 and x.is_contiguous(),
        torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu'),
        _is_tracing(),
        bn is not None and (type(bn) is nn.BatchNorm2d and bn.affine),
    )
    cache = module.__dict__.get('_backend_cache')
    if cache is None:
        cache = module.__dict__['_backend_cache'] = {}
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = (select_backend(x, module, bn), request == 'auto')
    return hit


def attend(module: nn.Module, x: torch.Tensor, bn: Optional[nn.BatchNorm2d] = None) -> torch.Tensor:
    """CBAM's or SE's gated output ``x ⊗ gates`` (of ``bn(x)`` when ``bn`` is given) on the
    selected backend: one op call (``cbam_det::gates``), and one more per BatchNorm whose running
    statistics move. A plugin fed by a BatchNorm's output folds that BatchNorm in (:func:`_bn_source`)."""
    compiling = torch.compiler.is_compiling()
    name, fallback = _backend_for(module, x, bn, compiling)
    if name == 'torch':
        return lean.attend(module, x if bn is None else bn(x))
    if compiling:  # the ops in the compiled graph; the BN stays PyTorch's
        return gate_ops.attend(module, x if bn is None else bn(x), None, None, False, fallback, compiled=True)
    source = _bn_source(x) if bn is None and x.requires_grad and torch.is_grad_enabled() else None
    return gate_ops.attend(module, x, bn, source, name == 'triton', fallback)


def run(module: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
    """A module's op-family call on the selected backend: ``call(module, backend, fallback,
    compiling, x, *args)`` of the family ``module.kernel_family`` names (:data:`library.FAMILIES`),
    which computes every backend, ``torch`` included. BAM's refinement comes here with its branch
    logits (``run(bam, x, c, s)``), as does any module whose family needs no BatchNorm folded in
    (CBAM and SE, which fold one, come through :func:`attend`)."""
    compiling = torch.compiler.is_compiling()
    name, fallback = _backend_for(module, x, None, compiling)
    call = getattr(FAMILIES.get(module.kernel_family), 'call', None)
    if call is None:
        raise TypeError(
            f'kernels.run: {type(module).__name__}.kernel_family={module.kernel_family!r}; allowed: '
            f'{", ".join(family for family, f in FAMILIES.items() if hasattr(f, "call"))}'
        )
    return call(module, name, fallback, compiling, x, *args)


def pointwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for BAM's 1×1 reduction: the C++ kernel on the ``cpu`` backend with at most 512
    input channels (with more, PyTorch's is the faster one: docs/performance.md)."""
    if x.shape[1] <= 512 and conv.weight.dtype == torch.float32 and select_backend(x) == 'cpu':
        return bam_ops.pointwise_conv(x, conv.weight, conv.bias, torch.compiler.is_compiling())
    return conv(x)


# ---------------------------------------------------------------- the BatchNorm before a plugin


def _hooks_active() -> bool:
    """Whether ``saved_tensors_hooks`` (activation checkpointing, offloading) are in force: then
    saved tensors must not be unpacked in forward. Read from torch's stack of default hooks where
    this torch exposes it (a private function, checked once per process against the probe below),
    else probed."""
    top = _state.get('top_hooks')
    if top is None:
        top = _state['top_hooks'] = _top_hooks_function()
    if top is not False:
        return top() is not None
    return _hooks_probe()


def _top_hooks_function():
    fn = getattr(torch._C._autograd, '_top_saved_tensors_default_hooks', None)
    if fn is None:
        return False
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            inside = fn(False) if _takes_arg(fn) else fn()
        outside = fn(False) if _takes_arg(fn) else fn()
    except (TypeError, RuntimeError):
        return False
    if inside is None or outside is not None or not _hooks_probe_agrees():
        return False
    return functools.partial(fn, False) if _takes_arg(fn) else fn


def _takes_arg(fn) -> bool:
    try:
        fn(False)
        return True
    except TypeError:
        return False


def _hooks_probe_agrees() -> bool:
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        inside = _hooks_probe()
    return inside and not _hooks_probe()


def _hooks_probe() -> bool:
    probe = torch.empty(0, requires_grad=True)
    with torch.enable_grad():
        node = probe.sin().grad_fn
    try:
        node._raw_saved_self.register_hooks(lambda t: t, lambda t: t)
    except RuntimeError:  # the default hooks got there first
        return True
    except AttributeError:  # a torch without this node field: assume hooks, keep the plain graph
        return True
    return False


# Fields of torch's ``NativeBatchNormBackward0`` node that :func:`_bn_source` reads. They are
# not public API: :func:`bn_node_readable` checks once per process that they exist and mean
# what _bn_source assumes; where they do not, the plugin simply keeps the plain graph.
_BN_NODE_FIELDS = (
    '_saved_input',
    '_saved_weight',
    '_saved_training',
    '_saved_eps',
    '_saved_result1',
    '_saved_result2',
    '_saved_running_mean',
    '_saved_running_var',
)


def bn_node_readable() -> bool:
    """Whether this torch's BatchNorm autograd node exposes what :func:`_bn_source` reads: probes a
    small BatchNorm in training and in eval mode once per process (per ``_BN_NODE_FIELDS``)."""
    fields = _BN_NODE_FIELDS
    if _state.get('bn_fields') != fields:
        _state.update(bn_fields=fields, bn_ok=_probe_bn_node(fields))
    return _state['bn_ok']


def _probe_bn_node(fields: Tuple[str, ...]) -> bool:
    bn = nn.BatchNorm2d(3)
    z = torch.linspace(-1.0, 2.0, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2).requires_grad_()
    try:
        with torch.enable_grad():
            for training in (True, False):
                bn.train(training)
                node = bn(z).grad_fn
                if type(node).__name__ != 'NativeBatchNormBackward0':
                    return False
                saved = {f: getattr(node, f) for f in fields}
                if (
                    (saved['_saved_input'] is not None and not torch.equal(saved['_saved_input'], z))
                    or saved['_saved_weight'] is not None
                    and not torch.equal(saved['_saved_weight'], bn.weight)
                    or saved['_saved_training'] is not training
                    or getattr(node.next_functions[2][0], 'variable', None) is not bn.bias
                ):
                    return False
                if training:
                    zd = z.detach()
                    mean, var = zd.mean((0, 2, 3)), zd.var((0, 2, 3), unbiased=False)
                    if not (
                        torch.allclose(saved['_saved_result1'], mean)
                        and torch.allclose(saved['_saved_result2'], (var + bn.eps).rsqrt())
                    ):
                        return False
    except (AttributeError, IndexError, RuntimeError, TypeError):
        return False
    return True


def _bn_source(x: torch.Tensor) -> Optional[tuple]:
    """(z, mode, γ, β, mean, invstd or var, eps) when ``x`` = BN(z) is the untouched output of an
    affine BatchNorm with a trainable bias (PyTorch's native BatchNorm: CPU, or CUDA without
    cuDNN, as under bfloat16 autocast), read from x's autograd node; else None.

    That node keeps z (the BN's input) for its own backward anyway, so a gate on x can take z, γ
    and β as its inputs instead: its kernels recompute x = a·z + b, its backward applies the BN
    backward itself, x need not outlive the gate, and the BN's node drops out of the graph. This
    is how a plugin after a block's last BN (mmdet ResNet ``position='after_conv3'``) keeps no
    activation of its own. Mode ``BN_BATCH`` with the batch statistics the BN used (its running
    statistics were updated by the BN), ``BN_RUNNING`` with its running statistics (eval mode, as
    ``norm_eval``). Hooks on x (``register_hook``, ``retain_grad``), saved-tensor hooks in force,
    or a torch whose BN node does not pass :func:`bn_node_readable` keep the plain graph."""
    node = x.grad_fn
    if (
        type(node).__name__ != 'NativeBatchNormBackward0'
        or x._version != 0
        or x._backward_hooks
        or x.retains_grad
        or not bn_node_readable()
        or _hooks_active()
    ):
        return None
    weight, bias = node._saved_weight, getattr(node.next_functions[2][0], 'variable', None)
    if weight is None or bias is None:
        return None
    z = node._saved_input
    if z.shape != x.shape or z.dtype != x.dtype or z.stride() != x.stride():
        return None
    eps = node._saved_eps
    if node._saved_training:
        return z, gate_ops.BN_BATCH, weight, bias, node._saved_result1, node._saved_result2, eps
    return z, gate_ops.BN_RUNNING, weight, bias, node._saved_running_mean, node._saved_running_var, eps


# ---------------------------------------------------------------- the Triton self-check


def probe_triton(device: torch.device, dtype: torch.dtype, force: bool = False) -> bool:
    """Whether the Triton kernels compile and agree with PyTorch on ``device`` for ``dtype``:
    a small CBAM, SE (alone and after a BatchNorm) and BAM, forward and backward, once per
    process (``force``: again). On failure ``auto`` warns once and uses ``torch`` there.

    The check never gets in the caller's way: it runs with gradients on (the first call may come
    under ``no_grad`` or ``inference_mode``), leaves every random number generator as it found
    it, and does not depend on the caller's autocast, deterministic mode or current device. It
    covers one small shape; every later launch at other shapes, dtypes and layouts is guarded
    by itself (a failing one falls back to PyTorch under ``auto``)."""
    key = (str(device), dtype)
    if force or key not in _state['triton_ok']:
        _state['triton_ok'][key] = True  # the probe itself runs the kernels
        problem = _run_probe(torch.device(device), dtype)
        _state['triton_ok'][key] = problem is None
        if problem is not None:
            warnings.warn(
                f'cbam_det: the Triton kernels failed their self-check on {device} for {dtype} ({problem}); '
                f'backend auto uses the PyTorch implementation there. CBAM_DET_BACKEND=torch silences this.',
                stacklevel=3,
            )
    return _state['triton_ok'][key]


@contextlib.contextmanager
def _isolated(device: torch.device) -> Iterator[None]:
    """The caller's grad mode, RNG states, autocast, deterministic mode and current device, set
    aside for the block and restored after it."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cuda = device.type == 'cuda'
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=devices))
        stack.enter_context(torch.inference_mode(False))  # tensors made inside may enter autograd
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast(device.type, enabled=False))
        if cuda:
            stack.enter_context(torch.cuda.device(device))
        torch.use_deterministic_algorithms(False)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


#: the channels of every self-check case (input 2 × 24 × 5 × 7)
CHECK_CHANNELS = 24


class KernelSetup(NamedTuple):
    """One way a module class runs on its kernels: ``make()`` builds the module; ``with_bn``: after
    a BatchNorm that it folds in (``forward_with_bn``)."""

    make: Callable[[], nn.Module]
    with_bn: bool


#: the module classes with kernels (their ``kernel_setups``), in registration order
_KERNEL_MODULES: List[type] = []


def register_kernel_module(cls: type) -> None:
    """Register an attention module class that runs on the kernels: ``cls.kernel_setups(channels,
    inplace)`` gives ``{name: KernelSetup}``, the setups its kernels cover. :func:`probe_triton`
    checks each (at :data:`CHECK_CHANNELS` channels) against ``torch``; the census tools and the
    contract tests (``tests/test_kernel_modules.py``) run each. The attention module classes
    register themselves (``models/layers/base.py``), so nothing here imports them."""
    if not callable(getattr(cls, 'kernel_setups', None)):
        raise TypeError(f'register_kernel_module: {cls.__name__} has no kernel_setups()')
    if cls not in _KERNEL_MODULES:
        _KERNEL_MODULES.append(cls)


def kernel_modules() -> List[type]:
    """The registered module classes with kernels (:func:`register_kernel_module`), in order."""
    return list(_KERNEL_MODULES)


def kernel_setups(channels: int, inplace: bool = False) -> Dict[str, Tuple[type, KernelSetup]]:
    """Every registered class's setups by name (``'cbam_plugin'``, ``'se_fused'``, ``'bam'``, ...):
    ``{name: (class, KernelSetup)}``, modules of ``channels`` channels, ``inplace`` as given."""
    out: Dict[str, Tuple[type, KernelSetup]] = {}
    for cls in _KERNEL_MODULES:
        for name, setup in cls.kernel_setups(channels, inplace).items():
            if name in out:
                raise ValueError(f'kernel setup {name!r} of {cls.__name__} is already one of {out[name][0].__name__}')
            out[name] = (cls, setup)
    return out


def _run_probe(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    try:
        with _isolated(device):
            return _compare_backends(device, dtype, [setup for _, setup in kernel_setups(CHECK_CHANNELS).values()])
    except Exception as e:  # a compile error, a launch failure: report, never crash auto
        return f'{type(e).__name__}: {e}'


def _compare_backends(device: torch.device, dtype: torch.dtype, cases) -> Optional[str]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, CHECK_CHANNELS, 5, 7, generator=gen).to(device)
    w = torch.randn(2, CHECK_CHANNELS, 5, 7, generator=gen).to(device)
    tol = 1e-3 if dtype == torch.float32 else 6e-2
    if not cases:
        return 'no module class registered its kernel setups (cbam_det.kernels.dispatch.register_kernel_module)'
    for make, with_bn in cases:
        outs = []
        for name in ('triton', 'torch'):
            torch.manual_seed(0)  # inside _isolated: the caller's generators are restored after
            m = make().to(device).train()
            bn = nn.BatchNorm2d(CHECK_CHANNELS).to(device) if with_bn else None
            xi = x.to(dtype).requires_grad_()
            with use_backend(name):
                y = m.forward_with_bn(xi, bn) if bn is not None else m(xi)
                (gx,) = torch.autograd.grad((y.float() * w).sum(), [xi])
            outs.append((y.detach().float(), gx.float()))
        for a, b in zip(*outs):
            err = float((a - b).abs().max()) / (float(b.abs().max()) + 1e-6)
            if not err <= tol:
                return f'{type(m).__name__}: relative difference {err:.2e} from PyTorch'
    return None
