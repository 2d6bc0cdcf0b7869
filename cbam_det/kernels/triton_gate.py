"""Triton kernels for gated attention: CBAM (Woo et al., ECCV 2018, eq. 1-3), SE (Hu et al.,
CVPR 2018) and BAM's gate (Park et al., BMVC 2018, eq. 1-2: y = x ⊗ (r + σ(Mc + Ms))).

The same operations as the compiled CPU kernels (``cbam_det/ops/csrc/gate_cpu.cpp``), with
the same signatures, so that :mod:`cbam_det.kernels.fused` runs on either: every full-size
(N, C, H, W) step is one pass over memory, and ``x = a[c]·z + b[c]`` is the input itself
(a, b None) or a BatchNorm's output recomputed from its input z (the BN-fused block).

- full-size tensors: float32, float16 or bfloat16, NCHW or channels-last (any layout whose
  H and W merge into one index; others are made contiguous), any C, H, W;
- small tensors (gates, pooled maps, their gradients): float32, contiguous;
- arithmetic in float32; max-pool gradients shared evenly between tied maxima, as
  ``torch.amax`` does; per-(n, c) sums over pixel blocks are written as partial sums and
  added in a fixed order (deterministic, no atomics).

On CUDA tensors the kernels are compiled by Triton; on CPU tensors they run in Triton's
interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how CI tests them.
"""

import os
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = [
    'channel_pool',
    'channel_moments',
    'spatial_pool',
    'apply_gates',
    'gate_grads',
    'spatial_pool_grad',
    'input_grad',
    'affine_combine_',
    'bam_apply',
    'bam_grads',
    'INTERPRETED',
]

#: the kernels were defined under Triton's interpreter (they then run on CPU tensors)
INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'

_BC = 32  # channels per tile
_BHW = 64  # pixels per tile


@triton.jit
def _load_x(z_ptr, off, mask, a_ptr, b_ptr, c, cmask, HAS_AFFINE: tl.constexpr):
    """x = a[c]·z + b[c] (or z) as float32, for a [channels, pixels] tile."""
    x = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_AFFINE:
        a = tl.load(a_ptr + c, mask=cmask, other=0.0)
        b = tl.load(b_ptr + c, mask=cmask, other=0.0)
        x = x * a[:, None] + b[:, None]
    return x


