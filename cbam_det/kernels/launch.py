"""What every Triton kernel of cbam_det shares (the op families in :mod:`.library` define the
kernels): Triton imported where it is installed, the tile helpers, launch planning, the launch
itself, and what happens when one fails.

- **Planning**: a reduction with few outputs per program is split over pixel blocks (or channel
  blocks) until the grid has at least ``WAVES`` × the device's SMs, where the tensor has that many
  tiles; the partial results are added in a fixed order by the next kernel (deterministic, no
  atomics). Tiles are up to ``TILE`` elements, 64 along the contiguous axis (H×W for NCHW, C for
  channels-last). A family computes its whole plan once per shape, dtype, layout and device
  (``functools.lru_cache``), so a call does no arithmetic on the host beyond a dictionary look-up.
- **Launching**: :func:`launch` calls ``kernel[grid](...)`` without fp-fusion (a multiply and an
  add are rounded apart in every kernel, as Triton's interpreter does, so values recomputed in two
  kernels are equal bit for bit and the max-pool tie masks find exactly the maxima the pools
  found). :func:`observe` is the one seam for tools that watch launches (the kernel census).
- **Failure**: a launch that fails to compile or start raises :class:`LaunchFailed`; the op's
  CUDA kernel (:func:`run_or_twin`) then computes the whole call with the op's PyTorch twin where
  the caller allows it (backend ``auto``: warned once, and that variant goes to the twin from then
  on), else raises :class:`TritonLaunchError` naming the kernel and its specialization.

On CUDA tensors the kernels are compiled by Triton; on CPU tensors they run in Triton's
interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how CI tests them.
Maxima propagate NaN (``propagate_nan=ALL``), as ``torch.amax`` and the interpreter do.
"""

import contextlib
import functools
import types
import warnings
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

from .. import config

try:
    import triton
    import triton.language as tl

    jit = triton.jit
except ImportError:  # no triton (e.g. a CPU-only platform): the kernels are defined, never launched
    triton = None
    tl = types.SimpleNamespace(constexpr=int)

    def jit(fn):
        return fn


__all__ = [
    'triton',
    'tl',
    'jit',
    'AVAILABLE',
    'INTERPRETED',
    'DEFAULT_SMS',
    'WAVES',
    'TILE',
    'WARPS',
    'OVER_HW_WARPS',
    'TritonLaunchError',
    'LaunchFailed',
    'observe',
    'observing',
    'sm_count',
    'specialization',
    'launch',
    'run_or_twin',
    'guard_for',
    'strides',
    'cdiv',
    'pow2',
    'Tiles',
    'tiles',
    'splits',
]

#: triton can be imported here
AVAILABLE = triton is not None
#: the kernels run in Triton's interpreter (CPU tensors)
INTERPRETED = config.triton_interpreted()
#: streaming multiprocessors assumed where there is no CUDA device (an H200)
DEFAULT_SMS = 132
WAVES = 4  # split reductions until the grid has WAVES × SMs programs (where the tensor allows)
TILE = 1024  # elements per tile
WARPS = 4
#: warps of the split reductions over H×W (per (n, c) outputs); None: 8 for NCHW, where the tile's
#: 1024 elements lie along H×W, and WARPS for channels-last. Measured on an H200 (bf16, kernel
#: alone): NCHW stage 1 channel pool 36.6 → 22.7 µs and SE's gradient 46.2 → 35.0 µs at 8 warps;
#: tools/analysis/kernel_bandwidth.py ``--over-hw-warps`` sets an int here to measure others
OVER_HW_WARPS: Optional[int] = None


# ---------------------------------------------------------------- shared jit helpers


@jit
def sigmoid(t):
    """1 / (1 + e^−t): exact limits in float32 (e^−t = inf gives 0), one exp and one division."""
    return 1.0 / (1.0 + tl.exp(-t))


@jit
def nanmax(a, b):
    """max(a, b), NaN if either is NaN (as torch.amax)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@jit
def nanmin(a, b):
    """min(a, b), NaN if either is NaN (as torch.amin)."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@jit
def per_c(ptr, c, cmask):
    """A per-channel float32 vector as a [BC, 1] column."""
    return tl.load(ptr + c, mask=cmask, other=0.0).to(tl.float32)[:, None]


@jit
def per_hw(ptr, hw, hmask):
    """A per-pixel float32 vector as a [1, BHW] row."""
    return tl.load(ptr + hw, mask=hmask, other=0.0).to(tl.float32)[None, :]


@jit
def hw_tile(h0, hi, c, cmask, sc, shw, BHW: tl.constexpr):
    """Pixels h0 .. h0 + BHW (below hi) of the channels c: (hw, hmask, tile mask, offsets in the image)."""
    hw = h0 + tl.arange(0, BHW)
    hmask = hw < hi
    return hw, hmask, cmask[:, None] & hmask[None, :], c[:, None] * sc + hw[None, :] * shw


