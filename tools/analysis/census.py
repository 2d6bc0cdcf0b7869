"""Launch census of the Triton kernels (the op families of cbam_det.kernels.library) without a GPU: what a GPU
would be given and what it would cost, for CBAM (Woo et al., ECCV 2018), SE and BAM (Park et
al., 2018).

    python tools/analysis/census.py --backbone r50 --attention cbam --shape 2 3 800 1344
    python tools/analysis/census.py --config configs/yolox/yolox_s-cbam_8xb8-300e_coco.py --shape 8 3 640 640
    python tools/analysis/census.py --passes            # every byte of one module step, per kind

- :func:`recording` records every launch (kernel, grid, the specialization Triton's JIT
  would compile: argument types, 16-byte alignment, constants) through the kernels' one
  launch-observer seam (``cbam_det.kernels.launch.observe``) and optionally skips it, so a network
  can run at full size on ``meta`` tensors (shapes only, no memory, no time: the ops' ``meta``
  kernels run the Triton launchers while observed) and show the exact grids; with ``count=True``
  in Triton's interpreter it counts the bytes each launch loads and stores of its full-size (4-d)
  operands, so the passes over memory are measured.
- :func:`module_passes` sums every byte one module step moves (kernels, their partial-sum
  buffers, and the PyTorch operations between them, :class:`TorchTraffic`).
- ``kernel_compile.py`` compiles recorded specializations ahead of time for real targets.

The network census (the command line; the model options are benchmark.py's) runs the
model's training step and inference on ``meta`` tensors at ``--shape`` in ``--dtype`` and
prints, per kernel and stage: launches, programs and programs per SM (``--sms``, default
the kernels' 132, an H200), registers per thread for ``--archs``, and the passes over the
full-size tensors (counted in Triton's interpreter at ``--small-shape``), with the bandwidth
floor passes × bytes / ``--bandwidth``. No GPU needed: the command runs itself in Triton's
interpreter (``TRITON_INTERPRET=1``).
"""

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, fields
from typing import Dict, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import torch
from toolkit import floor_ms, outputs_sum  # (also puts the repository on sys.path)

import cbam_det.models.layers  # noqa: F401  (the module classes register their kernel setups)
from cbam_det.kernels import dispatch
from cbam_det.kernels import launch as T

__all__ = [
    'Launch',
    'recording',
    'passes',
    'KINDS',
    'unique_specs',
    'module_step',
    'module_launches',
    'module_passes',
    'kernel_passes',
    'kernel_key',
    'counted_passes',
    'load_counted_passes',
    'resnet50_stages',
    'cspdarknet_s_stages',
    'ssdlite_mobilenetv2_stages',
    'detection_specs',
    'TorchTraffic',
    'DETECTION_MODELS',
]


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
        if self.paused or name in _NO_TRAFFIC or getattr(func, 'is_view', False) or func.namespace == 'cbam_det':
            return  # (cbam_det's ops: their kernels' traffic is counted launch by launch)
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

    with contextlib.ExitStack() as stack:
        if count:
            stack.enter_context(_patched_interpreter())
        # shapes only: meta tensors take the kernels' path (checked for all but the device)
        stack.enter_context(mock.patch.dict(dispatch._PROBLEMS, triton=_meta_or(dispatch._PROBLEMS['triton'])))
        if not read_bn_nodes:  # cuDNN's BatchNorm node: the plugin keeps its input
            stack.enter_context(mock.patch.object(dispatch, '_bn_source', lambda x: None))
        stack.enter_context(T.observe(hook, sms=sms))
        yield launches


def _meta_or(check):
    def problem(x: torch.Tensor, module, bn):
        if x.device.type == 'meta':
            return dispatch._triton_input_problem(x, module, bn)
        return check(x, module, bn)

    return problem


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


# ---------------------------------------------------------------- one attention module

#: the module setups of :func:`module_step`, every registered module class's ``kernel_setups``
#: (``kernels.dispatch.kernel_setups``): plugin = the module on its input; fused = with the
#: BatchNorm before it folded in (``forward_with_bn``, AttnResNet's blocks); BAM's gate
KINDS = tuple(dispatch.kernel_setups(dispatch.CHECK_CHANNELS))


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
    setups = dispatch.kernel_setups(dispatch.CHECK_CHANNELS)
    for name in models:
        kinds, shapes = DETECTION_MODELS[name]
        for kind in kinds:
            between = setups[kind][0].paper_placement == 'stage'
            shapes_k = shapes[:3] if between else shapes  # (between stages: after stages 1-3)
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

    from cbam_det.kernels import use_backend

    setups = dispatch.kernel_setups(x.shape[1], inplace=True)
    if kind not in setups:
        raise ValueError(f'census: kind={kind!r}; allowed: {", ".join(setups)}')
    measure = measure or contextlib.nullcontext
    c = x.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = setups[kind][1].make()
    m = m.to(x.device).train(train)
    bn = nn.BatchNorm2d(c).to(x.device).train(train) if setups[kind][1].with_bn else None
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


