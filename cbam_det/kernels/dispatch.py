"""One switch for the attention modules' acceleration (CBAM, SE, BAM): which backend runs
their full-size steps.

Backends:

- ``torch``: PyTorch operations only (:mod:`.lean`'s memory-lean autograd functions for the
  paper's CBAM, the modules' own equations otherwise). Runs everywhere, exports, compiles.
- ``cpu``: the compiled C++ kernels (:mod:`cbam_det.ops`) through :mod:`.fused`: float32,
  contiguous NCHW CPU tensors.
- ``triton``: the Triton kernels (:mod:`.triton_gate`) through :mod:`.fused`: CUDA tensors
  in float32, float16 or bfloat16, NCHW or channels-last; CPU tensors only in Triton's
  interpreter (``TRITON_INTERPRET=1`` set before cbam_det is imported), which is for tests.
- ``auto`` (default): ``cpu`` where it applies, else ``triton`` on CUDA tensors, else
  ``torch``; ``torch`` while tracing or exporting to ONNX; under ``torch.compile`` what was
  measured cheaper there (:func:`_compiled_auto`: the ops for CBAM's training step on the CPU,
  else ``torch``).

The choice: ``set_backend(name)`` / ``with use_backend(name):`` over the environment variable
``CBAM_DET_BACKEND`` (read at every call), over ``auto``. A backend named explicitly that
cannot run a call raises :class:`BackendUnavailable` saying why; it is never replaced by
another. The kernels cover CBAM as in the paper (channel first, [avg; max] channel pooling,
[avg; max] or the official [max; avg] spatial pooling), SE, and BAM with ``combine`` 'sum'
or 'product'; ``auto`` runs the other ablation variants on ``torch``.

Under ``torch.compile`` (and ``torch.export``) the ``cpu`` backend is a graph of the
``cbam_det::`` operators (:mod:`.library`, composed in :mod:`.graph`) with no graph break: the
PyTorch dispatcher runs each op's CPU kernel, inductor fuses what lies between them. The
``triton`` backend, named explicitly, still runs outside the graph there (a graph break that runs
eagerly, ``torch.compiler.disable``): its ops' CUDA kernels are registered, but the compiled path
has not been checked on a GPU. The backend request is part of a compiled graph's guards (a
``use_backend`` change recompiles); the environment variables are read when the graph is traced.
"""

import contextlib
import warnings
from typing import Iterator, List, Optional

import torch
from torch import nn

from ..config import BACKENDS, get_backend, set_backend, use_backend
from . import fused, graph, lean
from .library import convs
from .policy import fallback
from .record import note

__all__ = [
    'BACKENDS',
    'BackendUnavailable',
    'get_backend',
    'set_backend',
    'use_backend',
    'select_backend',
    'exporting',
    'probe_triton',
    'register_self_check',
    'attend',
    'bam_refine',
    'spatial_conv',
    'pointwise_conv',
]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_state: dict = {'triton_ok': {}}


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
    if bn is not None and type(bn) is not nn.BatchNorm2d:
        return f'only a plain nn.BatchNorm2d folds into the kernels, got {type(bn).__name__}'
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


def _triton_device_problem(x: torch.Tensor) -> Optional[str]:
    try:
        from . import triton_gate
    except ImportError as e:
        return f'triton cannot be imported ({e})'
    if x.device.type == 'cpu' and not triton_gate.INTERPRETED:
        return "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing cbam_det"
    if x.device.type not in ('cuda', 'cpu'):
        return f'the tensor is on {x.device}; the Triton kernels run on CUDA'
    return None


def _triton_input_problem(x: torch.Tensor, module, bn) -> Optional[str]:
    """What the Triton kernels cannot take, whatever the device."""
    if x.dtype not in _KERNEL_DTYPES or x.dim() != 4:
        return f'a 4-d float32/float16/bfloat16 tensor is needed, got {x.dtype} of {x.dim()} dims'
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return 'the Triton kernels take NCHW- or channels-last-contiguous tensors'
    return _traced_problem() or _variant_problem(module) or _bn_problem(bn)