@jit
def c_tile(c0, hi, hw, hmask, sc, shw, BC: tl.constexpr):
    """Channels c0 .. c0 + BC (below hi) of the pixels hw: (c, cmask, tile mask, offsets in the image)."""
    c = c0 + tl.arange(0, BC)
    cmask = c < hi
    return c, cmask, cmask[:, None] & hmask[None, :], c[:, None] * sc + hw[None, :] * shw


# ---------------------------------------------------------------- launching

_sms: Dict[int, int] = {}
#: the observer of :func:`observe` (None: launches run directly) and the SM count it fixes
_observer: List[Optional[Callable]] = [None]
_observed_sms: List[Optional[int]] = [None]
#: op variants that failed under fallback (their twin computes them from then on): key → reason
_failed: Dict[tuple, str] = {}


class TritonLaunchError(RuntimeError):
    """A Triton kernel failed to compile or to launch where no fallback was allowed (the
    ``triton`` backend named explicitly); the message names the kernel, its specialization
    and the cause."""


class LaunchFailed(Exception):
    """A launch failed to compile or start: ``describe`` names the kernel and its specialization,
    ``reason`` says why."""

    def __init__(self, describe: str, reason: str) -> None:
        super().__init__(f'{describe}: {reason}')
        self.describe, self.reason = describe, reason


@contextlib.contextmanager
def observe(observer: Callable, sms: Optional[int] = None) -> Iterator[None]:
    """The launch-observer seam, for tools that watch the kernels (the census): inside the
    block every launch calls ``observer(kernel, grid, args, meta, warps, run)`` instead of
    launching; ``run()`` launches (or the observer skips it). ``sms``: the SM count the launch
    plans assume inside the block (a census of a GPU it does not have; default: the device's).
    Costs nothing outside a block; a nested block replaces the outer one for its duration."""
    if sms is not None and (not isinstance(sms, int) or sms < 1):
        raise ValueError(f'observe: sms must be None or a positive int, got {sms!r}')
    previous = _observer[0], _observed_sms[0]
    _observer[0], _observed_sms[0] = observer, sms
    try:
        yield
    finally:
        _observer[0], _observed_sms[0] = previous


def observing() -> bool:
    """Whether an :func:`observe` block is open."""
    return _observer[0] is not None


def sm_count(device: torch.device) -> int:
    """The device's streaming multiprocessors (``DEFAULT_SMS`` where it is not a CUDA device;
    the count an :func:`observe` block fixes inside it)."""
    if _observed_sms[0] is not None:
        return _observed_sms[0]
    if device.type != 'cuda':
        return DEFAULT_SMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _sms:
        _sms[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sms[index]


@functools.lru_cache(maxsize=None)
def _parameter_names(fn: Callable) -> Tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(fn).parameters)


_DTYPE_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16', torch.int64: 'i64'}


def specialization(kernel, args: tuple, meta: dict, warps: int) -> List[list]:
    """What Triton's JIT specializes a launch on, as ``[name, kind, value]`` per parameter:
    tensors by dtype and 16-byte alignment, ints by value 1 and divisibility by 16 (the value is
    kept), None and constants by value."""
    fn = getattr(kernel, 'fn', kernel)
    names = _parameter_names(fn)
    spec = []
    for name, value in zip(names, list(args) + [meta[k] for k in names[len(args) :]]):
        if name in meta:
            spec.append([name, 'const', value])
        elif isinstance(value, torch.Tensor):
            aligned = value.device.type == 'meta' or value.data_ptr() % 16 == 0
            spec.append([name, 'ptr', [_DTYPE_NAMES.get(value.dtype, str(value.dtype)), aligned]])
        elif value is None or isinstance(value, bool):
            spec.append([name, 'const', value])
        elif isinstance(value, int):
            spec.append([name, 'int', value])
        elif isinstance(value, float):
            spec.append([name, 'float', value])
        else:
            raise TypeError(f'triton kernels: argument {name} of {fn.__name__}: unsupported {type(value).__name__}')
    return spec


def _describe(kernel, args: tuple, meta: dict, warps: int) -> str:
    parts = [f'{n}={v}' for n, kind, v in specialization(kernel, args, meta, warps) if kind in ('const', 'ptr')]
    return f'{getattr(kernel, "fn", kernel).__name__}[{", ".join(parts)}, num_warps={warps}]'


def launch(kernel, grid: Tuple[int, ...], *args, warps: int = WARPS, **meta) -> None:
    """``kernel[grid](*args, **meta)`` without fp-fusion at ``warps``, or the observer's call;
    a failure to compile or start raises :class:`LaunchFailed`."""
    try:
        if _observer[0] is None:
            kernel[grid](*args, num_warps=warps, enable_fp_fusion=False, **meta)
        else:
            _observer[0](
                kernel,
                grid,
                args,
                meta,
                warps,
                lambda: kernel[grid](*args, num_warps=warps, enable_fp_fusion=False, **meta),
            )
    except Exception as e:  # noqa: BLE001 - a compile or launch failure of this specialization
        text = str(e).strip()
        reason = f'{type(e).__name__}: {text.splitlines()[0][:300] if text else ""}'
        raise LaunchFailed(_describe(kernel, args, meta, warps), reason) from e