def kernel_key(launch: Launch) -> str:
    """A kernel and its constant flags, without its tile sizes (a kernel's passes do not depend on them)."""
    flags = [
        (n, v) for n, kind, v in launch.spec if kind == 'const' and n not in ('BC', 'BHW', 'BLOCK', 'BP', 'BH', 'BS')
    ]
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
        key = kernel_key(launch)
        if key in out and abs(out[key] - launch.passes) > 1e-9:
            raise RuntimeError(f'census: {launch.kernel} moved {launch.passes} and {out[key]} passes in one step')
        out[key] = launch.passes
    return out


def _in_interpreter(function: str, **job) -> object:
    """``function(**job)`` of this module run in a fresh process in Triton's interpreter (a
    process that compiles kernels cannot count bytes); ``dtype`` travels as its name."""
    env = dict(os.environ, TRITON_INTERPRET='1', CBAM_DET_LAYERS_ONLY='1')
    job = dict(job, dtype=str(job['dtype']))
    cmd = [sys.executable, os.path.abspath(__file__), '--job', json.dumps(dict(function=function, kwargs=job))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f'census: the interpreter process failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def kernel_passes(
    kinds: Sequence[str] = KINDS, dtype: torch.dtype = torch.bfloat16, channels_last: bool = False
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{kind: {'train' | 'inference': {kernel key: full-size passes}}}: each kernel's reads and
    writes of full-size tensors in one module step, counted in Triton's interpreter (a fresh
    interpreter process when this one compiles kernels). Keys as :func:`kernel_key`."""
    if not T.INTERPRETED:
        return _in_interpreter('kernel_passes', kinds=list(kinds), dtype=dtype, channels_last=channels_last)
    modes = (('train', True), ('inference', False))
    return {kind: {mode: _kernel_passes(kind, train, dtype, channels_last) for mode, train in modes} for kind in kinds}


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
        return _in_interpreter(
            'module_passes', kinds=list(kinds), shape=list(shape), dtype=dtype, channels_last=channels_last, sms=sms
        )
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
            kernels = sum(counted[kernel_key(launch)] for launch in launches)
            small = sum(t.numel() * t.element_size() for launch in launches for t in launch.tensors if t.dim() != 4)
            result[kind][mode] = dict(
                total=round(kernels + (small + traffic.bytes) / full, 3),
                kernels=round(kernels, 3),
                kernel_buffers=round(small / full, 3),
                torch=round(traffic.bytes / full, 3),
                torch_ops={k: round(v / full, 4) for k, v in sorted(traffic.ops.items(), key=lambda kv: -kv[1])},
            )
    return result


#: the (dtype, channels-last) pairs of :func:`counted_passes`' per-kernel passes
PASS_LAYOUTS = ((torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False))


def _layout_name(dtype: torch.dtype, channels_last: bool) -> str:
    return f'{str(dtype).replace("torch.", "")}-{"channels_last" if channels_last else "nchw"}'


def counted_passes() -> dict:
    """Everything the GPU tools take from Triton's interpreter, for a machine whose interpreter
    cannot run (the GPU machine's triton 3.6 with its numpy): ``module`` (:func:`module_passes`
    of every kind, bf16 NCHW) and ``kernels`` (:func:`kernel_passes` per :data:`PASS_LAYOUTS`)."""
    return dict(
        module=module_passes(KINDS),
        kernels={_layout_name(d, cl): kernel_passes(KINDS, dtype=d, channels_last=cl) for d, cl in PASS_LAYOUTS},
    )


def load_counted_passes(path: Optional[str]) -> Optional[dict]:
    """:func:`counted_passes` as written by ``census.py --counted-passes PATH`` (None: no file)."""
    if path is None:
        return None
    with open(path) as f:
        res = json.load(f)
    if set(res) != {'module', 'kernels'}:
        raise ValueError(f'{path}: not a file of census.py --counted-passes (keys {sorted(res)})')
    return res


def as_dict(launch: Launch) -> dict:
    """A launch as JSON-ready data (with programs and passes)."""
    d = {f.name: getattr(launch, f.name) for f in fields(launch) if f.name != 'tensors'}
    d.update(programs=launch.programs, passes=launch.passes)
    return d


# ---------------------------------------------------------------- a network's census (the command line)
def _const_key(launch) -> str:
    """A launch's kernel and compile-time constants: launches with equal keys move the same passes."""
    return json.dumps([launch.kernel, [s for s in launch.spec if s[1] == 'const']])