def _triton_problem(x: torch.Tensor, module, bn) -> Optional[str]:
    return _triton_device_problem(x) or _triton_input_problem(x, module, bn)


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
    pools; the ops cannot take it). What was not measured compiled with the ops (SE, BAM, the
    convs, CUDA) keeps the ``torch`` path."""
    measured = module is not None and module.kernel_variant == 'cbam'
    if measured and x.device.type == 'cpu' and torch.is_grad_enabled() and _cpu_problem(x, module, bn) is None:
        return 'cpu'
    return 'torch'


def _ext(name: str):
    if name == 'cpu':
        from ..ops import gate_ext

        return gate_ext()
    from . import triton_gate

    return triton_gate


def _eager(fn):
    """``fn``, run outside the graph when ``torch.compile`` is tracing (the kernels' graph break)."""
    return torch.compiler.disable(fn) if torch.compiler.is_compiling() else fn


def attend(module: nn.Module, x: torch.Tensor, bn: Optional[nn.BatchNorm2d] = None) -> torch.Tensor:
    """CBAM's or SE's gated output ``x ⊗ gates`` (of ``bn(x)`` when ``bn`` is given) on the
    selected backend; with the module's ``inplace``, written into ``x`` where allowed."""
    name = select_backend(x, module, bn)
    if name == 'torch':
        return lean.attend(module, x if bn is None else bn(x))
    if name == 'cpu' and torch.compiler.is_compiling():  # the ops in the compiled or exported graph
        return graph.attend(module, x if bn is None else bn(x))
    function = None
    if name == 'triton':
        from .triton_attend import GatedAttention as function
    with fallback(get_backend() == 'auto'):  # auto: a failing Triton launch is computed with PyTorch
        return _eager(fused.gated_attention)(_ext(name), module, x, bn, module.inplace, function)


def bam_refine(module: nn.Module, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """BAM's refinement of ``x`` from its branch logits c (N, C, 1, 1) and s (N, 1, H, W)."""
    name = select_backend(x, module)
    note(module, bam_channel=c, bam_spatial=s)
    if name == 'torch':
        return module.refine(x, c, s)
    product = module.combine == 'product'
    if name == 'cpu' and torch.compiler.is_compiling():
        return graph.bam_refine(x, c, s, product, module.residual)
    with fallback(get_backend() == 'auto'):
        return _eager(fused.bam_gate)(_ext(name), x, c, s, product, module.residual, module.inplace)


def spatial_conv(desc: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(desc)`` for CBAM's k×k conv with one output channel: the compiled kernel on
    the ``cpu`` backend (a generic convolution is 2-10× slower on this shape), PyTorch's
    (cuDNN on CUDA) on the others."""
    if select_backend(desc) == 'cpu' and conv.weight.dtype == torch.float32:
        return convs.spatial_conv(desc, conv.weight.contiguous())
    return conv(desc)


def pointwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for BAM's 1×1 reduction: the compiled kernel on the ``cpu`` backend with at
    most 512 input channels (with more, PyTorch's is the faster one: docs/performance.md)."""
    if select_backend(x) == 'cpu' and x.shape[1] <= 512 and conv.weight.dtype == torch.float32:
        return convs.pointwise_conv(x, conv.weight.reshape(conv.weight.shape[0], -1).contiguous(), conv.bias)
    return conv(x)


def probe_triton(device: torch.device, dtype: torch.dtype, force: bool = False) -> bool:
    """Whether the Triton kernels compile and agree with PyTorch on ``device`` for ``dtype``:
    a small CBAM, SE (alone and after a BatchNorm) and BAM, forward and backward, once per
    process (``force``: again). On failure ``auto`` warns once and uses ``torch`` there.

    The check never gets in the caller's way: it runs with gradients on (the first call may come
    under ``no_grad`` or ``inference_mode``), leaves every random number generator as it found
    it, and does not depend on the caller's autocast, deterministic mode or current device. It
    covers one small shape; every later launch at other shapes, dtypes and layouts is guarded
    by itself (a failing one falls back to PyTorch: :mod:`.triton_gate`)."""
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


#: the module classes whose own self-check cases :func:`probe_triton` runs, in registration order
_CHECKED: List[type] = []
#: the channels of every self-check case (input 2 × 24 × 5 × 7)
CHECK_CHANNELS = 24


def register_self_check(cls: type) -> None:
    """Have :func:`probe_triton` run ``cls.kernel_check_cases()``: ``[(make, with_bn), ...]``,
    each ``make()`` a module of :data:`CHECK_CHANNELS` channels run on the ``triton`` and the
    ``torch`` backend (after a BatchNorm with ``with_bn``: ``forward_with_bn``). The attention
    module classes register themselves (``models/layers/base.py``), so nothing here imports them."""
    if not callable(getattr(cls, 'kernel_check_cases', None)):
        raise TypeError(f'register_self_check: {cls.__name__} has no kernel_check_cases()')
    if cls not in _CHECKED:
        _CHECKED.append(cls)


def _run_probe(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    try:
        with _isolated(device):
            return _compare_backends(device, dtype, [case for cls in _CHECKED for case in cls.kernel_check_cases()])
    except Exception as e:  # a compile error, a launch failure: report, never crash auto
        return f'{type(e).__name__}: {e}'


def _compare_backends(device: torch.device, dtype: torch.dtype, cases) -> Optional[str]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, CHECK_CHANNELS, 5, 7, generator=gen).to(device)
    w = torch.randn(2, CHECK_CHANNELS, 5, 7, generator=gen).to(device)
    tol = 1e-3 if dtype == torch.float32 else 6e-2
    if not cases:
        return 'no module class registered a self-check (cbam_det.kernels.dispatch.register_self_check)'
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
