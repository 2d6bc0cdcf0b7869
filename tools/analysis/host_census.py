"""Host census of the attention modules (CBAM, Woo et al., ECCV 2018; SE, Hu et al., CVPR 2018;
BAM, Park et al., BMVC 2018): what a module step costs the host, which is what a GPU waits for
when a detector's training step is launch-bound.

    python tools/analysis/host_census.py                  # per-module counts, every setting
    python tools/analysis/host_census.py --replay         # host ms per ResNet-50 step, per variant
    python tools/analysis/host_census.py --replay --json work_dirs/host_census.json
    python tools/analysis/host_census.py --per-call       # host µs of one module call, alone

The command runs itself in Triton's interpreter (``TRITON_INTERPRET=1``), where the ``triton``
backend takes CPU tensors, and skips every Triton launch at Triton's own entry
(``KernelInterface.run``, :func:`launches_skipped`), counting it: what remains is the host work
a GPU would wait for, our launchers' included, Triton's own launch cost excluded.

**Per module call** (:func:`module_census`), forward and backward, in float32 or under bfloat16
autocast, alone or after a BatchNorm (its own counts subtracted: "beyond the BN before it"):

- ``kernels``: aten calls that launch a kernel on a GPU: the leaves of the profiler's op tree
  (an op whose work is done by its children counts through them), without views, allocations
  (``empty*``) and no-op ``contiguous`` / ``to`` (:data:`NOT_KERNELS`); each call of a
  ``cbam_det::`` op with a C++ kernel (the ``cpu`` backend) counts as one;
- ``launches``: Triton launches;
- ``nested_autograd``: autograd engine runs started inside the step (``torch.autograd.grad`` /
  ``backward`` called by a backward);
- ``python``: Python function calls (``sys.setprofile`` 'call' events);
- ``casts``: dtype conversions (``aten::_to_copy``);
- ``syncs``: host synchronisations (``item``, ``bool``/``float``/``int`` of a tensor, ``nonzero``,
  ``tolist``, ``.cpu()``, ``numpy``), seen by a ``TorchFunctionMode`` in a run of its own.

Counts are deterministic; tests/test_host_census.py holds them as budgets.

**One module call, timed alone** (:func:`per_call`): a BatchNorm and the module, called over and over
with nothing between the calls (a training step: forward and backward; inference: forward under
``no_grad``), minus the BatchNorm alone; host µs per call, and the ratio to the timm-style CBAM's in
the same run. Here the module's own host work is all that is timed; in the network replay below the
same work costs more, because the network's arithmetic between the calls evicts what it keeps warm
in the CPU's caches (on a GPU that arithmetic runs on the device).

**Whole network** (:func:`replay`): a ResNet-50 at base width 8 on 2×3×64×64, one thread, so
that the arithmetic is small and the host work dominates; training (forward + backward) and
inference steps, float32 and bfloat16 autocast, the variants alternating inside every repeat;
host ms per step and the extra over the plain network, each extra also as a ratio to the
timm-style CBAM's (:class:`eager_reference.TimmStyleCBAM`) in the same run.
"""

import argparse
import contextlib
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

__all__ = [
    'NOT_KERNELS',
    'SYNC_METHODS',
    'launches_skipped',
    'module_census',
    'census_table',
    'replay',
    'per_call',
    'SETTINGS',
]

#: aten ops that launch no kernel on a GPU: views, allocations, metadata, no-op conversions
NOT_KERNELS = frozenset(
    'aten::' + n
    for n in (
        'view as_strided expand permute transpose t squeeze unsqueeze select slice alias detach detach_ '
        '_reshape_alias reshape view_as expand_as flatten unflatten split split_with_sizes chunk narrow unbind '
        'empty empty_like empty_strided new_empty new_empty_strided resize_ contiguous to lift_fresh '
        'resolve_conj resolve_neg _unsafe_view numpy_T movedim unfold diagonal as_strided_ _nnpack_available '
        'is_same_size result_type'
    ).split()
)
#: Tensor methods (and the Python conversions) that wait for the device
SYNC_METHODS = frozenset(('item', 'tolist', 'cpu', 'numpy', 'nonzero', '__bool__', '__float__', '__int__', '__index__'))
SYNC_OPS = frozenset(('aten::_local_scalar_dense', 'aten::nonzero', 'aten::is_nonzero', 'aten::item'))