def _census_step(model: torch.nn.Module, x: torch.Tensor, train: bool) -> None:
    model.train(train)
    with torch.set_grad_enabled(train):
        out = outputs_sum(model(x))
        if train:
            out.backward()


def run_census(args) -> dict:
    """Launches, programs per SM, registers and passes of the model's Triton kernels (see above)."""
    from benchmark import build
    from kernel_compile import compile_specs

    from cbam_det import kernels

    dtype = getattr(torch, args.dtype)
    args.device = 'cpu'
    small = build(args, 'attn')
    big = build(args, 'attn').to(device='meta', dtype=dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    recorded, per_key = {'train': [], 'inference': []}, {}
    with kernels.use_backend('triton'):
        for mode, train in (('train', True), ('inference', False)):
            for batch in args.batches or [args.shape[0]]:
                x = torch.empty(batch, *args.shape[1:], device='meta', dtype=dtype).contiguous(memory_format=fmt)
                with recording(execute=False, sms=args.sms) as launches:
                    _census_step(big, x, train)
                recorded[mode] += launches
            xs = torch.randn(*args.small_shape, generator=torch.Generator().manual_seed(0))
            with recording(count=True, sms=args.sms) as counted:
                _census_step(small.to(memory_format=fmt), xs.contiguous(memory_format=fmt), train)
            for launch in counted:
                per_key.setdefault(_const_key(launch), launch.passes)
    everything = recorded['train'] + recorded['inference']
    if not everything:
        raise SystemExit('census: the model launched no Triton kernel (no CBAM/SE/BAM that the kernels cover?)')
    usage: Dict[str, Dict[int, dict]] = {}
    for r in compile_specs(unique_specs(everything), archs=args.archs):
        usage.setdefault(json.dumps([r['kernel'], r['spec'], r['warps']]), {})[r['arch']] = r
    rows = []
    for mode, launches in recorded.items():
        groups: Dict[tuple, list] = {}
        for launch in launches:
            groups.setdefault((launch.shape, launch.kernel), []).append(launch)
        for (shape, kernel), group in groups.items():
            first = group[0]
            regs = {a: max(usage[g.key()][a].get('registers', -1) for g in group) for a in args.archs}
            spills = sum(
                usage[g.key()][a].get('spills', 0) + usage[g.key()][a].get('local', 0)
                for g in group
                for a in args.archs
            )
            rows.append(
                dict(
                    mode=mode,
                    shape=list(shape) if shape else None,
                    kernel=kernel.strip('_').replace('_kernel', ''),
                    launches=len(group),
                    programs=min(g.programs for g in group),
                    per_sm=min(g.programs for g in group) / args.sms,
                    warps=first.warps,
                    registers=regs,
                    spills=spills,
                    passes=per_key.get(_const_key(first)),
                    bytes=first.full_elements or 0,
                )
            )
    full = [r for r in rows if r['shape']]
    summary = dict(
        min_programs_per_sm=min(r['per_sm'] for r in full),
        max_registers={a: max(r['registers'][a] for r in rows) for a in args.archs},
        spills=sum(r['spills'] for r in rows),
    )
    floors = summary['floors'] = {}  # per step and batch size: full-size bytes the kernels move
    for r in full:
        f = floors.setdefault(r['mode'], {}).setdefault(r['shape'][0], dict(bytes=0, unmeasured=0))
        f['bytes'] += (r['passes'] or 0) * r['bytes'] * r['launches']
        f['unmeasured'] += r['passes'] is None
    for per_batch in floors.values():
        for f in per_batch.values():
            f['floor_ms'] = floor_ms(1, f['bytes'], args.bandwidth * 1e12)
    return dict(rows=rows, summary=summary)


def census_stages(res: dict) -> List[dict]:
    """Per step and stage (full-size shape): modules, the fewest programs per SM, the most
    registers, and the passes of one module (Σ passes of its launches / modules)."""
    out: Dict[tuple, dict] = {}
    for r in res['rows']:
        if not r['shape']:
            continue
        key = (r['mode'], tuple(r['shape']))
        s = out.setdefault(key, dict(mode=r['mode'], shape=r['shape'], modules=0, per_sm=1e9, registers=0, passes=0.0))
        if r['kernel'] in ('apply_spatial', 'apply_channel', 'bam_apply'):
            s['modules'] += r['launches']
        s['per_sm'] = min(s['per_sm'], r['per_sm'])
        s['registers'] = max(s['registers'], *r['registers'].values())
        s['passes'] += (r['passes'] if r['passes'] is not None else float('nan')) * r['launches']
    for s in out.values():
        s['passes'] /= max(s['modules'], 1)
    return list(out.values())


def print_census(args, res: dict) -> None:
    spec = args.config or f'{args.backbone} {args.attention} ({args.path}, {args.position})'
    print(
        f'census: {spec}, input {"x".join(map(str, args.shape))} {args.dtype}'
        f'{", channels_last" if args.channels_last else ""}; {args.sms} SMs; registers for '
        + ', '.join(f'sm_{a}' for a in args.archs)
        + f'; passes counted at {"x".join(map(str, args.small_shape))}'
    )
    if args.per_kernel:
        print('| step | stage (N×C×H×W) | kernel | launches | programs | per SM | warps | registers | passes |')
        print('|---|---|---|---:|---:|---:|---:|---:|---:|')
    for r in res['rows'] if args.per_kernel else []:
        shape = '×'.join(map(str, r['shape'])) if r['shape'] else '(small)'
        regs = '/'.join('-' if v < 0 else str(v) for v in r['registers'].values())
        passes = '?' if r['passes'] is None else f'{r["passes"]:g}'
        print(
            f'| {r["mode"]} | {shape} | {r["kernel"]} | {r["launches"]} | {r["programs"]} | {r["per_sm"]:.1f} | '
            f'{r["warps"]} | {regs} | {passes} |'
        )
    print()
    print('| step | stage (N×C×H×W) | modules | fewest programs per SM | most registers | passes per module |')
    print('|---|---|---:|---:|---:|---:|')
    for st in census_stages(res):
        print(
            f'| {st["mode"]} | {"×".join(map(str, st["shape"]))} | {st["modules"]} | {st["per_sm"]:.1f} | '
            f'{st["registers"]} | {st["passes"]:g} |'
        )
    s = res['summary']
    print(
        f'full-size launches: at least {s["min_programs_per_sm"]:.2f} programs per SM; registers at most '
        + ', '.join(f'{v} (sm_{a})' for a, v in s['max_registers'].items())
        + f'; spills {s["spills"]}'
    )
    for mode, per_batch in s['floors'].items():
        for batch, f in sorted(per_batch.items()):
            print(
                f'{mode}, batch {batch}: the kernels move {f["bytes"] / 1e9:.3f} GB of full-size tensors: floor '
                f'{f["floor_ms"]:.3f} ms at {args.bandwidth} TB/s'
                + (f' ({f["unmeasured"]} kernels without counted passes)' if f['unmeasured'] else '')
            )


def main(argv: Optional[List[str]] = None) -> None:
    import argparse

    from benchmark import model_options
    from toolkit import DEFAULT_BANDWIDTH_TBS, device_sms

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_options(parser)
    parser.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'], default='bfloat16')
    parser.add_argument('--small-shape', type=int, nargs=4, default=(1, 3, 64, 64), metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--batches', type=int, nargs='+', help='these batch sizes (default: N of --shape)')
    parser.add_argument('--per-kernel', action='store_true', help='also the table per kernel')
    parser.add_argument('--sms', type=int, default=device_sms('cpu'), help='streaming multiprocessors (an H200: 132)')
    parser.add_argument('--archs', type=int, nargs='+', default=[90], help='compile targets, e.g. 80 90 100 120')
    parser.add_argument(
        '--bandwidth', type=float, default=DEFAULT_BANDWIDTH_TBS, help='memory bandwidth in TB/s (an H200: 4.8)'
    )
    parser.add_argument(
        '--passes', action='store_true', help='print module_passes() for every kind (NCHW and channels-last) and stop'
    )
    parser.add_argument('--json', help='write the results here too')
    parser.add_argument(
        '--counted-passes', metavar='PATH', help="write counted_passes() (for the GPU tools' --passes) here and stop"
    )
    parser.add_argument('--job', help=argparse.SUPPRESS)  # _in_interpreter's
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        kwargs = dict(job['kwargs'], dtype=getattr(torch, job['kwargs']['dtype'].replace('torch.', '')))
        function = {'module_passes': module_passes, 'kernel_passes': kernel_passes}[job['function']]
        print(json.dumps(function(**kwargs)))
        return
    if args.counted_passes:
        with open(args.counted_passes, 'w') as f:
            json.dump(counted_passes(), f, indent=1)
        return
    if args.passes:
        res = {fmt: module_passes(channels_last=fmt == 'channels_last') for fmt in ('nchw', 'channels_last')}
        print(json.dumps(res, indent=1))
    else:
        res = run_census(args)
        print_census(args, res)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), **res), f, indent=1)


if __name__ == '__main__':
    if os.environ.get('TRITON_INTERPRET') != '1':  # read when triton is imported: run again in the interpreter
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, TRITON_INTERPRET='1'))
    main()
