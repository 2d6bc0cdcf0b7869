"""Launch census of the Triton kernels (:mod:`.triton_gate`) without a GPU: what a GPU would be
given and what it would cost, for CBAM (Woo et al., ECCV 2018), SE and BAM (Park et al., 2018).

- :func:`recording` records every launch (kernel, grid, the specialization Triton's JIT
  would compile: argument types, 16-byte alignment, constants) and optionally skips it, so a
  network can run at full size on ``meta`` tensors (shapes only, no memory, no time) and show
  the exact grids; with ``count=True`` in Triton's interpreter it counts the bytes each launch
  loads and stores of its full-size (4-d) operands, so the passes over memory are measured.
- :func:`compile_specs` compiles recorded specializations ahead of time for real targets
  (``sm_80``, ``sm_90``, ``sm_100``, ``sm_120``) with the ptxas that ships with Triton and reads
  registers and stack (spills) of each cubin with the bundled ``cuobjdump``.
- :func:`passes` sums the measured passes of the launches of one module step.

``python -m cbam_det.kernels.census compile IN.json OUT.json`` is the compile step on its own
(run in a fresh process when the caller has Triton's interpreter on).
"""

import contextlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import fused
from . import triton_gate as T

__all__ = [
    'Launch',
    'recording',
    'passes',
    'compile_specs',
    'ARCHS',
    'REGISTER_LIMIT',
    'KINDS',
    'unique_specs',
    'module_step',
    'module_launches',
    'module_passes',
    'resnet50_stages',
    'cspdarknet_s_stages',
]

ARCHS = (80, 90, 100, 120)
REGISTER_LIMIT = 128
_DT = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


@dataclass
class Launch:
    """One kernel launch as a GPU would receive it."""

    kernel: str
    grid: Tuple[int, ...]
    shape: Optional[Tuple[int, ...]]  # the full-size operand (N, C, H, W), None for small kernels
    spec: List[list]  # [name, kind, value] per parameter: ptr (dtype, aligned), int, float, const
    warps: int
    tag: str = ''  # set by the caller (e.g. the module's name)
    full_bytes: Optional[int] = None  # bytes of 4-d operands loaded + stored (count=True)
    other_bytes: Optional[int] = None
    full_elements: Optional[int] = None  # N·C·H·W of the full-size operand, times its element size

    @property
    def programs(self) -> int:
        out = 1
        for g in self.grid:
            out *= g
        return out

    @property
    def passes(self) -> Optional[float]:
        """Full-size bytes moved / bytes of one full-size tensor."""
        if self.full_bytes is None:
            return None
        return self.full_bytes / self.full_elements if self.full_elements else 0.0

    def key(self) -> str:
        """The compiled kernel this launch needs: name, specialization, warps."""
        return json.dumps([self.kernel, self.spec, self.warps])


def _describe(kernel, grid, args, meta, warps: int) -> Launch:
    fn = kernel.fn
    names = list(inspect.signature(fn).parameters)
    spec, shape, elems = [], None, None
    for name, value in zip(names, list(args) + [meta[k] for k in names[len(args) :]]):
        if name in meta:
            spec.append([name, 'const', value])
        elif isinstance(value, torch.Tensor):
            aligned = value.device.type == 'meta' or value.data_ptr() % 16 == 0
            spec.append([name, 'ptr', [_DT[value.dtype], aligned]])
            if value.dim() == 4 and shape is None:
                shape, elems = tuple(value.shape), value.numel() * value.element_size()
        elif value is None:
            spec.append([name, 'const', None])
        elif isinstance(value, bool):
            spec.append([name, 'const', value])
        elif isinstance(value, int):
            spec.append([name, 'int', value])
        elif isinstance(value, float):
            spec.append([name, 'float', value])
        else:
            raise TypeError(f'census: argument {name} of {fn.__name__}: unsupported {type(value).__name__}')
    return Launch(fn.__name__, tuple(grid), shape, spec, warps, full_elements=elems)


# ---------------------------------------------------------------- counting bytes in the interpreter

_regions: List[Optional[list]] = [None]  # per 4-d/other tensor argument: [lo, hi, is_full, bytes]


def _count(ptrs, mask) -> None:
    regions = _regions[0]
    if regions is None:
        return
    import numpy as np

    addr = np.asarray(ptrs.data).astype(np.uint64)
    m = np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)
    size = ptrs.get_element_ty().primitive_bitwidth // 8
    for r in regions:
        r[3] += int(np.count_nonzero(m & (addr >= r[0]) & (addr < r[1]))) * size