def _interpreted() -> bool:
    return os.environ.get('TRITON_INTERPRET') == '1'


# ---------------------------------------------------------------- counters


@contextlib.contextmanager
def launches_skipped() -> Iterator[List[str]]:
    """Every Triton launch inside the block is counted (its kernel's name appended to the list
    yielded) and skipped, at Triton's own entry: ``fn[grid](...)``, which calls ``run`` of a
    ``JITFunction`` and, in the interpreter, returns a grid executor (Triton 3.1) or calls ``run``
    (later versions); both are replaced."""
    from triton.runtime import jit

    names: List[str] = []

    def run(self, *args, grid, warmup, **kwargs):
        names.append(getattr(self, '__name__', None) or self.fn.__name__)

    def getitem(self, grid):
        return lambda *args, **kwargs: names.append(self.fn.__name__)

    patches = [(jit.JITFunction, 'run', run)]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        patches += [(InterpretedFunction, 'run', run), (InterpretedFunction, '__getitem__', getitem)]
    except ImportError:
        pass
    saved = [(c, attr, c.__dict__.get(attr)) for c, attr, _ in patches]
    for c, attr, fn in patches:
        setattr(c, attr, fn)
    try:
        yield names
    finally:
        for c, attr, old in saved:
            if old is None:
                delattr(c, attr)
            else:
                setattr(c, attr, old)


class _PythonCalls:
    """Python function calls ('call' events) on every thread while active. The cyclic garbage
    collector is paused inside: a collection that happened to start in the block would run
    ``gc.callbacks`` and the finalisers of whatever it frees, Python calls that belong to no module
    (the count would depend on what ran before)."""

    def __init__(self) -> None:
        self.count = 0

    def _hook(self, frame, event, arg) -> None:
        if event == 'call':
            self.count += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator['_PythonCalls']:
        enabled = gc.isenabled()
        gc.disable()
        sys.setprofile(self._hook)
        threading.setprofile(self._hook)
        try:
            yield self
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            if enabled:
                gc.enable()


@contextlib.contextmanager
def _engine_runs() -> Iterator[List[int]]:
    """Calls of ``torch.autograd.grad`` / ``torch.autograd.backward`` inside the block."""
    runs = [0]
    grad, backward = torch.autograd.grad, torch.autograd.backward

    def counted(fn):
        def wrapper(*args, **kwargs):
            runs[0] += 1
            return fn(*args, **kwargs)

        return wrapper

    torch.autograd.grad, torch.autograd.backward = counted(grad), counted(backward)
    try:
        yield runs
    finally:
        torch.autograd.grad, torch.autograd.backward = grad, backward


