"""BAM (Park et al., BMVC 2018) as an operator family, ``cbam_det::bam_apply``: the refinement
F ⊗ (r + M(F)) of eq. 1-2 in one pass from its branch logits, and the 1×1 channel reduction of
eq. 4 (f^{1×1}_0) on the CPU.

    y = bam_apply(x, c, s) = x ⊗ (r + σ(t)),  t = c[n, c] + s[n, hw]  (product: c·s),  r = 1 or 0
    out = pointwise_conv(x, w, b)  =  F.conv2d(x, w[:, :, None, None], b)   (CPU kernel only)

with c (N, C) and s (N, H·W) float32 logits. The full-size M(F) is never stored: forward is one
pass over x, backward (``bam_backward``) one pass over (dy, x) that writes dx and the logits'
gradients. Side by side below: the schemas, the CPU kernels (``cbam_det/ops/csrc/bam.cpp``), the
CUDA kernels (Triton), the PyTorch twin (what a failing Triton launch computes under ``auto``),
the fakes and the autograd (one node per call: in eager mode C++, ``BamNode`` in ``bam.cpp``, or
:class:`_Bam` where that is not compiled; the same formula
registered on the op for ``torch.compile``).
"""

import functools
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import launch as L
from ..launch import c_tile, jit, per_c, per_hw, sigmoid, tl
from ..record import note
from . import _kernels
from ._autograd import call_below_autograd, eager_node

__all__ = ['call', 'refine', 'pointwise_conv', 'twin_apply', 'twin_backward', 'triton_apply', 'triton_backward']


# ---------------------------------------------------------------- Triton kernels