@contextlib.contextmanager
def _patched_interpreter() -> Iterator[None]:
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store

    def masked_load(self, ptrs, mask, *rest):
        _count(ptrs, mask)
        return load(self, ptrs, mask, *rest)

    def masked_store(self, ptrs, value, mask, *rest):
        _count(ptrs, mask)
        return store(self, ptrs, value, mask, *rest)

    builder.create_masked_load, builder.create_masked_store = masked_load, masked_store
    try:
        yield
    finally:
        builder.create_masked_load, builder.create_masked_store = load, store


@contextlib.contextmanager
def recording(execute: bool = True, count: bool = False, read_bn_nodes: bool = False) -> Iterator[List[Launch]]:
    """Record every Triton launch inside the block (a list, filled as they happen).

    ``execute=False``: launches are recorded, not run (their outputs stay uninitialised), which
    with ``meta`` tensors walks a full-size network in no time. ``count=True`` (interpreter
    only): each launch's bytes loaded and stored of its 4-d operands (``full_bytes``) and of
    the rest. ``read_bn_nodes``: let a plugin after a BatchNorm read the BN's autograd node,
    as on the CPU; the default records what a GPU with cuDNN runs, whose BN node is cuDNN's
    (the plugin then keeps its input).
    """
    if count and not T.INTERPRETED:
        raise RuntimeError("census: count=True needs Triton's interpreter (TRITON_INTERPRET=1 before importing triton)")
    if count and not execute:
        raise ValueError('census: count=True needs execute=True')
    launches: List[Launch] = []

    def hook(kernel, grid, args, meta, warps, run) -> None:
        launch = _describe(kernel, grid, args, meta, warps)
        launches.append(launch)
        if not execute:
            return
        if not count:
            run()
            return
        regions = {}
        for a in args:
            if isinstance(a, torch.Tensor):  # the tensor's own extent (a view shares its storage)
                lo = a.data_ptr()
                hi = lo + (1 + sum((n - 1) * st for n, st in zip(a.shape, a.stride()))) * a.element_size()
                regions[(lo, hi)] = [lo, hi, a.dim() == 4, 0]  # once, if passed twice (dx written over z)
        regions = list(regions.values())
        _regions[0] = regions
        try:
            run()
        finally:
            _regions[0] = None
        launch.full_bytes = sum(r[3] for r in regions if r[2])
        launch.other_bytes = sum(r[3] for r in regions if not r[2])

    previous = T._hook[0], fused.settings['read_bn_nodes']
    T._hook[0], fused.settings['read_bn_nodes'] = hook, read_bn_nodes
    ctx = _patched_interpreter() if count else contextlib.nullcontext()
    try:
        with ctx:
            yield launches
    finally:
        T._hook[0], fused.settings['read_bn_nodes'] = previous


def active() -> bool:
    """Whether a :func:`recording` block is open (then ``meta`` tensors may take the Triton path)."""
    return T._hook[0] is not None


def passes(launches: Sequence[Launch]) -> float:
    """Full-size passes of a set of counted launches (one module step)."""
    missing = [launch.kernel for launch in launches if launch.passes is None]
    if missing:
        raise ValueError(f'census: launches without counted bytes: {missing}')
    return sum(launch.passes for launch in launches)


def unique_specs(launches: Sequence[Launch]) -> List[list]:
    """The distinct (kernel, specialization, warps) of ``launches``, in first-seen order."""
    seen: Dict[str, list] = {}
    for launch in launches:
        seen.setdefault(launch.key(), json.loads(launch.key()))
    return list(seen.values())


# ---------------------------------------------------------------- ahead-of-time compilation


def _ast_source(fn, spec: List[list]):
    """Triton's ASTSource for ``spec`` as its JIT would specialize it (ints equal to 1 and None
    become constants; pointers and ints divisible by 16 get the divisibility attribute)."""
    from triton.compiler import ASTSource

    names = [s[0] for s in spec]
    sig, consts, div, ones = {}, {}, [], []
    for i, (name, kind, value) in enumerate(spec):
        if kind == 'const' or (kind == 'int' and value == 1):
            sig[name], consts[name] = 'constexpr', value
            if kind == 'int':
                ones.append(i)
        elif kind == 'ptr':
            sig[name] = '*' + value[0]
            if value[1]:
                div.append(i)
        elif kind == 'int':
            sig[name] = 'i32' if -(2**31) <= value < 2**31 else 'i64'
            if value % 16 == 0:
                div.append(i)
        else:
            sig[name] = 'fp32'
    params = inspect.signature(ASTSource.__init__).parameters
    if 'constexprs' in params:  # triton >= 3.2: names, attributes per argument path
        attrs = {(i,): [['tt.divisibility', 16]] for i in div}
        return ASTSource(fn, sig, consts, attrs)
    from triton.compiler.compiler import AttrsDescriptor  # triton 3.0 / 3.1

    index = {n: i for i, n in enumerate(names)}
    signature = {index[n]: t for n, t in sig.items() if t != 'constexpr'}
    constants = {index[n]: v for n, v in consts.items()}
    return ASTSource(fn, signature, constants, AttrsDescriptor(divisible_by_16=div, equal_to_1=ones))