class _SyncMode(torch.overrides.TorchFunctionMode):
    """Counts the Tensor methods that synchronise with the device (:data:`SYNC_METHODS`)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: List[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name in SYNC_METHODS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _op_counts(events, backend: str) -> Dict[str, int]:
    """kernels, casts and syncs among the profiler's events of one phase, walked from the roots
    of the event tree (through events that are not ops, e.g. autograd's). An aten op counts one
    kernel unless its descendants launch kernels (then they are counted instead) or all its tensors
    are empty (then it launches none). A ``cbam_det::``
    op is one kernel call where its kernel is C++ (the ``cpu`` backend), plus what its C++ calls
    of aten launch; with Triton its launches are counted instead."""
    counts = {'kernels': 0, 'casts': 0, 'syncs': 0}

    def kernels(e) -> int:
        inner = sum(kernels(c) for c in e.cpu_children)
        name = e.name
        if name == 'aten::_to_copy':
            counts['casts'] += 1
        if name in SYNC_OPS:
            counts['syncs'] += 1
            return inner
        if name.startswith('cbam_det::'):
            return inner + (backend == 'cpu')
        if inner or name in NOT_KERNELS or not name.startswith('aten::') or _all_empty(e):
            return inner
        return 1

    counts['kernels'] = sum(kernels(e) for e in events if e.cpu_parent is None)
    return counts


def _all_empty(event) -> bool:
    """Whether every tensor an op gets is empty: it launches no kernel (torch 2.5's per-call probe
    for saved-tensor hooks, a ``sin`` of an empty CPU tensor, where torch has no query for them)."""
    shapes = [s for s in (event.input_shapes or []) if isinstance(s, (list, tuple)) and s]
    return bool(shapes) and all(0 in s for s in shapes)


# ---------------------------------------------------------------- one module step


def kernel_kinds() -> List[str]:
    """The ``_abbr_`` of every module class with kernels (``kernels.dispatch.kernel_modules``):
    'cbam', 'se', 'bam', and any module registered since."""
    from cbam_det.kernels.dispatch import kernel_modules
    from cbam_det.models import layers  # noqa: F401  (the classes register themselves)

    return [cls._abbr_ for cls in kernel_modules()]


def _make(kind: str, c: int) -> nn.Module:
    """The module of ``_abbr_`` ``kind`` with ``c`` channels, its defaults, ``inplace=True`` (as
    mmdet's ResNet and AttnResNet build it)."""
    from cbam_det.models.layers import ATTENTION_MODULES

    return ATTENTION_MODULES[kind](c, inplace=True)


def _phases(module: Optional[nn.Module], bn: Optional[nn.Module], z0: torch.Tensor, amp, train: bool):
    """(forward, backward or None, state) of one step: forward keeps its output in ``state``,
    backward runs the backward of it with a gradient of ones made beforehand."""
    state: dict = {}

    def forward() -> None:
        with contextlib.ExitStack() as stack:
            if not train:
                stack.enter_context(torch.no_grad())
            stack.enter_context(torch.autocast('cpu', dtype=amp or torch.bfloat16, enabled=amp is not None))
            z = z0.detach().requires_grad_(train)
            x = bn(z) if bn is not None else z
            state['y'] = module(x) if module is not None else x

    def backward() -> None:
        y, dy = state.pop('y'), state.pop('dy')
        y.backward(dy)

    def ready() -> None:  # before a counted backward: the output's gradient, and the parameters'
        state['dy'] = torch.ones_like(state['y'])  # gradients cleared as by a training step's zero_grad
        for m in (module, bn):  # (then they are stored, not added)
            if m is not None:
                m.zero_grad(set_to_none=True)

    state['ready'] = ready

    return forward, (backward if train else None), state


def module_census(
    kind: str,
    backend: str,
    dtype: str = 'bfloat16',
    bn_before: bool = True,
    train: bool = True,
    shape: Tuple[int, int, int, int] = (2, 64, 12, 10),
) -> Dict[str, Dict[str, int]]:
    """Counts of one ``kind`` ('cbam', 'se', 'bam') module call on ``backend`` ('torch', 'cpu',
    'triton' with launches skipped), ``dtype`` 'float32' or 'bfloat16' (autocast on the module and
    the BN, the input in bfloat16 as a conv under autocast gives it), after a BatchNorm
    (``bn_before``: its own counts subtracted) or alone (the harness's own counts subtracted: the
    autocast context, whose constructor in torch 2.5 on a machine without CUDA searches for
    ``torch_xla`` on every call), a training step (forward + backward) or
    inference (forward under ``no_grad``, eval mode). Returns ``{'forward': {...}, 'backward':
    {...}, 'step': {...}}``, each with kernels, launches, nested_autograd, python, casts, syncs."""
    from cbam_det import kernels

    if backend == 'triton' and not _interpreted():
        raise RuntimeError('host_census: the triton backend on CPU tensors needs TRITON_INTERPRET=1')
    amp = {'float32': None, 'bfloat16': torch.bfloat16}[dtype]
    torch.manual_seed(0)
    module = _make(kind, shape[1])
    bn = nn.BatchNorm2d(shape[1]) if bn_before else None
    for m in (module, bn):
        if m is not None:
            m.train(train)
    z0 = torch.randn(*shape).to(amp or torch.float32)
    with kernels.use_backend(backend):
        full = _count(module, bn, z0, amp, train, backend)
        base = _count(None, bn, z0, amp, train, backend)  # the BN's counts, or the harness's own
    return {ph: {k: full[ph][k] - base[ph][k] for k in full[ph]} for ph in full}


def _count(module, bn, z0, amp, train: bool, backend: str) -> Dict[str, Dict[str, int]]:
    forward, backward, state = _phases(module, bn, z0, amp, train)
    for _ in range(2):  # warm up: caches, the self-check, the C++ build
        with launches_skipped():
            forward()
            if train:
                state['ready']()
                backward()
    out = {phase: _count_phase(forward, backward, phase, backend, state) for phase in ('forward', 'backward')}
    out['step'] = {k: out['forward'][k] + out['backward'][k] for k in out['forward']}
    return out


_KEYS = ('kernels', 'launches', 'nested_autograd', 'python', 'casts', 'syncs')


def _count_phase(forward, backward, phase: str, backend: str, state: dict) -> Dict[str, int]:
    """Counts of one phase, each counter in a run of its own (they would disturb each other)."""
    if phase == 'backward' and backward is None:
        return dict.fromkeys(_KEYS, 0)

    def prepare() -> None:
        if phase == 'backward':
            with launches_skipped():
                forward()
            state['ready']()

    run = forward if phase == 'forward' else backward
    result: Dict[str, int] = {}
    prepare()
    with launches_skipped() as names, _engine_runs() as runs:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            run()
    result.update(_op_counts(prof.events(), backend))
    result['launches'] = len(names)
    result['nested_autograd'] = max(0, runs[0] - (1 if phase == 'backward' else 0))
    prepare()
    calls = _PythonCalls()
    with launches_skipped(), calls.counting():
        run()
    result['python'] = calls.count
    prepare()
    mode = _SyncMode()
    with launches_skipped(), mode:
        run()
    result['syncs'] = max(result['syncs'], len(mode.seen))
    state.pop('y', None)
    state.pop('dy', None)
    return {k: result[k] for k in _KEYS}


#: the settings of the census table: (kind, backend, dtype, after a BN)
SETTINGS = [
    (kind, backend, dtype, bn)
    for kind in kernel_kinds()
    for backend in ('triton', 'cpu', 'torch')
    for dtype in ('bfloat16', 'float32')
    for bn in (True, False)
    if not (backend == 'cpu' and dtype != 'float32')
]


def census_table(settings=SETTINGS) -> List[dict]:
    """One row per setting and mode (training step, inference)."""
    rows = []
    for kind, backend, dtype, bn in settings:
        for train in (True, False):
            counts = module_census(kind, backend, dtype, bn, train)
            rows.append(dict(kind=kind, backend=backend, dtype=dtype, bn=bn, train=train, **counts))
    return rows


def _print_table(rows: List[dict]) -> None:
    print('per module call, beyond the BatchNorm before it where "after BN"; fwd + bwd = step')
    print('| module | backend | dtype | input | mode | kernels | launches | nested autograd | python | casts | syncs |')
    print('|---|---|---|---|---|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        s, f, b = r['step'], r['forward'], r['backward']

        def both(k, s=s, f=f, b=b, train=r['train']):
            return f'{s[k]} ({f[k]}+{b[k]})' if train else f'{s[k]}'

        print(
            f'| {r["kind"]} | {r["backend"]} | {r["dtype"]} | {"after BN" if r["bn"] else "alone"} | '
            f'{"train" if r["train"] else "infer"} | {both("kernels")} | {both("launches")} | '
            f'{both("nested_autograd")} | {both("python")} | {both("casts")} | {both("syncs")} |'
        )


# ---------------------------------------------------------------- the whole network


def replay_variants(width: int = 8) -> Dict[str, Tuple[Callable[[], nn.Module], Optional[str]]]:
    """{name: (network factory, backend)} of the replay: plain, the timm-style CBAM, the eager
    reference, the floor of a module with one autograd node (``NodeFloor``), ours on each backend,
    SE and BAM ×3."""
    from eager_reference import EagerCBAM, NodeFloor, TimmStyleCBAM
    from toolkit import ResNet50

    from cbam_det import CBAM
    from cbam_det.models.layers import ATTENTION_MODULES

    def net(att=None, bam=None):
        return lambda: ResNet50(att, False, bam, width=width)

    out = {
        'plain': (net(), 'torch'),
        'cbam_timm_style': (net(TimmStyleCBAM), 'torch'),
        'cbam_eager': (net(lambda c: EagerCBAM(CBAM(c))), 'torch'),
        'node_floor': (net(NodeFloor), 'torch'),
    }
    for kind in kernel_kinds():  # every module with kernels, where its paper puts it, on each backend
        cls = ATTENTION_MODULES[kind]
        between = cls.paper_placement == 'stage'
        module = functools.partial(cls, inplace=True)
        make = net(bam=module) if between else net(module)
        for backend in ('torch', 'cpu', 'triton'):
            out[f'{kind}{3 if between else ""}_{backend}'] = (make, backend)
    return out


def replay(
    dtypes=('bfloat16', 'float32'),
    shape=(2, 3, 64, 64),
    width: int = 8,
    repeats: int = 5,
    steps: int = 3,
    variants: Optional[List[str]] = None,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Host ms per step, ``{dtype: {mode: {variant: ms}}}``, medians over ``repeats``, each
    repeat ``steps`` steps of every variant in alternating order; Triton launches skipped."""
    from toolkit import step_fns

    chosen = {k: v for k, v in replay_variants(width).items() if variants is None or k in variants}
    torch.manual_seed(0)
    x = torch.randn(*shape)
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    with launches_skipped(), denormals_flushed():
        for dtype in dtypes:
            amp = None if dtype == 'float32' else getattr(torch, dtype)
            fns = {}
            for name, (make, backend) in chosen.items():
                if backend == 'cpu' and amp is not None:
                    continue  # the C++ kernels take float32: under bf16 autocast auto would not pick them
                torch.manual_seed(0)
                fns[name] = step_fns(make(), x, amp=amp, backend=backend)
            times: Dict[str, Dict[str, List[float]]] = {n: {'train': [], 'inference': []} for n in fns}
            for mode in ('train', 'inference'):
                for n in fns:
                    fns[n][mode]()  # warm-up
                for r in range(repeats):
                    for n in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                        t = time.perf_counter()
                        for _ in range(steps):
                            fns[n][mode]()
                        times[n][mode].append((time.perf_counter() - t) / steps * 1e3)
            out[dtype] = {m: {n: statistics.median(times[n][m]) for n in fns} for m in ('train', 'inference')}
    return out


#: {variant: (module kind, backend)} of :func:`per_call`; 'timm' is the timm-style CBAM, 'floor' the
#: floor of a module with one autograd node (``eager_reference.NodeFloor``)
PER_CALL_VARIANTS = {
    'cbam_timm_style': ('timm', 'torch'),
    'node_floor': ('floor', 'torch'),
    'cbam_torch': ('cbam', 'torch'),
    'cbam_cpu': ('cbam', 'cpu'),
    'cbam_triton': ('cbam', 'triton'),
    'se_cpu': ('se', 'cpu'),
    'se_triton': ('se', 'triton'),
}


def per_call(
    dtypes=('bfloat16', 'float32'), shape=(2, 64, 16, 16), repeats: int = 7, calls: int = 200
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Host µs of one module call after a BatchNorm, beyond the BatchNorm's own, ``{dtype: {mode:
    {variant: µs}}}``: medians over ``repeats``, each ``calls`` calls of every variant in
    alternating order (``toolkit.time_alternating``); Triton launches skipped. The ``cpu`` backend
    (float32 only) computes."""
    from toolkit import time_alternating

    modes = ('train', 'inference')
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    with launches_skipped(), denormals_flushed():
        for dtype in dtypes:
            amp = None if dtype == 'float32' else getattr(torch, dtype)
            fns = {
                name: {mode: _repeated_calls(kind, backend, shape, amp, mode == 'train', calls) for mode in modes}
                for name, (kind, backend) in [('bn', (None, 'torch'))] + list(PER_CALL_VARIANTS.items())
                if backend != 'cpu' or amp is None  # the C++ kernels take float32
            }
            times = time_alternating(fns, 'cpu', repeats, kinds=modes)
            med = {n: {m: statistics.median(times[n][m]) / calls * 1e6 for m in modes} for n in fns}
            out[dtype] = {m: {n: med[n][m] - med['bn'][m] for n in fns if n != 'bn'} for m in modes}
    return out


def _repeated_calls(kind: Optional[str], backend: str, shape, amp, train: bool, calls: int) -> Callable[[], None]:
    """``calls`` steps of a BatchNorm and the ``kind`` module (None: the BN alone; 'timm': the
    timm-style CBAM; 'floor': the floor of a module with one autograd node) on ``backend``: forward
    and backward, or forward under ``no_grad``."""
    from eager_reference import NodeFloor, TimmStyleCBAM

    from cbam_det import kernels

    torch.manual_seed(0)
    special = {'timm': TimmStyleCBAM, 'floor': NodeFloor}
    module = None if kind is None else special[kind](shape[1]) if kind in special else _make(kind, shape[1])
    bn = nn.BatchNorm2d(shape[1])
    for m in (module, bn):
        if m is not None:
            m.train(train)
    forward, backward, state = _phases(module, bn, torch.randn(*shape).to(amp or torch.float32), amp, train)

    def run() -> None:
        for _ in range(calls):
            with kernels.use_backend(backend):
                forward()
                if train:
                    state['ready']()
                    backward()
                else:
                    state.pop('y')

    return run


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Denormal numbers flushed to zero inside the block. A skipped launch leaves its outputs
    uninitialised, and denormal garbage would slow the CPU's arithmetic after the module; the
    timm-style CBAM's own arithmetic moved by up to 1.5× between runs with them (compute, not host
    time)."""
    flush = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _print_tables(res: dict, title: str, columns: List[str], cells: Callable[[dict, str], List[str]]) -> None:
    """One markdown table per dtype: a row per variant, ``cells(results of a mode, variant)`` for
    training, then for inference."""
    print(title)
    for dtype, modes in res.items():
        print(f'\n{dtype}\n| variant | ' + ' | '.join(columns) + ' |')
        print('|---|' + '---:|' * len(columns))
        for name in modes['train']:
            print(f'| {name} | ' + ' | '.join(c for m in ('train', 'inference') for c in cells(modes[m], name)) + ' |')


def _print_per_call(res: dict, args) -> None:
    def cells(mode: dict, name: str) -> List[str]:
        us, timm = mode[name], mode['cbam_timm_style']
        return [f'{us:.1f}', f'{us / timm:.2f}' if timm > 0 else '']

    shape = 'x'.join(map(str, args.shape))
    title = (
        f'host µs of one module call after a BatchNorm at {shape}, beyond the BN (1 thread, Triton launches '
        f'skipped), median of {args.repeats} repeats of {args.calls} calls; × timm-style = µs / its µs'
    )
    _print_tables(res, title, ['training step µs', '× timm-style', 'inference µs', '× timm-style'], cells)


def _print_replay(res: dict, args) -> None:
    def cells(mode: dict, name: str) -> List[str]:
        extra, timm = mode[name] - mode['plain'], mode.get('cbam_timm_style', 0.0) - mode['plain']
        return [f'{mode[name]:.2f}', f'{extra:+.2f}', f'{extra / timm:.2f}' if timm > 0 and name != 'plain' else '']

    shape = 'x'.join(map(str, args.shape))
    title = (
        f'host ms per ResNet-50 step (base width {args.width}, {shape}, 1 thread, Triton launches skipped), '
        f'median of {args.repeats} repeats of {args.steps} steps; extra = ms − plain; × timm-style = extra / its extra'
    )
    columns = ['train ms', 'extra', '× timm-style', 'inference ms', 'extra', '× timm-style']
    _print_tables(res, title, columns, cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument('--replay', action='store_true', help='the whole-network replay instead of the module table')
    what.add_argument('--per-call', action='store_true', help='one module call timed alone instead of the table')
    parser.add_argument(
        '--shape', type=int, nargs=4, metavar=('N', 'C', 'H', 'W'),
        help="the network's input (--replay; default 2 3 64 64) or the module's (--per-call; default 2 64 16 16)",
    )  # fmt: skip
    parser.add_argument('--calls', type=int, default=200, help='calls per repeat and variant (--per-call)')
    parser.add_argument('--width', type=int, default=8, help="the ResNet-50's base width in the replay")
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--steps', type=int, default=3, help='steps per repeat and variant')
    parser.add_argument('--dtypes', nargs='+', default=['bfloat16', 'float32'], choices=['bfloat16', 'float32'])
    parser.add_argument('--variants', nargs='+', help='replay variants (default: all)')
    parser.add_argument('--json', help='write the results here too')
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1 or args.width < 1 or args.calls < 1:
        parser.error('--repeats, --steps, --width and --calls must be >= 1')
    if args.shape is None:
        args.shape = (2, 64, 16, 16) if args.per_call else (2, 3, 64, 64)
    if not _interpreted():  # the triton backend takes CPU tensors only in Triton's interpreter
        env = dict(os.environ, TRITON_INTERPRET='1')
        sys.exit(subprocess.call([sys.executable] + sys.argv, env=env))
    torch.set_num_threads(1)
    if args.replay:
        res = replay(args.dtypes, tuple(args.shape), args.width, args.repeats, args.steps, args.variants)
        _print_replay(res, args)
    elif args.per_call:
        res = per_call(args.dtypes, tuple(args.shape), args.repeats, args.calls)
        _print_per_call(res, args)
    else:
        res = census_table()
        _print_table(res)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)


if __name__ == '__main__':
    main()
