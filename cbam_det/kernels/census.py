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
from dataclasses import dataclass, field, fields
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .. import config
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
    'ssdlite_mobilenetv2_stages',
    'detection_specs',
    'compile_problems',
    'TorchTraffic',
    'DETECTION_MODELS',
    'MAX_KERNELS',
]

ARCHS = (80, 90, 100, 120)
REGISTER_LIMIT = 128


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
    tensors: List[torch.Tensor] = field(default_factory=list, repr=False, compare=False)  # kept when not run

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
    spec = T.specialization(kernel, args, meta, warps)
    shape = elems = None
    for value in args:
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            shape, elems = tuple(value.shape), value.numel() * value.element_size()
            break
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.device.type == 'meta']
    return Launch(kernel.fn.__name__, tuple(grid), shape, spec, warps, full_elements=elems, tensors=tensors)


# ---------------------------------------------------------------- counting bytes in the interpreter

# per tensor argument of the running launch: [lo, hi, is_full, bytes, touched bitmap or None]
_regions: List[Optional[list]] = [None]


def _count(ptrs, mask) -> None:
    """Bytes a masked load or store moves: every access of a full-size (4-d) operand (each is
    read or written once per pass), and each distinct element of the others (partial sums,
    gates: read from memory once, then from cache)."""
    regions = _regions[0]
    if regions is None:
        return
    import numpy as np

    addr = np.asarray(ptrs.data).astype(np.uint64)
    m = np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)
    size = ptrs.get_element_ty().primitive_bitwidth // 8
    for r in regions:
        hit = m & (addr >= r[0]) & (addr < r[1])
        if r[2]:
            r[3] += int(np.count_nonzero(hit)) * size
        else:
            r[4][((addr[hit] - r[0]) // size).astype(np.int64)] = True


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


#: aten ops that move no data of their own: allocations, views, metadata
_NO_TRAFFIC = (
    'empty',
    'empty_like',
    'empty_strided',
    'new_empty',
    'new_empty_strided',
    'detach',
    'alias',
    'lift_fresh',
    'set_',
    'resize_',
    'is_same_size',
    '_local_scalar_dense',
)


class TorchTraffic:
    """Bytes that PyTorch operations read and write inside :meth:`counting` blocks: each tensor
    argument read once and each output written once (an in-place op reads and writes its
    tensor); views and allocations move nothing. With Triton's kernels counted by
    :func:`recording`, a module step's passes are complete: kernels, the partial-sum buffers
    and the PyTorch sums over them, float64 copies, re-layouts, and the small gate graphs."""

    def __init__(self) -> None:
        self.bytes = 0
        self.ops: Dict[str, int] = {}
        self.paused = False
        self._mode = None

    def _dispatch(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        if self.paused or name in _NO_TRAFFIC or getattr(func, 'is_view', False):
            return
        n = 0
        for t in _tensors((args, kwargs)):
            n += t.numel() * t.element_size()
        for t in _tensors(out):
            n += t.numel() * t.element_size()
        self.bytes += n
        self.ops[name] = self.ops.get(name, 0) + n

    @contextlib.contextmanager
    def counting(self) -> Iterator['TorchTraffic']:
        try:
            from torch.utils._python_dispatch import TorchDispatchMode
        except ImportError as e:  # a torch without Python dispatch modes: the census cannot count
            raise RuntimeError(f'census: this torch has no TorchDispatchMode ({e})') from e
        traffic = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                traffic._dispatch(func, args, kwargs or {}, out)
                return out

        with _Mode():
            yield self


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


@contextlib.contextmanager
def recording(
    execute: bool = True,
    count: bool = False,
    read_bn_nodes: bool = False,
    sms: Optional[int] = None,
    traffic: Optional[TorchTraffic] = None,
) -> Iterator[List[Launch]]:
    """Record every Triton launch inside the block (a list, filled as they happen).

    ``execute=False``: launches are recorded, not run (their outputs stay uninitialised), which
    with ``meta`` tensors walks a full-size network in no time. ``count=True`` (interpreter
    only): each launch's bytes of its full-size (4-d) operands (``full_bytes``: every access)
    and of the others (``other_bytes``: each distinct element once). ``read_bn_nodes``: let a
    plugin after a BatchNorm read the BN's autograd node, as on the CPU; the default records
    what a GPU with cuDNN runs, whose BN node is cuDNN's (the plugin then keeps its input).
    ``sms``: the SM count the launch plans assume (default: the device's, 132 without one).
    ``traffic``: a :class:`TorchTraffic` paused while a kernel runs (the interpreter's own
    tensor handling is not the kernel's traffic).
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
        if traffic is not None:
            traffic.paused = True
        try:
            if not count:
                run()
                return
            _run_counted(launch, args, run)
        finally:
            if traffic is not None:
                traffic.paused = False

    previous = fused.settings['read_bn_nodes']
    fused.settings['read_bn_nodes'] = read_bn_nodes
    ctx = _patched_interpreter() if count else contextlib.nullcontext()
    try:
        with ctx, T.observe(hook, sms=sms):
            yield launches
    finally:
        fused.settings['read_bn_nodes'] = previous


def _run_counted(launch: Launch, args, run) -> None:
    import numpy as np

    regions = {}
    for a in args:
        if isinstance(a, torch.Tensor):  # the tensor's own extent (a view shares its storage)
            lo = a.data_ptr()
            hi = lo + (1 + sum((n - 1) * st for n, st in zip(a.shape, a.stride()))) * a.element_size()
            full = a.dim() == 4
            touched = None if full else np.zeros((hi - lo) // a.element_size(), dtype=bool)
            regions[(lo, hi)] = [lo, hi, full, 0, touched]  # once, if passed twice (dx written over z)
    regions = list(regions.values())
    _regions[0] = regions
    try:
        run()
    finally:
        _regions[0] = None
    launch.full_bytes = sum(r[3] for r in regions if r[2])
    launch.other_bytes = sum(int(r[4].sum()) * (r[1] - r[0]) // len(r[4]) for r in regions if not r[2] and len(r[4]))


def active() -> bool:
    """Whether a :func:`recording` block is open (then ``meta`` tensors may take the Triton path)."""
    return T._observer[0] is not None


def passes(launches: Sequence[Launch]) -> float:
    """Full-size passes of the kernels' 4-d operands in a set of counted launches (one module step)."""
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
            _ast_source(fn, spec),
            target=GPUTarget('cuda', arch, 32),
            options={'num_warps': warps, 'enable_fp_fusion': False},  # as triton_gate launches them
        )
    except Exception as e:  # noqa: BLE001 - a target this triton/ptxas does not know is reported, not raised
        text = f'{type(e).__name__}: {e}'
        if _unsupported_target(text):
            return dict(
                skipped=f'triton {triton.__version__} cannot compile for sm_{arch}: {text.splitlines()[0][:200]}'
            )
        raise
    ptx = compiled.asm['ptx']
    return dict(
        resource_usage(compiled.asm['cubin']),
        fused_multiply_adds=len(re.findall(r'\bfma\.rn(?:\.ftz)?\.f32\b', ptx)),  # fp-fusion off: none
        nan_max=len(re.findall(r'\bmax\.NaN\.f32\b', ptx)),  # NaN-propagating max instructions
        nan_min=len(re.findall(r'\bmin\.NaN\.f32\b', ptx)),
        plain_max_min=len(re.findall(r'\b(?:max|min)(?:\.ftz)?\.f32\b', ptx)),  # ones that drop NaN
        fp_fusion=bool(compiled.metadata.enable_fp_fusion) if hasattr(compiled.metadata, 'enable_fp_fusion') else None,
    )


#: kernels that take a maximum (their PTX must hold the NaN-propagating ``max.NaN.f32``)
MAX_KERNELS = ('_channel_pool_kernel', '_channel_moments_kernel', '_spatial_pool_kernel')


def compile_problems(results: Sequence[dict]) -> List[tuple]:
    """What a compiled specialization must not show: over :data:`REGISTER_LIMIT` registers or a
    spill; a fused multiply-add or fp-fusion on (recomputed values must round as in the
    interpreter, for the tie masks); a maximum that is not NaN-propagating."""
    out, nan_max = [], {}
    for r in results:
        if 'skipped' in r:
            continue
        if r['registers'] > REGISTER_LIMIT or r['stack'] or r['local']:
            out.append((r['kernel'], r['arch'], 'registers', r['registers'], r['stack'], r['local']))
        if r['fused_multiply_adds'] or r.get('fp_fusion'):
            out.append((r['kernel'], r['arch'], 'fused multiply-add', r['fused_multiply_adds']))
        if r['plain_max_min']:
            out.append((r['kernel'], r['arch'], 'a max or min that drops NaN', r['plain_max_min']))
        if r['kernel'] in MAX_KERNELS:  # (a one-pixel tile folds its max away: counted over all)
            nan_max[r['kernel']] = nan_max.get(r['kernel'], 0) + r['nan_max']
    out += [(k, 'no NaN-propagating max in any specialization') for k, n in nan_max.items() if not n]
    return out


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
    env = config.environ(TRITON_INTERPRET=None)
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


def ssdlite_mobilenetv2_stages(n: int, h: int, w: int) -> List[Tuple[int, int, int, int]]:
    """The outputs of MobileNetV2's layers 1-7 (configs/ssd/ssdlite_mobilenetv2-cbam_8xb24-600e_coco.py
    puts CBAM after each): 16-320 channels (24 is not a multiple of 16), strides 2-32."""
    stages = [(16, 2), (24, 4), (32, 8), (64, 16), (96, 16), (160, 32), (320, 32)]
    return [(n, c, -(-h // s), -(-w // s)) for c, s in stages]


#: what a GPU compiles for the shipped detection configs: (kinds, stage shapes)
DETECTION_MODELS = {
    'faster_rcnn_r50_800x1344_b2': (KINDS, resnet50_stages(2, 800, 1344)),
    'yolox_s_640_b8': (('cbam_plugin',), cspdarknet_s_stages(8, 640, 640)),
    'ssdlite_mobilenetv2_320_b24': (('cbam_plugin',), ssdlite_mobilenetv2_stages(24, 320, 320)),
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def detection_specs(
    models: Sequence[str] = tuple(DETECTION_MODELS), dtypes: Sequence[torch.dtype] = DTYPES
) -> List[list]:
    """Every distinct specialization (:func:`unique_specs`) the kernels launch for ``models``
    (:data:`DETECTION_MODELS`) in ``dtypes``, NCHW and channels-last, training and inference,
    recorded on ``meta`` tensors."""
    launches: List[Launch] = []
    for name in models:
        kinds, shapes = DETECTION_MODELS[name]
        for kind in kinds:
            if kind == 'bam':  # after stages 1-3 only
                shapes_k = shapes[:3]
            else:
                shapes_k = shapes
            for shape in shapes_k:
                for dtype in dtypes:
                    for cl in (False, True):
                        for train in (True, False):
                            launches += module_launches(kind, shape, dtype, channels_last=cl, train=train)
    return unique_specs(launches)


def module_step(kind: str, x: torch.Tensor, train: bool = True, measure=None) -> None:
    """One step of an attention module of ``kind`` (:data:`KINDS`) on ``x`` on the ``triton``
    backend: forward, and with ``train`` a backward of a fixed output gradient (in the output's
    layout, as the next layer hands it). The module is ``inplace=True`` as mmdet's ResNet
    builds plugins, on a copy of x that nothing else reads. ``measure``: a context-manager
    factory entered around the forward and the backward only (not around making the copy and
    the output gradient)."""
    from torch import nn

    from ..models.layers import BAM, CBAM, SE
    from .dispatch import use_backend

    if kind not in KINDS:
        raise ValueError(f'census: kind={kind!r}; allowed: {", ".join(KINDS)}')
    measure = measure or contextlib.nullcontext
    c = x.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        make = {'cbam': CBAM, 'se': SE, 'bam': lambda c, r: BAM(c, r, 1, inplace=True)}[kind.split('_')[0]]
        m = make(c, 4) if kind == 'bam' else make(c, 4, inplace=True)
    m = m.to(x.device).train(train)
    bn = nn.BatchNorm2d(c).to(x.device).train(train) if kind.endswith('fused') else None
    if kind == 'bam':  # its branches are ordinary layers: in the activation's dtype, as under autocast
        m = m.to(x.dtype)
    params = [p for p in list(m.parameters()) + (list(bn.parameters()) if bn is not None else [])]
    with use_backend('triton'), torch.set_grad_enabled(train):
        xi = (x.detach() * 1.0).requires_grad_(train)
        with measure():
            y = m.forward_with_bn(xi, bn) if bn is not None else m(xi)
        if train:
            dy = torch.ones_like(y)
            with measure():  # dx and every parameter gradient, returned (nothing accumulated)
                torch.autograd.grad(y, [xi] + params, dy)


def module_launches(kind: str, shape: Sequence[int], dtype=torch.bfloat16, channels_last=False, train=True, sms=None):
    """The launches of :func:`module_step` at ``shape``, recorded on ``meta`` tensors (not run)."""
    x = torch.empty(tuple(shape), device='meta', dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with recording(execute=False, sms=sms) as launches:
        module_step(kind, x, train)
    return launches


#: the shape :func:`module_passes` reports by default: ResNet-50's stage 1 in a Faster R-CNN step
#: (batch 2 at 800×1344), where the partial-sum buffers and per-pixel maps weigh most against
#: the activation; and the small shape at which the kernels' bytes are counted in the interpreter
PASS_SHAPE = (2, 256, 200, 336)
COUNT_SHAPE = (1, 24, 5, 9)


def _kernel_key(launch: Launch) -> str:
    """A kernel and its constant flags, without its tile sizes (a kernel's passes do not depend on them)."""
    flags = [(n, v) for n, kind, v in launch.spec if kind == 'const' and n not in ('BC', 'BHW', 'BLOCK')]
    return json.dumps([launch.kernel, flags])


def _kernel_passes(kind: str, train: bool, dtype: torch.dtype, channels_last: bool) -> Dict[str, float]:
    """Full-size passes of each kernel of a step, counted in the interpreter at :data:`COUNT_SHAPE`."""
    x = torch.randn(COUNT_SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with recording(count=True) as launches:
        module_step(kind, x, train)
    out: Dict[str, float] = {}
    for launch in launches:
        key = _kernel_key(launch)
        if key in out and abs(out[key] - launch.passes) > 1e-9:
            raise RuntimeError(f'census: {launch.kernel} moved {launch.passes} and {out[key]} passes in one step')
        out[key] = launch.passes
    return out


def module_passes(
    kinds: Sequence[str] = KINDS,
    shape: Sequence[int] = PASS_SHAPE,
    dtype: torch.dtype = torch.bfloat16,
    channels_last: bool = False,
    sms: Optional[int] = None,
) -> Dict[str, Dict[str, dict]]:
    """{kind: {'train' | 'inference': {'total', 'kernels', 'kernel_buffers', 'torch', 'torch_ops'}}}:
    every byte one module step moves at ``shape``, in passes (bytes of one full-size tensor:
    N·C·H·W elements of ``dtype``).

    - ``kernels``: the kernels' reads and writes of full-size tensors, counted access by access in
      Triton's interpreter at :data:`COUNT_SHAPE` (a kernel's passes do not depend on the shape);
    - ``kernel_buffers``: the kernels' other operands at ``shape`` (partial sums they write,
      gates and pooled maps they read), each element once, from the launches recorded on
      ``meta`` tensors (the grids and splits of ``shape`` on ``sms`` SMs, default 132);
    - ``torch``: every PyTorch operation of the step at ``shape`` (sums over the partials,
      float64 copies, re-layouts, the gates' small graphs: MLP, k×k conv, BN), each tensor
      argument read once and each output written once;
    - ``total``: the three. Runs in a fresh interpreter process when this one compiles kernels."""
    if not T.INTERPRETED:
        env = config.environ(TRITON_INTERPRET='1', CBAM_DET_LAYERS_ONLY='1')
        job = dict(kinds=list(kinds), shape=list(shape), dtype=str(dtype), channels_last=channels_last, sms=sms)
        cmd = [sys.executable, '-m', 'cbam_det.kernels.census', 'passes', json.dumps(job)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f'census: the interpreter process failed:\n{out.stderr[-3000:]}')
        return json.loads(out.stdout.strip().splitlines()[-1])
    x = torch.empty(tuple(shape), device='meta', dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    full = x.numel() * x.element_size()
    result: Dict[str, Dict[str, dict]] = {}
    for kind in kinds:
        result[kind] = {}
        for mode, train in (('train', True), ('inference', False)):
            counted = _kernel_passes(kind, train, dtype, channels_last)
            traffic = TorchTraffic()
            with recording(execute=False, sms=sms) as launches:
                module_step(kind, x, train, measure=traffic.counting)
            kernels = sum(counted[_kernel_key(launch)] for launch in launches)
            small = sum(t.numel() * t.element_size() for launch in launches for t in launch.tensors if t.dim() != 4)
            result[kind][mode] = dict(
                total=round(kernels + (small + traffic.bytes) / full, 3),
                kernels=round(kernels, 3),
                kernel_buffers=round(small / full, 3),
                torch=round(traffic.bytes / full, 3),
                torch_ops={k: round(v / full, 4) for k, v in sorted(traffic.ops.items(), key=lambda kv: -kv[1])},
            )
    return result


def _main(argv: List[str]) -> int:
    if len(argv) == 3 and argv[0] == 'compile':
        with open(argv[1]) as f:
            job = json.load(f)
        results = compile_specs([tuple(s) for s in job['specs']], job['archs'], jobs=1)
        with open(argv[2], 'w') as f:
            json.dump(results, f)
        return 0
    if len(argv) == 2 and argv[0] == 'passes':
        job = json.loads(argv[1])
        job['dtype'] = getattr(torch, job['dtype'].replace('torch.', ''))
        print(json.dumps(module_passes(**job)))
        return 0
    print(
        'usage: python -m cbam_det.kernels.census compile IN.json OUT.json\n'
        '       python -m cbam_det.kernels.census passes \'{"kinds": [...], "shape": [N, C, H, W], ...}\'',
        file=sys.stderr,
    )
    return 2


def as_dict(launch: Launch) -> dict:
    """A launch as JSON-ready data (with programs and passes)."""
    d = {f.name: getattr(launch, f.name) for f in fields(launch) if f.name != 'tensors'}
    d.update(programs=launch.programs, passes=launch.passes)
    return d


if __name__ == '__main__':
    sys.exit(_main(sys.argv[1:]))