def _tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', name)
    if not os.path.exists(path):
        raise FileNotFoundError(f'census: {name} is not bundled with this triton ({path})')
    return path


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """Registers, stack, local and shared memory per thread / block, from ``cuobjdump --dump-resource-usage``."""
    with tempfile.NamedTemporaryFile(suffix='.cubin', delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([_tool('cuobjdump'), '--dump-resource-usage', f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    m = re.search(r'REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)', out.stdout)
    if m is None:
        raise RuntimeError(f'census: cuobjdump printed no resource usage:\n{out.stdout}\n{out.stderr}')
    return dict(zip(('registers', 'stack', 'shared', 'local'), map(int, m.groups())))


def compile_one(kernel: str, spec: List[list], warps: int, arch: int) -> dict:
    """Compile one specialization for ``sm_<arch>``: resource usage, or ``skipped`` with the
    reason where this triton cannot target the architecture."""
    import triton
    from triton.backends.compiler import GPUTarget

    if T.INTERPRETED:
        raise RuntimeError('census: compile without TRITON_INTERPRET=1 (the interpreter replaces the JIT)')
    fn = getattr(T, kernel)
    try:
        compiled = triton.compile(
            _ast_source(fn, spec), target=GPUTarget('cuda', arch, 32), options={'num_warps': warps}
        )
    except Exception as e:  # noqa: BLE001 - a target this triton/ptxas does not know is reported, not raised
        text = f'{type(e).__name__}: {e}'
        if _unsupported_target(text):
            return dict(
                skipped=f'triton {triton.__version__} cannot compile for sm_{arch}: {text.splitlines()[0][:200]}'
            )
        raise
    return resource_usage(compiled.asm['cubin'])


def _unsupported_target(text: str) -> bool:
    return bool(
        re.search(r'not defined for option|[Uu]nsupported (gpu )?arch|is not a recognized processor|ptxas fatal', text)
    )


def compile_specs(specs: Sequence[list], archs: Sequence[int] = ARCHS, jobs: int = 0) -> List[dict]:
    """Compile every ``[kernel, spec, warps]`` for every arch: a list of dicts (kernel, arch,
    warps, spec, then registers, stack, local, shared, or ``skipped`` with the reason). With the
    interpreter on, or ``jobs`` > 1, the work runs in fresh processes, one arch each
    (``python -m cbam_det.kernels.census compile``): an arch whose compile aborts the process
    (triton 3.1's LLVM on sm_100/sm_120) is reported skipped."""
    jobs = jobs or min(len(specs), os.cpu_count() or 1, 8)
    if not (T.INTERPRETED or jobs > 1):
        out = []
        for kernel, spec, warps in specs:
            for arch in archs:
                res = compile_one(kernel, spec, warps, arch)
                out.append(dict(kernel=kernel, arch=arch, warps=warps, spec=spec, **res))
        return out
    per_arch = max(1, jobs // len(archs))
    work = [(arch, list(specs[i::per_arch])) for arch in archs for i in range(per_arch)]
    out = []
    for i in range(0, len(work), jobs):  # at most ``jobs`` processes at a time
        out += _in_processes(work[i : i + jobs])
    return out


def _in_processes(work: List[Tuple[int, list]]) -> List[dict]:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.setdefault('CBAM_DET_LAYERS_ONLY', '1')
    procs = []
    for arch, chunk in work:
        src = tempfile.NamedTemporaryFile('w', suffix='.json', delete=False)
        json.dump(dict(specs=chunk, archs=[arch]), src)
        src.close()
        cmd = [sys.executable, '-m', 'cbam_det.kernels.census', 'compile', src.name, src.name + '.out']
        procs.append(
            (
                arch,
                chunk,
                src.name,
                subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            )
        )
    results = []
    for arch, chunk, src, p in procs:
        _, err = p.communicate()
        os.unlink(src)
        if p.returncode != 0:
            if not _unsupported_target(err):
                raise RuntimeError(f'census: the compile process failed:\n{err[-3000:]}')
            import triton

            why = next((line for line in err.splitlines() if 'ERROR' in line or 'not a recognized' in line), '')
            reason = f'triton {triton.__version__} cannot compile for sm_{arch}: {why.strip()[:200]}'
            results += [dict(kernel=k, arch=arch, warps=w, spec=sp, skipped=reason) for k, sp, w in chunk]
            continue
        with open(src + '.out') as f:
            results += json.load(f)
        os.unlink(src + '.out')
    return results


# ---------------------------------------------------------------- one attention module

#: the module setups of :func:`module_step`: plugin = the module on its input; fused = with the
#: BatchNorm before it folded in (``forward_with_bn``, AttnResNet's blocks); BAM's gate
KINDS = ('cbam_plugin', 'cbam_fused', 'se_plugin', 'se_fused', 'bam')


def resnet50_stages(n: int, h: int, w: int) -> List[Tuple[int, int, int, int]]:
    """The four ResNet-50 stage outputs of an (n, 3, h, w) input (strides 4-32), where CBAM/SE sit."""
    return [(n, 256 * 2**i, -(-h // 2 ** (i + 2)), -(-w // 2 ** (i + 2))) for i in range(4)]


def cspdarknet_s_stages(n: int, h: int, w: int) -> List[Tuple[int, int, int, int]]:
    """YOLOX-S's CSPDarknet stage outputs (widen 0.5: 64-512 channels, strides 4-32)."""
    return [(n, 64 * 2**i, -(-h // 2 ** (i + 2)), -(-w // 2 ** (i + 2))) for i in range(4)]


def module_step(kind: str, x: torch.Tensor, train: bool = True) -> None:
    """One step of an attention module of ``kind`` (:data:`KINDS`) on ``x`` on the ``triton``
    backend: forward, and with ``train`` a backward of a fixed output gradient. The module is
    ``inplace=True`` as mmdet's ResNet builds plugins, on an intermediate tensor (x·1)."""
    from torch import nn

    from ..models.layers import BAM, CBAM, SE
    from .dispatch import use_backend

    if kind not in KINDS:
        raise ValueError(f'census: kind={kind!r}; allowed: {", ".join(KINDS)}')
    c = x.shape[1]
    torch.manual_seed(0)
    make = {'cbam': CBAM, 'se': SE, 'bam': lambda c, r: BAM(c, r, 1, inplace=True)}[kind.split('_')[0]]
    m = make(c, 4) if kind == 'bam' else make(c, 4, inplace=True)
    m = m.to(x.device).train(train)
    bn = nn.BatchNorm2d(c).to(x.device).train(train) if kind.endswith('fused') else None
    with use_backend('triton'), torch.set_grad_enabled(train):
        xi = x.detach().requires_grad_(train) * 1.0
        y = m.forward_with_bn(xi, bn) if bn is not None else m(xi)
        if train:
            y.backward(torch.ones_like(y))


def module_launches(kind: str, shape: Sequence[int], dtype=torch.bfloat16, channels_last=False, train=True):
    """The launches of :func:`module_step` at ``shape``, recorded on ``meta`` tensors (not run)."""
    x = torch.empty(tuple(shape), device='meta', dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with recording(execute=False) as launches:
        module_step(kind, x, train)
    return launches


def module_passes(kinds: Sequence[str] = KINDS, shape=(2, 48, 13, 21)) -> Dict[str, Dict[str, float]]:
    """{kind: {'train': passes, 'inference': passes}} measured in Triton's interpreter at a small
    ``shape`` (in a fresh interpreter process when this one compiles kernels instead)."""
    if not T.INTERPRETED:
        env = dict(os.environ, TRITON_INTERPRET='1', CBAM_DET_LAYERS_ONLY='1')
        cmd = [sys.executable, '-m', 'cbam_det.kernels.census', 'passes', ','.join(kinds), ','.join(map(str, shape))]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f'census: the interpreter process failed:\n{out.stderr[-3000:]}')
        return json.loads(out.stdout.strip().splitlines()[-1])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(shape), generator=gen)
    result = {}
    for kind in kinds:
        result[kind] = {}
        for mode, train in (('train', True), ('inference', False)):
            with recording(count=True) as launches:
                module_step(kind, x, train)
            result[kind][mode] = passes(launches)
    return result


def _main(argv: List[str]) -> int:
    if len(argv) == 3 and argv[0] == 'compile':
        with open(argv[1]) as f:
            job = json.load(f)
        results = compile_specs([tuple(s) for s in job['specs']], job['archs'], jobs=1)
        with open(argv[2], 'w') as f:
            json.dump(results, f)
        return 0
    if len(argv) == 3 and argv[0] == 'passes':
        print(json.dumps(module_passes(argv[1].split(','), tuple(int(v) for v in argv[2].split(',')))))
        return 0
    print(
        'usage: python -m cbam_det.kernels.census compile IN.json OUT.json\n'
        '       python -m cbam_det.kernels.census passes KIND[,KIND...] N,C,H,W',
        file=sys.stderr,
    )
    return 2


def as_dict(launch: Launch) -> dict:
    """A launch as JSON-ready data (with programs and passes)."""
    d = asdict(launch)
    d.update(programs=launch.programs, passes=launch.passes)
    return d


if __name__ == '__main__':
    sys.exit(_main(sys.argv[1:]))