@triton.jit
def _sigmoid(t):
    e = tl.exp(-tl.abs(t))
    return tl.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _channel_pool_kernel(
    z_ptr, a_ptr, b_ptr, avg_ptr, max_ptr, C, HW, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    acc = tl.zeros([BC], dtype=tl.float32)
    mx = tl.full([BC], float('-inf'), dtype=tl.float32)
    for h0 in range(0, HW, BHW):
        hw = h0 + tl.arange(0, BHW)
        mask = cmask[:, None] & (hw < HW)[None, :]
        x = _load_x(z_ptr, n * sn + c[:, None] * sc + hw[None, :] * shw, mask, a_ptr, b_ptr, c, cmask, HAS_AFFINE)
        acc += tl.sum(tl.where(mask, x, 0.0), 1)
        mx = tl.maximum(mx, tl.max(tl.where(mask, x, float('-inf')), 1))
    tl.store(avg_ptr + n * C + c, acc / HW, mask=cmask)
    tl.store(max_ptr + n * C + c, mx, mask=cmask)


@triton.jit
def _channel_moments_kernel(
    z_ptr, shift_ptr, s1_ptr, s2_ptr, zmax_ptr, zmin_ptr, C, HW, sn, sc, shw,
    BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    k = tl.load(shift_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    s1 = tl.zeros([BC], dtype=tl.float32)
    s2 = tl.zeros([BC], dtype=tl.float32)
    mx = tl.full([BC], float('-inf'), dtype=tl.float32)
    mn = tl.full([BC], float('inf'), dtype=tl.float32)
    for h0 in range(0, HW, BHW):
        hw = h0 + tl.arange(0, BHW)
        mask = cmask[:, None] & (hw < HW)[None, :]
        z = tl.load(z_ptr + n * sn + c[:, None] * sc + hw[None, :] * shw, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, z - k[:, None], 0.0)
        s1 += tl.sum(d, 1)
        s2 += tl.sum(d * d, 1)
        mx = tl.maximum(mx, tl.max(tl.where(mask, z, float('-inf')), 1))
        mn = tl.minimum(mn, tl.min(tl.where(mask, z, float('inf')), 1))
    tl.store(s1_ptr + n * C + c, s1, mask=cmask)
    tl.store(s2_ptr + n * C + c, s2, mask=cmask)
    tl.store(zmax_ptr + n * C + c, mx, mask=cmask)
    tl.store(zmin_ptr + n * C + c, mn, mask=cmask)


@triton.jit
def _spatial_pool_kernel(
    z_ptr, a_ptr, b_ptr, gc_ptr, avg_ptr, max_ptr, C, HW, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, hb = tl.program_id(0), tl.program_id(1)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    acc = tl.zeros([BHW], dtype=tl.float32)
    mx = tl.full([BHW], float('-inf'), dtype=tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        mask = cmask[:, None] & hmask[None, :]
        x = _load_x(z_ptr, n * sn + c[:, None] * sc + hw[None, :] * shw, mask, a_ptr, b_ptr, c, cmask, HAS_AFFINE)
        g = tl.load(gc_ptr + n * C + c, mask=cmask, other=0.0)
        xg = x * g[:, None]
        acc += tl.sum(tl.where(mask, xg, 0.0), 0)
        mx = tl.maximum(mx, tl.max(tl.where(mask, xg, float('-inf')), 0))
    tl.store(avg_ptr + n * HW + hw, acc / C, mask=hmask)
    tl.store(max_ptr + n * HW + hw, mx, mask=hmask)


@triton.jit
def _apply_gates_kernel(
    z_ptr, a_ptr, b_ptr, gc_ptr, gs_ptr, out_ptr, C, HW, sn, sc, shw, on, oc, ohw,
    HAS_AFFINE: tl.constexpr, HAS_GS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, cb, hb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask, hmask = c < C, hw < HW
    mask = cmask[:, None] & hmask[None, :]
    x = _load_x(z_ptr, n * sn + c[:, None] * sc + hw[None, :] * shw, mask, a_ptr, b_ptr, c, cmask, HAS_AFFINE)
    y = x * tl.load(gc_ptr + n * C + c, mask=cmask, other=0.0)[:, None]
    if HAS_GS:
        y = y * tl.load(gs_ptr + n * HW + hw, mask=hmask, other=0.0)[None, :]
    tl.store(out_ptr + n * on + c[:, None] * oc + hw[None, :] * ohw, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_grads_kernel(
    dy_ptr, z_ptr, a_ptr, b_ptr, gc_ptr, gs_ptr, smax_ptr, part_ptr, dgs_ptr, cnt_ptr, C, HW, NB, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, HAS_GS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, hb = tl.program_id(0), tl.program_id(1)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    ds = tl.zeros([BHW], dtype=tl.float32)
    cnt = tl.zeros([BHW], dtype=tl.float32)
    if HAS_GS:
        s = tl.load(gs_ptr + n * HW + hw, mask=hmask, other=0.0)
        m = tl.load(smax_ptr + n * HW + hw, mask=hmask, other=0.0)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        mask = cmask[:, None] & hmask[None, :]
        off = n * sn + c[:, None] * sc + hw[None, :] * shw
        x = _load_x(z_ptr, off, mask, a_ptr, b_ptr, c, cmask, HAS_AFFINE)
        u = tl.where(mask, tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32) * x, 0.0)
        if HAS_GS:
            g = tl.load(gc_ptr + n * C + c, mask=cmask, other=0.0)
            tl.store(part_ptr + (n * NB + hb) * C + c, tl.sum(u * s[None, :], 1), mask=cmask)
            ds += tl.sum(u * g[:, None], 0)
            cnt += tl.sum(tl.where(mask & (x * g[:, None] == m[None, :]), 1.0, 0.0), 0)
        else:
            tl.store(part_ptr + (n * NB + hb) * C + c, tl.sum(u, 1), mask=cmask)
    if HAS_GS:
        tl.store(dgs_ptr + n * HW + hw, ds, mask=hmask)
        tl.store(cnt_ptr + n * HW + hw, cnt, mask=hmask)


@triton.jit
def _spatial_pool_grad_kernel(
    z_ptr, a_ptr, b_ptr, gc_ptr, smax_ptr, wa_ptr, wm_ptr, out_ptr, C, HW, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    g = tl.load(gc_ptr + n * C + c, mask=cmask, other=0.0)
    acc = tl.zeros([BC], dtype=tl.float32)
    for h0 in range(0, HW, BHW):
        hw = h0 + tl.arange(0, BHW)
        hmask = hw < HW
        mask = cmask[:, None] & hmask[None, :]
        x = _load_x(z_ptr, n * sn + c[:, None] * sc + hw[None, :] * shw, mask, a_ptr, b_ptr, c, cmask, HAS_AFFINE)
        m = tl.load(smax_ptr + n * HW + hw, mask=hmask, other=0.0)
        wa = tl.load(wa_ptr + n * HW + hw, mask=hmask, other=0.0)
        wm = tl.load(wm_ptr + n * HW + hw, mask=hmask, other=0.0)
        w = wa[None, :] + tl.where(x * g[:, None] == m[None, :], wm[None, :], 0.0)
        acc += tl.sum(tl.where(mask, x * w, 0.0), 1)
    tl.store(out_ptr + n * C + c, acc, mask=cmask)


@triton.jit
def _input_grad_kernel(
    dy_ptr, z_ptr, a_ptr, b_ptr, gc_ptr, gs_ptr, smax_ptr, wa_ptr, wm_ptr, davg_ptr, cmax_ptr, dmax_ptr,
    dx_ptr, s1_ptr, s2_ptr, C, HW, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, HAS_GS: tl.constexpr, SPATIAL: tl.constexpr, HAS_CMAX: tl.constexpr,
    SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, cb = tl.program_id(0), tl.program_id(1)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    g = tl.load(gc_ptr + n * C + c, mask=cmask, other=0.0)
    base = tl.load(davg_ptr + n * C + c, mask=cmask, other=0.0) / HW
    cm = tl.zeros([BC], dtype=tl.float32)
    cmg = tl.zeros([BC], dtype=tl.float32)
    if HAS_CMAX:
        # the channel max's gradient is shared between its ties: count them first, reading
        # only the rows whose max has a gradient
        cm = tl.load(cmax_ptr + n * C + c, mask=cmask, other=0.0)
        dm = tl.load(dmax_ptr + n * C + c, mask=cmask, other=0.0)
        live = cmask & (dm != 0.0)
        ties = tl.zeros([BC], dtype=tl.float32)
        for h0 in range(0, HW, BHW):
            hw = h0 + tl.arange(0, BHW)
            mask = live[:, None] & (hw < HW)[None, :]
            x = _load_x(z_ptr, n * sn + c[:, None] * sc + hw[None, :] * shw, mask, a_ptr, b_ptr, c, cmask, HAS_AFFINE)
            ties += tl.sum(tl.where(mask & (x == cm[:, None]), 1.0, 0.0), 1)
        cmg = dm / tl.maximum(ties, 1.0)
    t1 = tl.zeros([BC], dtype=tl.float32)
    t2 = tl.zeros([BC], dtype=tl.float32)
    for h0 in range(0, HW, BHW):
        hw = h0 + tl.arange(0, BHW)
        hmask = hw < HW
        mask = cmask[:, None] & hmask[None, :]
        off = n * sn + c[:, None] * sc + hw[None, :] * shw
        z = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
        x = z
        if HAS_AFFINE:
            x = (
                z * tl.load(a_ptr + c, mask=cmask, other=0.0)[:, None]
                + tl.load(b_ptr + c, mask=cmask, other=0.0)[:, None]
            )
        t = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_GS:
            t = t * tl.load(gs_ptr + n * HW + hw, mask=hmask, other=0.0)[None, :]
        v = t * g[:, None] + base[:, None]
        if HAS_CMAX:
            v += tl.where(x == cm[:, None], cmg[:, None], 0.0)
        if SPATIAL:
            m = tl.load(smax_ptr + n * HW + hw, mask=hmask, other=0.0)
            wa = tl.load(wa_ptr + n * HW + hw, mask=hmask, other=0.0)
            wm = tl.load(wm_ptr + n * HW + hw, mask=hmask, other=0.0)
            v += g[:, None] * (wa[None, :] + tl.where(x * g[:, None] == m[None, :], wm[None, :], 0.0))
        tl.store(dx_ptr + off, v.to(dx_ptr.dtype.element_ty), mask=mask)
        if SUMS:
            v = tl.where(mask, v, 0.0)
            t1 += tl.sum(v, 1)
            t2 += tl.sum(v * z, 1)
    if SUMS:
        tl.store(s1_ptr + n * C + c, t1, mask=cmask)
        tl.store(s2_ptr + n * C + c, t2, mask=cmask)


@triton.jit
def _affine_combine_kernel(
    t_ptr, z_ptr, A_ptr, B_ptr, D_ptr, C, HW, sn, sc, shw, BC: tl.constexpr, BHW: tl.constexpr
):  # fmt: skip
    n, cb, hb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask = c < C
    mask = cmask[:, None] & (hw < HW)[None, :]
    off = n * sn + c[:, None] * sc + hw[None, :] * shw
    t = tl.load(t_ptr + off, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + c, mask=cmask, other=0.0)[:, None]
    B = tl.load(B_ptr + c, mask=cmask, other=0.0)[:, None]
    D = tl.load(D_ptr + c, mask=cmask, other=0.0)[:, None]
    tl.store(t_ptr + off, (A * t + B * z + D).to(t_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bam_apply_kernel(
    x_ptr, c_ptr, s_ptr, out_ptr, C, HW, sn, sc, shw, on, oc, ohw,
    PRODUCT: tl.constexpr, RESIDUAL: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, cb, hb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask, hmask = c < C, hw < HW
    mask = cmask[:, None] & hmask[None, :]
    x = tl.load(x_ptr + n * sn + c[:, None] * sc + hw[None, :] * shw, mask=mask, other=0.0).to(tl.float32)
    cv = tl.load(c_ptr + n * C + c, mask=cmask, other=0.0)[:, None]
    sv = tl.load(s_ptr + n * HW + hw, mask=hmask, other=0.0)[None, :]
    m = _sigmoid(cv * sv if PRODUCT else cv + sv)
    y = x * (m + 1.0) if RESIDUAL else x * m
    tl.store(out_ptr + n * on + c[:, None] * oc + hw[None, :] * ohw, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bam_grads_kernel(
    dy_ptr, x_ptr, c_ptr, s_ptr, dx_ptr, part_ptr, ds_ptr, C, HW, NB, sn, sc, shw,
    PRODUCT: tl.constexpr, RESIDUAL: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    n, hb = tl.program_id(0), tl.program_id(1)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    sv = tl.load(s_ptr + n * HW + hw, mask=hmask, other=0.0)
    acc_s = tl.zeros([BHW], dtype=tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        mask = cmask[:, None] & hmask[None, :]
        off = n * sn + c[:, None] * sc + hw[None, :] * shw
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        cv = tl.load(c_ptr + n * C + c, mask=cmask, other=0.0)
        m = _sigmoid(cv[:, None] * sv[None, :] if PRODUCT else cv[:, None] + sv[None, :])
        dx = dy * (m + 1.0) if RESIDUAL else dy * m
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        gt = tl.where(mask, dy * x * m * (1.0 - m), 0.0)
        if PRODUCT:
            tl.store(part_ptr + (n * NB + hb) * C + c, tl.sum(gt * sv[None, :], 1), mask=cmask)
            acc_s += tl.sum(gt * cv[:, None], 0)
        else:
            tl.store(part_ptr + (n * NB + hb) * C + c, tl.sum(gt, 1), mask=cmask)
            acc_s += tl.sum(gt, 0)
    tl.store(ds_ptr + n * HW + hw, acc_s, mask=hmask)


# ---------------------------------------------------------------- launchers (the CPU kernels' API)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _layout(t: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """``t`` (made contiguous if H and W do not merge into one index) and its (n, c, hw) strides."""
    if t.dtype not in _DTYPES:
        raise TypeError(f'triton kernels: dtype must be one of {_DTYPES}, got {t.dtype}')
    if t.dim() != 4:
        raise ValueError(f'triton kernels: expected an (N, C, H, W) tensor, got shape {tuple(t.shape)}')
    sn, sc, sh, sw = t.stride()
    if t.shape[2] > 1 and sh != t.shape[3] * sw:
        t = t.contiguous()
        sn, sc, sh, sw = t.stride()
    return t, (sn, sc, sw if t.shape[3] > 1 else (sh if t.shape[2] > 1 else 1))


def _like(t: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``t`` with ``other``'s memory layout (the kernels read both with one set of strides)."""
    if t.stride() == other.stride():
        return t
    return torch.empty_like(other, dtype=t.dtype).copy_(t)


def _small(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float().contiguous()


def _dims(z: torch.Tensor) -> Tuple[int, int, int]:
    return z.shape[0], z.shape[1], z.shape[2] * z.shape[3]


def _f32(z: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float32, device=z.device)


def _nb(hw: int) -> int:
    return triton.cdiv(hw, _BHW)


def channel_pool(z: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """(mean, max) over H×W of x: two (N, C) float32 tensors."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    avg, mx = _f32(z, n, c), _f32(z, n, c)
    a, b = _small(a), _small(b)
    _channel_pool_kernel[(n, triton.cdiv(c, _BC))](
        z, a, b, avg, mx, c, hw, *st, HAS_AFFINE=a is not None, BC=_BC, BHW=_BHW
    )
    return [avg, mx]


def channel_moments(z: torch.Tensor, shift: torch.Tensor) -> List[torch.Tensor]:
    """Per (n, c): Σ(z − k), Σ(z − k)² (returned as float64), max z, min z; k = ``shift``."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    out = [_f32(z, n, c) for _ in range(4)]
    _channel_moments_kernel[(n, triton.cdiv(c, _BC))](z, _small(shift), *out, c, hw, *st, BC=_BC, BHW=_BHW)
    return [out[0].double(), out[1].double(), out[2], out[3]]


def spatial_pool(z: torch.Tensor, a, b, gc: torch.Tensor) -> List[torch.Tensor]:
    """(mean, max) over C of x·g_c: two (N, HW) float32 tensors."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    avg, mx = _f32(z, n, hw), _f32(z, n, hw)
    a, b = _small(a), _small(b)
    _spatial_pool_kernel[(n, _nb(hw))](
        z, a, b, _small(gc), avg, mx, c, hw, *st, HAS_AFFINE=a is not None, BC=_BC, BHW=_BHW
    )
    return [avg, mx]


def apply_gates(z: torch.Tensor, a, b, gc: torch.Tensor, gs: Optional[torch.Tensor], out=None) -> torch.Tensor:
    """y = x·g_c·g_s (g_s None: SE) in z's dtype; written into ``out`` when given (may be z)."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    y = torch.empty_like(z) if out is None else out
    _, ost = _layout(y)
    a, b = _small(a), _small(b)
    _apply_gates_kernel[(n, triton.cdiv(c, _BC), _nb(hw))](
        z, a, b, _small(gc), _small(gs), y, c, hw, *st, *ost,
        HAS_AFFINE=a is not None, HAS_GS=gs is not None, BC=_BC, BHW=_BHW,
    )  # fmt: skip
    return y


def gate_grads(dy: torch.Tensor, z: torch.Tensor, a, b, gc, gs=None, smax=None) -> List[Optional[torch.Tensor]]:
    """dg_c = Σ_hw dy·x·g_s (N, C); with g_s also dg_s = Σ_c dy·x·g_c and the number of
    channels where x·g_c equals the spatial max (N, HW each)."""
    z, st = _layout(z)
    dy = _like(dy, z)
    n, c, hw = _dims(z)
    nb = _nb(hw)
    part = _f32(z, n, nb, c)
    dgs = cnt = None
    if gs is not None:
        dgs, cnt = _f32(z, n, hw), _f32(z, n, hw)
    a, b = _small(a), _small(b)
    _gate_grads_kernel[(n, nb)](
        dy, z, a, b, _small(gc), _small(gs), _small(smax), part, dgs, cnt, c, hw, nb, *st,
        HAS_AFFINE=a is not None, HAS_GS=gs is not None, BC=_BC, BHW=_BHW,
    )  # fmt: skip
    return [part.sum(1), dgs, cnt]


def spatial_pool_grad(z, a, b, gc, smax, w_avg, w_max) -> torch.Tensor:
    """Σ_hw x·(w_avg + [x·g_c == s_max]·w_max), (N, C): g_c's gradient through the spatial pooling."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    out = _f32(z, n, c)
    a, b = _small(a), _small(b)
    _spatial_pool_grad_kernel[(n, triton.cdiv(c, _BC))](
        z, a, b, _small(gc), _small(smax), _small(w_avg), _small(w_max), out, c, hw, *st,
        HAS_AFFINE=a is not None, BC=_BC, BHW=_BHW,
    )  # fmt: skip
    return out


def input_grad(dy, z, a, b, gc, gs, smax, w_avg, w_max, d_avg, c_max, d_max, sums: bool, out=None) -> list:
    """dx = dy·g_c·g_s + g_c·(w_avg + [x·g_c == s_max]·w_max) + d_avg/HW + [x == c_max]·d_max/count,
    in z's dtype; with ``sums`` also Σdx and Σdx·z per (n, c) (float32). ``out`` may be z."""
    if sums and out is not None:
        raise ValueError('input_grad: out (writing dx over z) cannot be combined with sums')
    z, st = _layout(z)
    dy = _like(dy, z)
    n, c, hw = _dims(z)
    dx = torch.empty_like(z) if out is None else out
    s1 = s2 = None
    if sums:
        s1, s2 = _f32(z, n, c), _f32(z, n, c)
    a, b = _small(a), _small(b)
    _input_grad_kernel[(n, triton.cdiv(c, _BC))](
        dy, z, a, b, _small(gc), _small(gs), _small(smax), _small(w_avg), _small(w_max), _small(d_avg),
        _small(c_max), _small(d_max), dx, s1, s2, c, hw, *st,
        HAS_AFFINE=a is not None, HAS_GS=gs is not None, SPATIAL=smax is not None, HAS_CMAX=c_max is not None,
        SUMS=sums, BC=_BC, BHW=_BHW,
    )  # fmt: skip
    return [dx, s1, s2]


def affine_combine_(t: torch.Tensor, z: torch.Tensor, A, B, D) -> torch.Tensor:
    """In place: t = A[c]·t + B[c]·z + D[c] (a BatchNorm backward once its sums are known)."""
    z, st = _layout(z)
    if t.stride() != z.stride():
        raise ValueError('affine_combine_: t and z must share one memory layout')
    n, c, hw = _dims(z)
    _affine_combine_kernel[(n, triton.cdiv(c, _BC), _nb(hw))](
        t, z, _small(A), _small(B), _small(D), c, hw, *st, BC=_BC, BHW=_BHW
    )
    return t


def bam_apply(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool, residual: bool, out=None):
    """BAM: y = x ⊗ (r + σ(t)), t = c[n, c] + s[n, hw] (product: c·s), r = 1 if residual; into ``out``."""
    x, st = _layout(x)
    n, ch, hw = _dims(x)
    y = torch.empty_like(x) if out is None else out
    _, ost = _layout(y)
    _bam_apply_kernel[(n, triton.cdiv(ch, _BC), _nb(hw))](
        x, _small(c), _small(s), y, ch, hw, *st, *ost, PRODUCT=product, RESIDUAL=residual, BC=_BC, BHW=_BHW
    )
    return y


def bam_grads(dy: torch.Tensor, x: torch.Tensor, c, s, product: bool, residual: bool) -> List[torch.Tensor]:
    """BAM backward: dx = dy ⊗ (r + σ(t)), dc = Σ_hw g·∂t/∂c (N, C), ds = Σ_c g·∂t/∂s (N, HW),
    g = dy·x·σ'(t)."""
    x, st = _layout(x)
    dy = _like(dy, x)
    n, ch, hw = _dims(x)
    nb = _nb(hw)
    dx, part, ds = torch.empty_like(x), _f32(x, n, nb, ch), _f32(x, n, hw)
    _bam_grads_kernel[(n, nb)](
        dy, x, _small(c), _small(s), dx, part, ds, ch, hw, nb, *st, PRODUCT=product, RESIDUAL=residual,
        BC=_BC, BHW=_BHW,
    )  # fmt: skip
    return [dx, part.sum(1), ds]