def run_or_twin(key: Callable[[], tuple], fallback: bool, kernels: Callable, twin: Callable, *args):
    """``kernels(*args)`` (an op's Triton launches, under the device of ``args[0]``, a tensor), or where a launch
    fails and ``fallback`` allows it, ``twin(*args)`` (the op's PyTorch twin: same outputs), warned
    once per ``key()`` (the op and what its plan depends on; formed only once something failed),
    which then goes to the twin directly."""
    if _failed:
        known = _failed.get(key())
        if known is not None:
            if not fallback:
                raise TritonLaunchError(f'cbam_det: {known}; the triton backend was named explicitly, no fallback')
            return twin(*args)
    try:
        guard = guard_for(args[0].device) if args and args[0].is_cuda else None
        if guard is None:
            return kernels(*args)
        with guard:
            return kernels(*args)
    except LaunchFailed as e:
        message = f'Triton kernel {e.describe} failed to compile or launch ({e.reason})'
        if not fallback:
            raise TritonLaunchError(
                f'cbam_det: {message}; the triton backend was named explicitly (set_backend/use_backend or '
                f'CBAM_DET_BACKEND), so there is no fallback. Backend auto computes such calls with PyTorch.'
            ) from e
        _failed[key()] = message
        warnings.warn(
            f'cbam_det: {message}; backend auto computes this call, and every later one of this kind, with '
            f'PyTorch. CBAM_DET_BACKEND=torch silences this.',
            stacklevel=3,
        )
        return twin(*args)


def guard_for(device: torch.device):
    """``torch.cuda.device(device)`` where it is a CUDA device other than the current one (Triton
    launches on the current device); None otherwise."""
    if device.type == 'cuda' and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return None


# ---------------------------------------------------------------- layouts and plans


def strides(t: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """(n, c, hw) strides of a 4-d tensor whose H and W merge into one index (NCHW, channels-last,
    or any dense layout of that kind; a broadcast gradient's zero strides too), else None."""
    sn, sc, sh, sw = t.stride()
    if t.shape[3] == 1:
        return sn, sc, sh
    if t.shape[2] == 1 or sh == t.shape[3] * sw:
        return sn, sc, sw
    return None


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ in plain Python (``triton.cdiv`` is a JIT function: microseconds per call on the host)."""
    return -(-a // b)


def pow2(n: int) -> int:
    """The smallest power of two ≥ n (n ≥ 1), in plain Python like :func:`cdiv`."""
    return 1 << (n - 1).bit_length()


class Tiles(NamedTuple):
    """Tile of a full-size tensor: BC channels × BHW pixels, the long side on the contiguous axis."""

    bc: int
    bhw: int


def tiles(channels_last: bool, c: int, hw: int, per_pixel: bool = False, elements: int = 0) -> Tiles:
    """Up to 64 elements along the contiguous axis, the rest of TILE along the other, neither
    longer than its (power-of-two rounded) extent. ``per_pixel`` (reductions over C, which write
    per-pixel partials, and loops over C per pixel block): tiles of 2 × TILE elements that are long
    in pixels (NCHW: 256 pixels × 8 channels; channels-last: 16 channels × 128 pixels), or of
    ``elements`` (a kernel with many accumulators: fewer registers per thread): channels-last keeps
    the pixels and takes fewer channels, NCHW keeps 8 channels and takes 128 pixels (4 channels ×
    256 pixels spilled registers on sm_120 at one detection shape)."""
    tile = elements or (2 * TILE if per_pixel else TILE)
    if channels_last:
        bc = min(16 if per_pixel else 64, pow2(c))
        if elements:  # as many pixels per block (as many partial sums), fewer channels
            bc = max(1, min(bc, elements // min(2 * TILE // bc, pow2(hw))))
        return Tiles(bc, min(tile // bc, pow2(hw)))
    bhw = min((elements // 8 if elements else 256) if per_pixel else 64, pow2(hw))
    return Tiles(min(tile // bhw, pow2(c)), bhw)


def splits(tiles: int, rows: int, target: int) -> Tuple[int, int]:
    """(S, tiles per split): a reduction over ``tiles`` tiles in each of ``rows`` independent
    rows, cut into S splits so that rows × S reaches ``target`` programs where it can. Rows
    that already give half the target (two programs per SM) are not split: a split costs a
    partial-sum buffer and a sum over it."""
    if 2 * rows >= target:
        return 1, tiles
    want = max(1, min(tiles, cdiv(target, max(rows, 1))))
    per = cdiv(tiles, want)
    return cdiv(tiles, per), per