@jit
def _bam_apply_kernel(
    x_ptr, c_ptr, s_ptr, out_ptr, C, HW, sn, sc, shw, on, oc, ohw,
    PRODUCT: tl.constexpr, RESIDUAL: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """y = x ⊗ (r + σ(c + s)) (PRODUCT: σ(c·s)), one [BC, BHW] tile per program."""
    hb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask, hmask = c < C, hw < HW
    mask = cmask[:, None] & hmask[None, :]
    x = tl.load(x_ptr + n.to(tl.int64) * sn + c[:, None] * sc + hw[None, :] * shw, mask=mask, other=0.0)
    cv, sv = per_c(c_ptr + n * C, c, cmask), per_hw(s_ptr + n * HW, hw, hmask)
    m = sigmoid(cv * sv if PRODUCT else cv + sv)
    y = x.to(tl.float32) * (m + 1.0) if RESIDUAL else x.to(tl.float32) * m
    out = out_ptr + n.to(tl.int64) * on + c[:, None] * oc + hw[None, :] * ohw
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _bam_grads_kernel(
    dy_ptr, x_ptr, c_ptr, s_ptr, dx_ptr, part_ptr, ds_ptr, C, HW, L, NB, sn, sc, shw, dn, dc, dhw,
    PRODUCT: tl.constexpr, RESIDUAL: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """BAM backward in one pass: dx, per pixel block and channel Σ g·∂t/∂c into (N, NB, C)
    partials, per pixel over channels [s·L, (s+1)·L) Σ_c g·∂t/∂s; g = dy·x·σ'(t)."""
    hb, sp, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    sv = per_hw(s_ptr + n * HW, hw, hmask)
    acc = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = sp * L
    hi = tl.minimum(lo + L, C)
    part = part_ptr + (n * NB + hb) * C
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = c_tile(c0, hi, hw, hmask, sc, shw, BC)
        off += n.to(tl.int64) * sn
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + n.to(tl.int64) * dn + c[:, None] * dc + hw[None, :] * dhw, mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        cv = per_c(c_ptr + n * C, c, cmask)
        m = sigmoid(cv * sv if PRODUCT else cv + sv)
        tl.store(dx_ptr + off, (dy * (m + 1.0) if RESIDUAL else dy * m).to(dx_ptr.dtype.element_ty), mask=mask)
        gt = tl.where(mask, dy * x * m * (1.0 - m), 0.0)
        if PRODUCT:
            tl.store(part + c, tl.sum(gt * sv, 1), mask=cmask)
            acc += gt * cv
        else:
            tl.store(part + c, tl.sum(gt, 1), mask=cmask)
            acc += gt
    tl.store(ds_ptr + (n * tl.num_programs(1) + sp) * HW + hw, tl.sum(acc, 0), mask=hmask)


@jit
def _bam_sum_kernel(part_ptr, ds_ptr, dc_ptr, dsum_ptr, C, HW, NB, S, BLOCK: tl.constexpr):
    """dc = Σ over the NB pixel blocks, ds = Σ over the S channel splits (grid (blocks, N))."""
    b, n = tl.program_id(0), tl.program_id(1)
    i = b * BLOCK + tl.arange(0, BLOCK)
    cm = i < C
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(0, NB):
        acc += tl.load(part_ptr + (n * NB + j) * C + i, mask=cm, other=0.0)
    tl.store(dc_ptr + n * C + i, acc, mask=cm)
    hm = i < HW
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(0, S):
        acc += tl.load(ds_ptr + (n * S + j) * HW + i, mask=hm, other=0.0)
    tl.store(dsum_ptr + n * HW + i, acc, mask=hm)


#: the kernels that touch no full-size tensor
SMALL_KERNELS = ('_bam_sum_kernel',)


# ---------------------------------------------------------------- launchers


def _strided(t: Tensor, dense: bool = True) -> Tuple[Tensor, Tuple[int, int, int]]:
    """``t`` and its (n, c, hw) strides, as the gates family's ``_launch_strides``."""
    st = L.strides(t)
    if st is None or dense and not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        t = t.contiguous()
        st = L.strides(t)
    return t, st


@functools.lru_cache(maxsize=None)
def _plans(n: int, c: int, hw: int, cl: bool, sms: int) -> tuple:
    t = L.tiles(cl, c, hw)
    tile = ((L.cdiv(hw, t.bhw), L.cdiv(c, t.bc), n), t.bc, t.bhw)
    p = L.tiles(cl, c, hw, per_pixel=True)
    cb, nb = L.cdiv(c, p.bc), L.cdiv(hw, p.bhw)
    s, per = L.splits(cb, n * nb, L.WAVES * sms)
    grads = ((nb, s, n), per * p.bc, p.bc, p.bhw, max(L.WARPS, p.bc * p.bhw // (32 * 8)))
    block = 1024
    return tile, grads, ((L.cdiv(max(c, hw), block), n), block)


def triton_apply(x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool, out: Optional[Tensor]) -> Tensor:
    """One launch: y = x ⊗ (r + σ(t)) (into ``out`` when given; it may be x)."""
    x, (sn, sc, shw) = _strided(x)
    n, ch, h, w = x.shape
    tile, _, _ = _plans(n, ch, h * w, sc == 1 and ch > 1, L.sm_count(x.device))
    y = torch.empty_like(x) if out is None else out
    grid, bc, bhw = tile
    L.launch(
        _bam_apply_kernel, grid, x, c, s, y, ch, h * w, sn, sc, shw, *L.strides(y),
        PRODUCT=product, RESIDUAL=residual, BC=bc, BHW=bhw,
    )  # fmt: skip
    return y


def triton_backward(dy: Tensor, x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool):
    """Two launches: (dx, dc (N, C), ds (N, H·W))."""
    x, (sn, sc, shw) = _strided(x)
    dy, dst = _strided(dy, dense=False)
    n, ch, h, w = x.shape
    hw = h * w
    _, grads, sums = _plans(n, ch, hw, sc == 1 and ch > 1, L.sm_count(x.device))
    grid, length, bc, bhw, warps = grads
    nb, sp = grid[0], grid[1]
    dx = torch.empty_like(x)
    f32 = dict(dtype=torch.float32, device=x.device)
    part, dsp = torch.empty(n * nb * ch, **f32), torch.empty(n * sp * hw, **f32)
    dc, ds = torch.empty(n, ch, **f32), torch.empty(n, hw, **f32)
    L.launch(
        _bam_grads_kernel, grid, dy, x, c, s, dx, part, dsp, ch, hw, length, nb, sn, sc, shw, *dst,
        PRODUCT=product, RESIDUAL=residual, BC=bc, BHW=bhw, warps=warps,
    )  # fmt: skip
    grid, block = sums
    L.launch(_bam_sum_kernel, grid, part, dsp, dc, ds, ch, hw, nb, sp, BLOCK=block)
    return dx, dc, ds


# ---------------------------------------------------------------- the PyTorch twin


def twin_apply(x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool, out: Optional[Tensor]) -> Tensor:
    """:func:`triton_apply` with PyTorch operations."""
    n, ch, h, w = x.shape
    t = c.view(n, ch, 1, 1) * s.view(n, 1, h, w) if product else c.view(n, ch, 1, 1) + s.view(n, 1, h, w)
    m = torch.sigmoid(t)
    y = (x.float() * (m + 1.0) if residual else x.float() * m).to(x.dtype)
    return y if out is None else out.copy_(y)


def twin_backward(dy: Tensor, x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool):
    """:func:`triton_backward` with PyTorch operations."""
    n, ch, h, w = x.shape
    cv, sv = c.view(n, ch, 1, 1), s.view(n, 1, h, w)
    m = torch.sigmoid(cv * sv if product else cv + sv)
    dyf = dy.float()
    dx = (dyf * (m + 1.0) if residual else dyf * m).to(x.dtype)
    g = dyf * x.float() * m * (1.0 - m)
    if product:
        return dx, (g * sv).sum((2, 3)), (g * cv).sum(1).reshape(n, h * w)
    return dx, g.sum((2, 3)), g.sum(1).reshape(n, h * w)


# ---------------------------------------------------------------- the operators

_lib = torch.library.Library('cbam_det', 'FRAGMENT')
#: the family's ops (``torch.ops.cbam_det.<name>``), each defined below
OPS = ('bam_apply', 'bam_apply_', 'bam_backward', 'pointwise_conv', 'pointwise_conv_input_grad')
_lib.define(
    'bam_apply(Tensor x, Tensor c, Tensor s, bool product, bool residual, bool triton, bool fallback) -> Tensor'
)
_lib.define(
    'bam_apply_(Tensor(a!) out, Tensor x, Tensor c, Tensor s, bool product, bool residual, bool triton, '
    'bool fallback) -> ()'
)
_lib.define(
    'bam_backward(Tensor dy, Tensor x, Tensor c, Tensor s, bool product, bool residual, bool triton, '
    'bool fallback) -> (Tensor, Tensor, Tensor)'
)
_lib.define('pointwise_conv(Tensor x, Tensor w, Tensor? bias) -> Tensor')
_lib.define('pointwise_conv_input_grad(Tensor dout, Tensor w) -> Tensor')


def _apply_impl(x, c, s, product, residual, triton, fallback, out=None):
    """C++ on the CPU (Triton in its interpreter where ``triton``), Triton on CUDA."""
    if x.device.type == 'cpu' and not triton:
        return _kernels.cpu('bam_apply', 'bam').bam_apply(x.contiguous(), c, s, product, residual, out)
    key = lambda: ('bam_apply', x.dtype, product, residual)  # noqa: E731
    return L.run_or_twin(key, fallback, triton_apply, twin_apply, x, c, s, product, residual, out)


def _apply_inplace_impl(out, x, c, s, product, residual, triton, fallback) -> None:
    _apply_impl(x, c, s, product, residual, triton, fallback, out)


def _backward_impl(dy, x, c, s, product, residual, triton, fallback):
    if x.device.type == 'cpu' and not triton:
        dx, dc, ds = _kernels.cpu('bam_backward', 'bam').bam_grads(
            dy.contiguous(), x.contiguous(), c, s, product, residual
        )
        return dx, dc, ds
    key = lambda: ('bam_backward', x.dtype, product, residual)  # noqa: E731
    return L.run_or_twin(key, fallback, triton_backward, twin_backward, dy, x, c, s, product, residual)


for _dk in ('CPU', 'CUDA'):
    _lib.impl('bam_apply', _apply_impl, _dk)
    _lib.impl('bam_apply_', _apply_inplace_impl, _dk)
    _lib.impl('bam_backward', _backward_impl, _dk)


def _pointwise_cpu(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    return _kernels.cpu('pointwise_conv', 'bam').pointwise_conv(x.contiguous(), w.contiguous(), bias)


def _pointwise_grad_cpu(dout: Tensor, w: Tensor) -> Tensor:
    return _kernels.cpu('pointwise_conv_input_grad', 'bam').pointwise_conv_input_grad(dout.contiguous(), w.contiguous())


_lib.impl('pointwise_conv', _pointwise_cpu, 'CPU')
_lib.impl('pointwise_conv_input_grad', _pointwise_grad_cpu, 'CPU')


# The fakes give shapes to torch.compile; on real ``meta`` tensors while a census observes the
# launches they run the Triton launchers (the grids of a full-size network, nothing launched).


@torch.library.register_fake('cbam_det::bam_apply')
def _fake_apply(x, c, s, product, residual, triton, fallback):
    if x.device.type == 'meta' and L.observing():
        return triton_apply(x, c, s, product, residual, None)
    return torch.empty_like(x)


@torch.library.register_fake('cbam_det::bam_apply_')
def _fake_apply_(out, x, c, s, product, residual, triton, fallback) -> None:
    if x.device.type == 'meta' and L.observing():
        triton_apply(x, c, s, product, residual, out)


@torch.library.register_fake('cbam_det::bam_backward')
def _fake_backward(dy, x, c, s, product, residual, triton, fallback):
    if x.device.type == 'meta' and L.observing():
        return triton_backward(dy, x, c, s, product, residual)
    return torch.empty_like(x), torch.empty_like(c), torch.empty_like(s)


@torch.library.register_fake('cbam_det::pointwise_conv')
def _fake_pointwise(x, w, bias):
    return x.new_empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3]))


@torch.library.register_fake('cbam_det::pointwise_conv_input_grad')
def _fake_pointwise_input_grad(dout, w):
    return dout.new_empty((dout.shape[0], w.shape[1], dout.shape[2], dout.shape[3]))


BAM_APPLY = torch.ops.cbam_det.bam_apply.default
BAM_APPLY_ = torch.ops.cbam_det.bam_apply_.default
BAM_BACKWARD = torch.ops.cbam_det.bam_backward.default
POINTWISE = torch.ops.cbam_det.pointwise_conv.default
POINTWISE_INPUT_GRAD = torch.ops.cbam_det.pointwise_conv_input_grad.default


# ---------------------------------------------------------------- autograd


def _setup(ctx, inputs, output) -> None:
    x, c, s, product, residual, triton, fallback = inputs
    ctx.save_for_backward(x, c, s)
    ctx.flags = (product, residual, triton, fallback)


def _backward(ctx, dy: Tensor) -> tuple:
    x, c, s = ctx.saved_tensors
    dx, dc, ds = BAM_BACKWARD(dy, x, c, s, *ctx.flags)
    return dx, dc, ds, None, None, None, None


_Bam = eager_node('_Bam', BAM_APPLY, _setup, _backward, 'The eager autograd node of ``cbam_det::bam_apply``.')
torch.library.register_autograd('cbam_det::bam_apply', _backward, setup_context=_setup)


def eager_node_of_bam() -> Callable[..., Tensor]:
    """The eager node of ``cbam_det::bam_apply``, called with the op's arguments: the C++ node of
    the family's compiled module (``csrc/bam.cpp``'s ``BamNode``) where it is compiled, else
    :data:`_Bam` (the same op calls from a Python ``autograd.Function``: without a compiler, or
    ``CBAM_DET_NO_EXT=1``)."""
    from ...ops import ext

    compiled = ext('bam')
    return compiled.bam_node if compiled is not None else _Bam.call


def _pointwise_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.has_bias = inputs[2] is not None


def _pointwise_backward(ctx, dout: Tensor) -> tuple:
    x, w = ctx.saved_tensors
    n, c, h, wd = x.shape
    dout = dout.contiguous()
    d = dout.view(n, -1, h * wd)
    want_x, want_w, want_b = ctx.needs_input_grad
    dx = POINTWISE_INPUT_GRAD(dout, w) if want_x else None
    dw = torch.bmm(d, x.reshape(n, c, h * wd).transpose(1, 2)).sum(0) if want_w else None
    return dx, dw, (d.sum((0, 2)) if want_b and ctx.has_bias else None)


_Pointwise = eager_node(
    '_Pointwise',
    POINTWISE,
    _pointwise_setup,
    _pointwise_backward,
    'The eager autograd node of ``cbam_det::pointwise_conv``.',
)
torch.library.register_autograd('cbam_det::pointwise_conv', _pointwise_backward, setup_context=_pointwise_setup)


# ---------------------------------------------------------------- from a module


def call(module: nn.Module, backend: str, fallback: bool, compiling: bool, x: Tensor, c: Tensor, s: Tensor) -> Tensor:
    """A BAM module's refinement of ``x`` from its branch logits c (N, C, 1, 1) and s (N, 1, H, W)
    on ``backend`` (what ``kernels.run`` calls): ``module.refine`` on ``torch``, else one op call."""
    note(module, bam_channel=c, bam_spatial=s)
    if backend == 'torch':
        return module.refine(x, c, s)
    product = module.combine == 'product'
    node = None
    if not compiling:  # decided once per module and mode (dropped with the kernel caches)
        node = module.__dict__.get('_bam_node')
        if node is None:
            node = module.__dict__['_bam_node'] = eager_node_of_bam()
    return refine(x, c, s, product, module.residual, module.inplace, backend == 'triton', fallback, compiling, node)


def refine(x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool, inplace: bool, triton: bool, fallback: bool,
           compiled: bool = False, node: Optional[Callable[..., Tensor]] = None) -> Tensor:  # fmt: skip
    """BAM's x ⊗ (r + σ(t)) from the branch logits c (N, C, 1, 1) and s (N, 1, H, W), one op call
    (``inplace`` without autograd: written into x; ``node``: the eager node, :func:`eager_node_of_bam`'s
    where None)."""
    n, ch, h, w = x.shape
    c2, s2 = c.reshape(n, ch).float().contiguous(), s.reshape(n, h * w).float().contiguous()
    args = (x, c2, s2, product, residual, triton, fallback)
    if torch.is_grad_enabled() and (x.requires_grad or c.requires_grad or s.requires_grad):
        return BAM_APPLY(*args) if compiled else (node or eager_node_of_bam())(*args)
    if inplace and not compiled:
        BAM_APPLY_(x, *args)
        return x
    return BAM_APPLY(*args) if compiled else call_below_autograd(BAM_APPLY, *args)


def pointwise_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], compiled: bool = False) -> Tensor:
    """BAM's 1×1 reduction with the C++ kernel (float32 NCHW CPU tensors), one op call."""
    w = weight.reshape(weight.shape[0], -1)
    if compiled:
        return POINTWISE(x, w, bias)
    if not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
        return call_below_autograd(POINTWISE, x, w, bias)
    return _Pointwise.apply(x, w, bias)
