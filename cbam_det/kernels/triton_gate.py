"""Triton kernels for gated attention: CBAM (Woo et al., ECCV 2018, eq. 1-3), SE (Hu et al.,
CVPR 2018) and BAM's gate (Park et al., BMVC 2018, eq. 1-2: y = x ⊗ (r + σ(Mc + Ms))).

Every kernel makes one pass over its full-size (N, C, H, W) operands; ``x = a[c]·z + b[c]`` is
the input itself (a, b None) or a BatchNorm's output recomputed from its input z. A training
step of CBAM reads or writes the full-size tensors 10 times (forward: channel pool, spatial
pool, apply = 4; backward: gate gradients = 2, spatial-pool gradient = 1, input gradient = 3,
the BatchNorm's backward folded into it), SE 7 times (3 + 2 + 2); :mod:`.triton_attend` is
the autograd that drives them.

Launches fill the GPU: a reduction with few outputs per program is split over pixel blocks (or
channel blocks) until the grid has at least ``4 ×`` the device's SMs, where the tensor has that
many tiles; the partial results are added in a fixed order by a second stage (a PyTorch sum
over the split axis): deterministic, no atomics. Tiles are up to 1024 elements, 64 along the
contiguous axis (H×W for NCHW, C for channels-last), at 4 warps (8 elements per thread and
tensor; the NCHW reductions over H×W at 8, faster there on an H200: ``OVER_HW_WARPS``); the
reductions over C, which write per-channel partial sums per pixel block, take 2048-element
tiles long in pixels at 8 warps (16 for the one that also forms a folded BN's sums), so that
their partial-sum buffers stay at 1/64 of an activation or less. Every kernel stays under 128
registers per thread with triton 3.1 to 3.7 (the compile test checks).

- full-size tensors: float32, float16 or bfloat16, NCHW or channels-last (any other layout,
  and any view with gaps, is made contiguous first), any C, H, W ≥ 1;
- small tensors (gates, pooled maps, their gradients, partials): float32, contiguous;
- arithmetic in float32; max-pool gradients shared evenly between tied maxima, as ``amax``.

On CUDA tensors the kernels are compiled by Triton; on CPU tensors they run in Triton's
interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how CI tests them.
Three things keep the compiled kernels equal to the interpreter where the interpreter cannot
show a difference:

- every kernel is compiled with ``enable_fp_fusion=False``: x = z·a + b and x·g_c are a
  rounded multiply and a rounded add in every kernel (never a fused multiply-add, which the
  interpreter never forms), so a value recomputed in one kernel equals the same value
  recomputed in another bit for bit, and the tie masks of the max-pool gradients
  (``x·g_c == s_max``, ``x == c_max``) find exactly the maxima the pools found;
- maxima and minima propagate NaN (``propagate_nan=ALL``), as ``torch.amax`` and the
  interpreter's numpy do; a GPU's ``max`` ignores NaN by default;
- every launch runs under its tensors' device (``torch.cuda.device``): Triton launches on the
  current device, which need not be the tensor's.

Every launch goes through :func:`_launch`. A launch that fails to compile or to start, where
the caller allows it (:func:`.policy.fallback`: the ``auto`` backend), computes that call with the
function's PyTorch twin (:mod:`.triton_fallback`), warns once naming the kernel and its
specialization, and sends that specialization to the twin from then on; without it (the
``triton`` backend named explicitly) the failure raises :class:`TritonLaunchError`.
:func:`observe` is the one seam for tools that watch launches (the kernel census).
"""

import contextlib
import functools
import warnings
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from .. import config
from . import triton_fallback
from .policy import fallback, fallback_enabled

__all__ = [
    'channel_pool',
    'channel_moments',
    'affine_extreme',
    'spatial_pool',
    'apply_gates',
    'gate_grads',
    'se_grads',
    'spatial_pool_grad',
    'input_grad',
    'bam_apply',
    'bam_grads',
    'sm_count',
    'specialization',
    'fallback',
    'fallback_enabled',
    'observe',
    'TritonLaunchError',
    'INTERPRETED',
    'DEFAULT_SMS',
]

#: the kernels were defined under Triton's interpreter (they then run on CPU tensors)
INTERPRETED = config.triton_interpreted()
#: the pools also give Σ_hw (z − μ) of a folded BN, kept for backward (:mod:`.fused` asks)
CENTERED_SUMS = True
#: the C++ kernels' one-call inference of a whole module; the Triton kernels have none
gated_infer = None
#: streaming multiprocessors assumed where there is no CUDA device (an H200)
DEFAULT_SMS = 132
WAVES = 4  # split reductions until the grid has WAVES × SMs programs (where the tensor allows)
TILE = 1024  # elements per tile
WARPS = 4
#: warps of the split reductions over H×W (per (n, c) outputs); None: 8 for NCHW, where the
#: tile's 1024 elements lie along H×W, and WARPS for channels-last. Measured on an H200 (bf16,
#: kernel alone): NCHW stage 1 channel pool 36.6 → 22.7 µs and SE's gradient 46.2 → 35.0 µs at
#: 8 warps, channels-last stage 4 slower (6.6 → 8.7 µs); tools/analysis/kernel_bandwidth.py
#: ``--over-hw-warps`` sets an int here to measure others side by side
OVER_HW_WARPS: Optional[int] = None


# ---------------------------------------------------------------- shared pieces


@triton.jit
def _sigmoid(t):
    """1 / (1 + e^−t): exact limits in float32 (e^−t = inf gives 0), one exp and one division."""
    return 1.0 / (1.0 + tl.exp(-t))


@triton.jit
def _nanmax(a, b):
    """max(a, b), NaN if either is NaN (as torch.amax)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _nanmin(a, b):
    """min(a, b), NaN if either is NaN (as torch.amin)."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _per_c(ptr, c, cmask):
    """A per-channel float32 vector as a [BC, 1] column."""
    return tl.load(ptr + c, mask=cmask, other=0.0)[:, None]


@triton.jit
def _per_hw(ptr, hw, hmask):
    """A per-pixel float32 vector as a [1, BHW] row."""
    return tl.load(ptr + hw, mask=hmask, other=0.0)[None, :]


@triton.jit
def _hw_tile(h0, hi, c, cmask, sc, shw, BHW: tl.constexpr):
    """Pixels h0 .. h0 + BHW (below hi) of the channels c: (hw, hmask, tile mask, offsets in the image)."""
    hw = h0 + tl.arange(0, BHW)
    hmask = hw < hi
    return hw, hmask, cmask[:, None] & hmask[None, :], c[:, None] * sc + hw[None, :] * shw


@triton.jit
def _c_tile(c0, hi, hw, hmask, sc, shw, BC: tl.constexpr):
    """Channels c0 .. c0 + BC (below hi) of the pixels hw: (c, cmask, tile mask, offsets in the image)."""
    c = c0 + tl.arange(0, BC)
    cmask = c < hi
    return c, cmask, cmask[:, None] & hmask[None, :], c[:, None] * sc + hw[None, :] * shw


# ---------------------------------------------------------------- reductions over H×W (per n, c)
# grid (splits, channel blocks, N); program s reduces pixels [s·L, (s+1)·L) of BC channels and
# writes its partial at [n, s, c] of an (N, S, C) buffer.


@triton.jit
def _channel_pool_kernel(
    z_ptr, a_ptr, b_ptr, mu_ptr, sum_ptr, max_ptr, zsum_ptr, C, HW, L, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, CENTERED: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """Σ and max over pixels of x (CENTERED: also Σ (z − μ), for a folded BN's backward)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    zb = z_ptr + n.to(tl.int64) * sn
    if HAS_AFFINE:
        a, b = _per_c(a_ptr, c, cmask), _per_c(b_ptr, c, cmask)
    if CENTERED:
        mu = _per_c(mu_ptr, c, cmask)
    acc = tl.zeros([BC, BHW], dtype=tl.float32)
    mx = tl.full([BC, BHW], float('-inf'), dtype=tl.float32)
    zs = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, HW)
    for h0 in range(lo, hi, BHW):
        hw, hmask, mask, off = _hw_tile(h0, hi, c, cmask, sc, shw, BHW)
        z = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        x = z * a + b if HAS_AFFINE else z
        acc += tl.where(mask, x, 0.0)
        mx = _nanmax(mx, tl.where(mask, x, float('-inf')))
        if CENTERED:
            zs += tl.where(mask, z - mu, 0.0)
    out = (n * tl.num_programs(0) + s) * C + c
    tl.store(sum_ptr + out, tl.sum(acc, 1), mask=cmask)
    tl.store(max_ptr + out, tl.reduce(mx, 1, _nanmax), mask=cmask)
    if CENTERED:
        tl.store(zsum_ptr + out, tl.sum(zs, 1), mask=cmask)


@triton.jit
def _channel_moments_kernel(
    z_ptr, shift_ptr, s1_ptr, s2_ptr, zmax_ptr, zmin_ptr, C, HW, L, sn, sc, shw,
    BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """Σ(z − k), Σ(z − k)², max z, min z over pixels (k: a per-channel shift)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    zb = z_ptr + n.to(tl.int64) * sn
    k = _per_c(shift_ptr, c, cmask)
    s1 = tl.zeros([BC, BHW], dtype=tl.float32)
    s2 = tl.zeros([BC, BHW], dtype=tl.float32)
    mx = tl.full([BC, BHW], float('-inf'), dtype=tl.float32)
    mn = tl.full([BC, BHW], float('inf'), dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, HW)
    for h0 in range(lo, hi, BHW):
        hw, hmask, mask, off = _hw_tile(h0, hi, c, cmask, sc, shw, BHW)
        z = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, z - k, 0.0)
        s1 += d
        s2 += d * d
        mx = _nanmax(mx, tl.where(mask, z, float('-inf')))
        mn = _nanmin(mn, tl.where(mask, z, float('inf')))
    out = (n * tl.num_programs(0) + s) * C + c
    tl.store(s1_ptr + out, tl.sum(s1, 1), mask=cmask)
    tl.store(s2_ptr + out, tl.sum(s2, 1), mask=cmask)
    tl.store(zmax_ptr + out, tl.reduce(mx, 1, _nanmax), mask=cmask)
    tl.store(zmin_ptr + out, tl.reduce(mn, 1, _nanmin), mask=cmask)


@triton.jit
def _se_grads_kernel(
    dy_ptr, z_ptr, a_ptr, b_ptr, mu_ptr, o1_ptr, o2_ptr, C, HW, L, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """SE's gate gradient Σ dy·x; with BN_SUMS instead Σ dy and Σ dy·(z − μ)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    base = n.to(tl.int64) * sn
    if HAS_AFFINE:
        a, b = _per_c(a_ptr, c, cmask), _per_c(b_ptr, c, cmask)
    if BN_SUMS:
        mu = _per_c(mu_ptr, c, cmask)
    t1 = tl.zeros([BC, BHW], dtype=tl.float32)
    t2 = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, HW)
    for h0 in range(lo, hi, BHW):
        hw, hmask, mask, off = _hw_tile(h0, hi, c, cmask, sc, shw, BHW)
        off += base
        z = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        if BN_SUMS:
            t1 += dy
            t2 += dy * tl.where(mask, z - mu, 0.0)
        else:
            x = z * a + b if HAS_AFFINE else z
            t1 += dy * x
    out = (n * tl.num_programs(0) + s) * C + c
    tl.store(o1_ptr + out, tl.sum(t1, 1), mask=cmask)
    if BN_SUMS:
        tl.store(o2_ptr + out, tl.sum(t2, 1), mask=cmask)


@triton.jit
def _spatial_pool_grad_kernel(
    z_ptr, a_ptr, b_ptr, gc_ptr, smax_ptr, wa_ptr, wm_ptr, cmax_ptr, mu_ptr,
    o1_ptr, o2_ptr, o3_ptr, o4_ptr, C, HW, L, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """g_c's gradient through the spatial pooling, Σ x·w with w = w_avg + [x·g_c = s_max]·w_max,
    and the ties of the channel max, Σ [x = c_max]. With BN_SUMS instead of Σ x·w: Σ w,
    Σ w·(z − μ), the ties and Σ [x = c_max]·(z − μ) (the BN backward's sums)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    zb = z_ptr + n.to(tl.int64) * sn
    if HAS_AFFINE:
        a, b = _per_c(a_ptr, c, cmask), _per_c(b_ptr, c, cmask)
    g = _per_c(gc_ptr + n * C, c, cmask)
    cm = _per_c(cmax_ptr + n * C, c, cmask)
    if BN_SUMS:
        mu = _per_c(mu_ptr, c, cmask)
    t1 = tl.zeros([BC, BHW], dtype=tl.float32)
    t2 = tl.zeros([BC, BHW], dtype=tl.float32)
    ties = tl.zeros([BC, BHW], dtype=tl.float32)
    t4 = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, HW)
    for h0 in range(lo, hi, BHW):
        hw, hmask, mask, off = _hw_tile(h0, hi, c, cmask, sc, shw, BHW)
        z = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        x = z * a + b if HAS_AFFINE else z
        m = _per_hw(smax_ptr + n * HW, hw, hmask)
        w = _per_hw(wa_ptr + n * HW, hw, hmask) + tl.where(x * g == m, _per_hw(wm_ptr + n * HW, hw, hmask), 0.0)
        w = tl.where(mask, w, 0.0)
        tie = mask & (x == cm)
        ties += tl.where(tie, 1.0, 0.0)
        if BN_SUMS:
            zc = z - mu
            t1 += w
            t2 += w * zc
            t4 += tl.where(tie, zc, 0.0)
        else:
            t1 += x * w
    out = (n * tl.num_programs(0) + s) * C + c
    tl.store(o1_ptr + out, tl.sum(t1, 1), mask=cmask)
    tl.store(o3_ptr + out, tl.sum(ties, 1), mask=cmask)
    if BN_SUMS:
        tl.store(o2_ptr + out, tl.sum(t2, 1), mask=cmask)
        tl.store(o4_ptr + out, tl.sum(t4, 1), mask=cmask)


# ---------------------------------------------------------------- reductions over C (per n, pixel)
# grid (pixel blocks, splits, N); program s reduces channels [s·L, (s+1)·L) of BHW pixels and
# writes its partial at [n, s, hw] of an (N, S, HW) buffer.


@triton.jit
def _spatial_pool_kernel(
    z_ptr, a_ptr, b_ptr, gc_ptr, sum_ptr, max_ptr, C, HW, L, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """Σ and max over channels of x·g_c."""
    hb, s, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    zb = z_ptr + n.to(tl.int64) * sn
    acc = tl.zeros([BC, BHW], dtype=tl.float32)
    mx = tl.full([BC, BHW], float('-inf'), dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, C)
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = _c_tile(c0, hi, hw, hmask, sc, shw, BC)
        x = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_AFFINE:
            x = x * _per_c(a_ptr, c, cmask) + _per_c(b_ptr, c, cmask)
        xg = x * _per_c(gc_ptr + n * C, c, cmask)
        acc += tl.where(mask, xg, 0.0)
        mx = _nanmax(mx, tl.where(mask, xg, float('-inf')))
    out = (n * tl.num_programs(1) + s) * HW + hw
    tl.store(sum_ptr + out, tl.sum(acc, 0), mask=hmask)
    tl.store(max_ptr + out, tl.reduce(mx, 0, _nanmax), mask=hmask)


@triton.jit
def _gate_grads_kernel(
    dy_ptr, z_ptr, a_ptr, b_ptr, gc_ptr, gs_ptr, smax_ptr, mu_ptr, p1_ptr, p2_ptr, dgs_ptr, cnt_ptr,
    C, HW, L, NB, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """CBAM's gate gradients in one pass over (dy, x), u = dy·g_s:
    per pixel block and channel Σ u·x (with BN_SUMS instead Σ u and Σ u·(z − μ)) into an
    (N, NB, C) buffer; per pixel Σ_c dy·x·g_c and Σ_c [x·g_c = s_max] (the spatial max's ties)."""
    hb, s, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    base = n.to(tl.int64) * sn
    gs = _per_hw(gs_ptr + n * HW, hw, hmask)
    m = _per_hw(smax_ptr + n * HW, hw, hmask)
    ds = tl.zeros([BC, BHW], dtype=tl.float32)
    cnt = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, C)
    part = (n * NB + hb) * C
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = _c_tile(c0, hi, hw, hmask, sc, shw, BC)
        off += base
        z = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        x = z * _per_c(a_ptr, c, cmask) + _per_c(b_ptr, c, cmask) if HAS_AFFINE else z
        g = _per_c(gc_ptr + n * C, c, cmask)
        u = dy * gs
        if BN_SUMS:
            zc = tl.where(mask, z - _per_c(mu_ptr, c, cmask), 0.0)
            tl.store(p1_ptr + part + c, tl.sum(u, 1), mask=cmask)
            tl.store(p2_ptr + part + c, tl.sum(u * zc, 1), mask=cmask)
        else:
            tl.store(p1_ptr + part + c, tl.sum(u * x, 1), mask=cmask)
        ds += dy * x * g
        cnt += tl.where(mask & (x * g == m), 1.0, 0.0)
    out = (n * tl.num_programs(1) + s) * HW + hw
    tl.store(dgs_ptr + out, tl.sum(ds, 0), mask=hmask)
    tl.store(cnt_ptr + out, tl.sum(cnt, 0), mask=hmask)


@triton.jit
def _bam_grads_kernel(
    dy_ptr, x_ptr, c_ptr, s_ptr, dx_ptr, part_ptr, ds_ptr, C, HW, L, NB, sn, sc, shw,
    PRODUCT: tl.constexpr, RESIDUAL: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """BAM backward in one pass: dx, per pixel block and channel Σ g·∂t/∂c, per pixel Σ_c g·∂t/∂s."""
    hb, sp, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    base = n.to(tl.int64) * sn
    sv = _per_hw(s_ptr + n * HW, hw, hmask)
    acc = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = sp * L
    hi = tl.minimum(lo + L, C)
    part = (n * NB + hb) * C
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = _c_tile(c0, hi, hw, hmask, sc, shw, BC)
        off += base
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        cv = _per_c(c_ptr + n * C, c, cmask)
        m = _sigmoid(cv * sv if PRODUCT else cv + sv)
        tl.store(dx_ptr + off, (dy * (m + 1.0) if RESIDUAL else dy * m).to(dx_ptr.dtype.element_ty), mask=mask)
        gt = tl.where(mask, dy * x * m * (1.0 - m), 0.0)
        if PRODUCT:
            tl.store(part_ptr + part + c, tl.sum(gt * sv, 1), mask=cmask)
            acc += gt * cv
        else:
            tl.store(part_ptr + part + c, tl.sum(gt, 1), mask=cmask)
            acc += gt
    tl.store(ds_ptr + (n * tl.num_programs(1) + sp) * HW + hw, tl.sum(acc, 0), mask=hmask)


# ---------------------------------------------------------------- elementwise
# grid (pixel blocks, channel blocks, N), one [BC, BHW] tile per program.


@triton.jit
def _apply_gates_kernel(
    z_ptr, a_ptr, b_ptr, gc_ptr, gs_ptr, out_ptr, C, HW, sn, sc, shw, on, oc, ohw,
    HAS_AFFINE: tl.constexpr, HAS_GS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """y = x·g_c (·g_s)."""
    hb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask, hmask = c < C, hw < HW
    mask = cmask[:, None] & hmask[None, :]
    x = tl.load(z_ptr + n.to(tl.int64) * sn + c[:, None] * sc + hw[None, :] * shw, mask=mask, other=0.0)
    x = x.to(tl.float32)
    if HAS_AFFINE:
        x = x * _per_c(a_ptr, c, cmask) + _per_c(b_ptr, c, cmask)
    y = x * _per_c(gc_ptr + n * C, c, cmask)
    if HAS_GS:
        y = y * _per_hw(gs_ptr + n * HW, hw, hmask)
    out = out_ptr + n.to(tl.int64) * on + c[:, None] * oc + hw[None, :] * ohw
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _input_grad_kernel(
    dy_ptr, z_ptr, a_ptr, b_ptr, gc_ptr, gs_ptr, smax_ptr, wa_ptr, wm_ptr, cmax_ptr,
    k1_ptr, k2_ptr, k0_ptr, bz_ptr, dx_ptr, C, HW, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, CBAM: tl.constexpr, HAS_BZ: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """dz = K1·(dy·g_s + w) + [x = c_max]·K2 + K0 (+ Bz·z), w = w_avg + [x·g_c = s_max]·w_max:
    CBAM's input gradient with the folded BN's backward (K*, Bz per (n, c) from the sums of the
    earlier passes). SE: dz = K1·dy + K0 (+ Bz·z), z read only for Bz."""
    hb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask, hmask = c < C, hw < HW
    mask = cmask[:, None] & hmask[None, :]
    off = n.to(tl.int64) * sn + c[:, None] * sc + hw[None, :] * shw
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    k1 = _per_c(k1_ptr + n * C, c, cmask)
    v = _per_c(k0_ptr + n * C, c, cmask)
    if CBAM or HAS_BZ:
        z = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if CBAM:
        x = z * _per_c(a_ptr, c, cmask) + _per_c(b_ptr, c, cmask) if HAS_AFFINE else z
        g = _per_c(gc_ptr + n * C, c, cmask)
        m = _per_hw(smax_ptr + n * HW, hw, hmask)
        w = _per_hw(wa_ptr + n * HW, hw, hmask) + tl.where(x * g == m, _per_hw(wm_ptr + n * HW, hw, hmask), 0.0)
        v += k1 * (dy * _per_hw(gs_ptr + n * HW, hw, hmask) + w)
        v += tl.where(x == _per_c(cmax_ptr + n * C, c, cmask), _per_c(k2_ptr + n * C, c, cmask), 0.0)
    else:
        v += k1 * dy
    if HAS_BZ:
        v += _per_c(bz_ptr, c, cmask) * z
    tl.store(dx_ptr + off, v.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bam_apply_kernel(
    x_ptr, c_ptr, s_ptr, out_ptr, C, HW, sn, sc, shw, on, oc, ohw,
    PRODUCT: tl.constexpr, RESIDUAL: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """y = x ⊗ (r + σ(c + s)) (PRODUCT: σ(c·s))."""
    hb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask, hmask = c < C, hw < HW
    mask = cmask[:, None] & hmask[None, :]
    x = tl.load(x_ptr + n.to(tl.int64) * sn + c[:, None] * sc + hw[None, :] * shw, mask=mask, other=0.0)
    cv, sv = _per_c(c_ptr + n * C, c, cmask), _per_hw(s_ptr + n * HW, hw, hmask)
    m = _sigmoid(cv * sv if PRODUCT else cv + sv)
    y = x.to(tl.float32) * (m + 1.0) if RESIDUAL else x.to(tl.float32) * m
    out = out_ptr + n.to(tl.int64) * on + c[:, None] * oc + hw[None, :] * ohw
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine_extreme_kernel(zmax_ptr, zmin_ptr, a_ptr, b_ptr, out_ptr, C, NC, BLOCK: tl.constexpr):
    """max over pixels of x = a·z + b from max z and min z, rounded as the other kernels round x."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < NC
    c = i % C
    a = tl.load(a_ptr + c, mask=mask, other=0.0)
    b = tl.load(b_ptr + c, mask=mask, other=0.0)
    z = tl.where(a >= 0, tl.load(zmax_ptr + i, mask=mask, other=0.0), tl.load(zmin_ptr + i, mask=mask, other=0.0))
    tl.store(out_ptr + i, z * a + b, mask=mask)


# ---------------------------------------------------------------- launch settings

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
_sms: dict = {}
#: the observer of :func:`observe` (None: launches run directly) and the SM count it fixes
_observer: List[Optional[Callable]] = [None]
_observed_sms: List[Optional[int]] = [None]
#: specializations that failed under fallback, keyed as :func:`specialization` (then their twin runs)
_failed: dict = {}


class TritonLaunchError(RuntimeError):
    """A Triton kernel failed to compile or to launch where no fallback was allowed (the
    ``triton`` backend named explicitly); the message names the kernel, its specialization
    and the cause."""


class _UseTwin(Exception):
    """Internal: this launch failed (or its specialization failed before); compute the call with
    the PyTorch twin."""


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


@functools.lru_cache(maxsize=None)
def _parameter_names(fn: Callable) -> Tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(fn).parameters)


def specialization(kernel, args: tuple, meta: dict, warps: int) -> List[list]:
    """What Triton's JIT specializes a launch on, as ``[name, kind, value]`` per parameter:
    tensors by dtype and 16-byte alignment, ints by value 1 and divisibility by 16 (the value is
    kept), None and constants by value; warps come with the key (:func:`_spec_key`)."""
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


def _spec_key(kernel, args: tuple, meta: dict, warps: int) -> tuple:
    """The compiled kernel a launch needs: ints count only as ==1 / divisible by 16, as in the JIT."""
    key = []
    for name, kind, value in specialization(kernel, args, meta, warps):
        if kind == 'int':
            value = '1' if value == 1 else '16k' if value % 16 == 0 else 'int'
        key.append((name, kind, repr(value)))
    return (getattr(kernel, 'fn', kernel).__name__, warps, tuple(key))


def _describe_key(key: tuple) -> str:
    name, warps, params = key
    parts = [f'{n}={v}' for n, kind, v in params if kind in ('const', 'ptr') and v != 'None']
    return f'{name}[{", ".join(parts)}, num_warps={warps}]'


def _device_of(args: tuple) -> Optional[torch.device]:
    return next((a.device for a in args if isinstance(a, torch.Tensor)), None)


def _on(device: Optional[torch.device]):
    """``torch.cuda.device(device)`` for a CUDA device (Triton launches on the current one),
    nothing otherwise."""
    if device is not None and device.type == 'cuda':
        return torch.cuda.device(device)
    return contextlib.nullcontext()


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


def _cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ in plain Python (``triton.cdiv`` is a JIT function: microseconds per call on the host)."""
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two ≥ n (n ≥ 1), in plain Python like :func:`_cdiv`."""
    return 1 << (n - 1).bit_length()


class _Tiles(NamedTuple):
    """Tile of a full-size tensor: BC channels × BHW pixels, the long side on the contiguous axis."""

    bc: int
    bhw: int


def _tiles(strides: Tuple[int, int, int], c: int, hw: int, per_pixel: bool = False) -> _Tiles:
    """Up to 64 elements along the contiguous axis, the rest of TILE along the other, neither
    longer than its (power-of-two rounded) extent. ``per_pixel`` (reductions over C, whose
    per-channel partial sums are written per pixel block): tiles of 2 × TILE elements (at twice
    the warps) that are long in pixels (NCHW: 256 pixels × 8 channels; channels-last: 16
    channels, one 32-byte sector of bf16, × 128 pixels), so the float32 partial-sum buffer is
    1/128 (1/64) of a bf16 activation."""
    pow2 = _pow2
    tile = 2 * TILE if per_pixel else TILE
    if strides[1] == 1:  # channels-last (or H = W = 1)
        bc = min(16 if per_pixel else 64, pow2(c))
        return _Tiles(bc, min(tile // bc, pow2(hw)))
    bhw = min(256 if per_pixel else 64, pow2(hw))
    return _Tiles(min(tile // bhw, pow2(c)), bhw)


def _splits(tiles: int, rows: int, target: int) -> Tuple[int, int]:
    """(S, tiles per split): a reduction over ``tiles`` tiles in each of ``rows`` independent
    rows, cut into S splits so that rows × S reaches ``target`` programs where it can. Rows
    that already give half the target (two programs per SM) are not split: a split costs a
    partial-sum buffer and a sum over it."""
    if 2 * rows >= target:
        return 1, tiles
    want = max(1, min(tiles, _cdiv(target, max(rows, 1))))
    per = _cdiv(tiles, want)
    return _cdiv(tiles, per), per


def _launch(kernel, grid: Tuple[int, ...], *args, warps: int = WARPS, **meta) -> None:
    """Launch ``kernel`` on ``grid`` under its tensors' device, without fp-fusion; a failure
    becomes a fallback to the PyTorch twin (raised as :class:`_UseTwin` for the launcher's
    wrapper) where :func:`fallback` allows it, else :class:`TritonLaunchError`."""
    device = _device_of(args)

    def run() -> None:
        with _on(device):
            kernel[grid](*args, num_warps=warps, enable_fp_fusion=False, **meta)

    observer = _observer[0]
    allowed = fallback_enabled()
    key = None
    if allowed and _failed:  # the key costs host time: formed only once some specialization failed
        key = _spec_key(kernel, args, meta, warps)
        if key in _failed:
            raise _UseTwin(key)
    try:
        if observer is None:
            run()
        else:
            observer(kernel, grid, args, meta, warps, run)
    except Exception as e:  # noqa: BLE001 - a compile or launch failure of this specialization
        if key is None:
            key = _spec_key(kernel, args, meta, warps)
        what = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ""}'
        if not allowed:
            raise TritonLaunchError(
                f'cbam_det: Triton kernel {_describe_key(key)} failed to compile or launch ({what}); the triton '
                f'backend was named explicitly (set_backend/use_backend or CBAM_DET_BACKEND), so there is no '
                f'fallback. Backend auto computes such calls with PyTorch.'
            ) from e
        _failed[key] = what
        warnings.warn(
            f'cbam_det: Triton kernel {_describe_key(key)} failed to compile or launch ({what}); backend auto '
            f'computes this call, and every later one of this specialization, with PyTorch. '
            f'CBAM_DET_BACKEND=torch silences this.',
            stacklevel=4,
        )
        raise _UseTwin(key) from e


def _falls_back(launcher: Callable) -> Callable:
    """``launcher``, computed by its PyTorch twin of the same name (:mod:`.triton_fallback`)
    when one of its launches fails where :func:`.policy.fallback` allows it."""
    twin = getattr(triton_fallback, launcher.__name__)

    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        try:
            return launcher(*args, **kwargs)
        except _UseTwin:
            return twin(*args, **kwargs)

    wrapper.twin = twin
    return wrapper


def _layout(t: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """``t`` and its (n, c, hw) strides; made contiguous unless it is dense (no gaps: the
    launchers allocate outputs with ``empty_like``, which copies the strides of dense tensors
    only) with H and W merging into one index (NCHW, channels-last). Empty tensors are refused."""
    if t.dtype not in _DTYPES:
        raise TypeError(f'triton kernels: dtype must be one of {_DTYPES}, got {t.dtype}')
    if t.dim() != 4:
        raise ValueError(f'triton kernels: expected an (N, C, H, W) tensor, got shape {tuple(t.shape)}')
    if t.numel() == 0:
        raise ValueError(f'triton kernels: the tensor of shape {tuple(t.shape)} is empty; N, C, H and W must be >= 1')
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        t = t.contiguous()
    sn, sc, sh, sw = t.stride()
    return t, (sn, sc, sw if t.shape[3] > 1 else (sh if t.shape[2] > 1 else 1))


def _out_like(out: Optional[torch.Tensor], z: torch.Tensor, same_strides: bool) -> torch.Tensor:
    """A new tensor laid out as ``z``, or ``out`` when it has ``z``'s shape, dtype and device and
    is dense (``same_strides``: z's strides too, for kernels that write it with z's offsets)."""
    if out is None:
        return torch.empty_like(z)
    dense = out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last)
    if (
        out.shape != z.shape
        or out.dtype != z.dtype
        or out.device != z.device
        or not dense
        or (same_strides and out.stride() != z.stride())
    ):
        want = f'strides {z.stride()}' if same_strides else 'NCHW- or channels-last-contiguous'
        raise ValueError(
            f"triton kernels: out must have the input's shape {tuple(z.shape)}, dtype {z.dtype} and device "
            f'{z.device} and be {want}; got shape {tuple(out.shape)}, {out.dtype}, {out.device}, strides {out.stride()}'
        )
    return out


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


def _total(part: torch.Tensor, double: bool = False) -> torch.Tensor:
    """The (N, S, ·) float32 partials added over S in a fixed order, in one read of them
    (``double``: the float32 totals as float64, for the caller's float64 arithmetic)."""
    total = part[:, 0] if part.shape[1] == 1 else part.sum(1)
    return total.double() if double else total


class _Plan(NamedTuple):
    """A split reduction: its tiles, its grid, the pixels (over H×W) or channels (over C) per
    split, and the warps that give each thread 8 elements of a tile."""

    tiles: _Tiles
    grid: Tuple[int, int, int]
    length: int
    warps: int


def _plan(z: torch.Tensor, st, over_hw: bool) -> _Plan:
    """Over H×W (per (n, c) outputs): grid (S, channel blocks, N); over C (per pixel outputs):
    grid (pixel blocks, S, N); S from :func:`_splits` for ``WAVES`` × the device's SMs."""
    n, c, hw = _dims(z)
    t = _tiles(st, c, hw, per_pixel=not over_hw)
    cb, nb = _cdiv(c, t.bc), _cdiv(hw, t.bhw)
    target = WAVES * sm_count(z.device)
    if over_hw:
        s, per = _splits(nb, n * cb, target)
        warps = OVER_HW_WARPS or (WARPS if st[1] == 1 else 2 * WARPS)
        return _Plan(t, (s, cb, n), per * t.bhw, warps)
    s, per = _splits(cb, n * nb, target)
    return _Plan(t, (nb, s, n), per * t.bc, max(WARPS, t.bc * t.bhw // (32 * 8)))


def _tile_grid(z: torch.Tensor, st) -> Tuple[_Tiles, Tuple[int, int, int]]:
    n, c, hw = _dims(z)
    t = _tiles(st, c, hw)
    return t, (_cdiv(hw, t.bhw), _cdiv(c, t.bc), n)


# ---------------------------------------------------------------- launchers


@_falls_back
def channel_pool(z: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor], mu=None) -> List[torch.Tensor]:
    """(mean, max) over H×W of x: two (N, C) float32 tensors; with ``mu`` (a folded BN's mean)
    also Σ_hw (z − μ) (float64)."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    p = _plan(z, st, over_hw=True)
    s = p.grid[0]
    psum, pmax = _f32(z, n, s, c), _f32(z, n, s, c)
    zsum = _f32(z, n, s, c) if mu is not None else None
    a, b = _small(a), _small(b)
    _launch(
        _channel_pool_kernel, p.grid, z, a, b, _small(mu), psum, pmax, zsum, c, hw, p.length, *st,
        HAS_AFFINE=a is not None, CENTERED=mu is not None, BC=p.tiles.bc, BHW=p.tiles.bhw, warps=p.warps,
    )  # fmt: skip
    out = [_total(psum) / hw, pmax[:, 0] if s == 1 else pmax.amax(1)]
    return out if mu is None else out + [_total(zsum, True)]


@_falls_back
def channel_moments(z: torch.Tensor, shift: torch.Tensor) -> List[torch.Tensor]:
    """Per (n, c): Σ(z − k), Σ(z − k)² (float64), max z, min z; k = ``shift``."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    p = _plan(z, st, over_hw=True)
    s = p.grid[0]
    out = [_f32(z, n, s, c) for _ in range(4)]
    _launch(
        _channel_moments_kernel, p.grid, z, _small(shift), *out, c, hw, p.length, *st,
        BC=p.tiles.bc, BHW=p.tiles.bhw, warps=p.warps,
    )  # fmt: skip
    s1, s2, zmax, zmin = out
    if s > 1:
        zmax, zmin = zmax.amax(1), zmin.amin(1)
    else:
        zmax, zmin = zmax[:, 0], zmin[:, 0]
    return [_total(s1, True), _total(s2, True), zmax, zmin]


@_falls_back
def affine_extreme(zmax: torch.Tensor, zmin: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C) max over pixels of x = a·z + b from max z and min z, with the kernels' rounding of
    x (so that the tie masks of later passes find it)."""
    zmax, zmin = _small(zmax), _small(zmin)
    out = torch.empty_like(zmax)
    nc, block = zmax.numel(), 256
    _launch(
        _affine_extreme_kernel, (_cdiv(nc, block),), zmax, zmin, _small(a), _small(b), out, zmax.shape[1], nc,
        BLOCK=block,
    )  # fmt: skip
    return out


@_falls_back
def spatial_pool(z: torch.Tensor, a, b, gc: torch.Tensor) -> List[torch.Tensor]:
    """(mean, max) over C of x·g_c: two (N, HW) float32 tensors."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    p = _plan(z, st, over_hw=False)
    s = p.grid[1]
    psum, pmax = _f32(z, n, s, hw), _f32(z, n, s, hw)
    a, b = _small(a), _small(b)
    _launch(
        _spatial_pool_kernel, p.grid, z, a, b, _small(gc), psum, pmax, c, hw, p.length, *st,
        HAS_AFFINE=a is not None, BC=p.tiles.bc, BHW=p.tiles.bhw, warps=p.warps,
    )  # fmt: skip
    return [_total(psum) / c, pmax[:, 0] if s == 1 else pmax.amax(1)]


@_falls_back
def apply_gates(z: torch.Tensor, a, b, gc: torch.Tensor, gs: Optional[torch.Tensor], out=None) -> torch.Tensor:
    """y = x·g_c·g_s (g_s None: SE) in z's dtype; written into ``out`` when given (may be z)."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    y = _out_like(out, z, same_strides=False)
    _, ost = _layout(y)
    t, grid = _tile_grid(z, st)
    a, b = _small(a), _small(b)
    _launch(
        _apply_gates_kernel, grid, z, a, b, _small(gc), _small(gs), y, c, hw, *st, *ost,
        HAS_AFFINE=a is not None, HAS_GS=gs is not None, BC=t.bc, BHW=t.bhw,
    )  # fmt: skip
    return y


@_falls_back
def gate_grads(dy: torch.Tensor, z: torch.Tensor, a, b, gc, gs, smax, mu=None) -> List[torch.Tensor]:
    """CBAM's gate gradients, one pass over (dy, x), u = dy·g_s: [Σ_hw u·x (N, C),
    Σ_c dy·x·g_c (N, HW), Σ_c [x·g_c = s_max] (N, HW)]; with ``mu`` (a folded BN's mean) the
    first is replaced by Σ_hw u and Σ_hw u·(z − μ) (float64)."""
    z, st = _layout(z)
    dy = _like(dy, z)
    n, c, hw = _dims(z)
    p = _plan(z, st, over_hw=False)
    nb, s = p.grid[0], p.grid[1]
    p1 = _f32(z, n, nb, c)
    p2 = _f32(z, n, nb, c) if mu is not None else None
    dgs, cnt = _f32(z, n, s, hw), _f32(z, n, s, hw)
    a, b = _small(a), _small(b)
    _launch(
        _gate_grads_kernel,
        p.grid,
        dy,
        z,
        a,
        b,
        _small(gc),
        _small(gs),
        _small(smax),
        _small(mu),
        p1,
        p2,
        dgs,
        cnt,
        c,
        hw,
        p.length,
        nb,
        *st,
        warps=2 * p.warps if mu is not None else p.warps,
        HAS_AFFINE=a is not None,
        BN_SUMS=mu is not None,
        BC=p.tiles.bc,
        BHW=p.tiles.bhw,
    )  # fmt: skip  (with BN_SUMS: twice the warps, for triton 3.1's register allocation)
    sums = [_total(p1)] if mu is None else [_total(p1, True), _total(p2, True)]
    return sums + [_total(dgs), _total(cnt)]


@_falls_back
def se_grads(dy: torch.Tensor, z: torch.Tensor, a, b, mu=None) -> List[torch.Tensor]:
    """SE's gate gradient Σ_hw dy·x (N, C); with ``mu`` instead Σ dy and Σ dy·(z − μ)
    (float64), from which the caller forms it and the folded BN's backward."""
    z, st = _layout(z)
    dy = _like(dy, z)
    n, c, hw = _dims(z)
    p = _plan(z, st, over_hw=True)
    k = 2 if mu is not None else 1
    out = [_f32(z, n, p.grid[0], c) for _ in range(k)] + [None] * (2 - k)
    a, b = _small(a), _small(b)
    _launch(
        _se_grads_kernel, p.grid, dy, z, a, b, _small(mu), *out, c, hw, p.length, *st,
        HAS_AFFINE=a is not None, BN_SUMS=mu is not None, BC=p.tiles.bc, BHW=p.tiles.bhw, warps=p.warps,
    )  # fmt: skip
    return [_total(t, mu is not None) for t in out[:k]]


@_falls_back
def spatial_pool_grad(z, a, b, gc, smax, w_avg, w_max, cmax, mu=None) -> List[torch.Tensor]:
    """[Σ_hw x·w (N, C), Σ_hw [x = c_max] (N, C)] with w = w_avg + [x·g_c = s_max]·w_max; with
    ``mu`` [Σ w, Σ w·(z − μ), Σ [x = c_max], Σ [x = c_max]·(z − μ)] (float64 but the count)."""
    z, st = _layout(z)
    n, c, hw = _dims(z)
    p = _plan(z, st, over_hw=True)
    k = 4 if mu is not None else 2
    out = [_f32(z, n, p.grid[0], c) for _ in range(k)]
    if mu is None:  # the kernel's outputs 1 and 3
        out = [out[0], None, out[1], None]
    a, b = _small(a), _small(b)
    _launch(
        _spatial_pool_grad_kernel,
        p.grid,
        z,
        a,
        b,
        _small(gc),
        _small(smax),
        _small(w_avg),
        _small(w_max),
        _small(cmax),
        _small(mu),
        *out,
        c,
        hw,
        p.length,
        *st,
        warps=2 * WARPS if mu is not None else WARPS,
        HAS_AFFINE=a is not None,
        BN_SUMS=mu is not None,
        BC=p.tiles.bc,
        BHW=p.tiles.bhw,
    )  # fmt: skip  (four accumulators with BN_SUMS: 8 warps keep them under 128 registers)
    if mu is None:
        return [_total(out[0]), _total(out[2])]
    return [_total(t, i != 2) for i, t in enumerate(out)]


@_falls_back
def input_grad(dy, z, a, b, gc, gs, smax, w_avg, w_max, cmax, k1, k2, k0, bz=None, out=None) -> torch.Tensor:
    """dz = K1·(dy·g_s + w) + [x = c_max]·K2 + K0 + Bz·z (w = w_avg + [x·g_c = s_max]·w_max;
    ``smax`` None: SE, dz = K1·dy + K0 + Bz·z), in z's dtype; K* (N, C), Bz (C,) or None.
    ``out`` may be z (each element is read before it is written)."""
    z, st = _layout(z)
    dy = _like(dy, z)
    n, c, hw = _dims(z)
    dx = _out_like(out, z, same_strides=True)
    t, grid = _tile_grid(z, st)
    a, b = _small(a), _small(b)
    _launch(
        _input_grad_kernel, grid, dy, z, a, b, _small(gc), _small(gs), _small(smax), _small(w_avg), _small(w_max),
        _small(cmax), _small(k1), _small(k2), _small(k0), _small(bz), dx, c, hw, *st,
        HAS_AFFINE=a is not None, CBAM=smax is not None, HAS_BZ=bz is not None, BC=t.bc, BHW=t.bhw,
    )  # fmt: skip
    return dx


@_falls_back
def bam_apply(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool, residual: bool, out=None):
    """BAM: y = x ⊗ (r + σ(t)), t = c[n, c] + s[n, hw] (product: c·s), r = 1 if residual; into ``out``."""
    x, st = _layout(x)
    n, ch, hw = _dims(x)
    y = _out_like(out, x, same_strides=False)
    _, ost = _layout(y)
    t, grid = _tile_grid(x, st)
    _launch(
        _bam_apply_kernel, grid, x, _small(c), _small(s), y, ch, hw, *st, *ost,
        PRODUCT=product, RESIDUAL=residual, BC=t.bc, BHW=t.bhw,
    )  # fmt: skip
    return y


@_falls_back
def bam_grads(dy: torch.Tensor, x: torch.Tensor, c, s, product: bool, residual: bool) -> List[torch.Tensor]:
    """BAM backward: dx = dy ⊗ (r + σ(t)), dc = Σ_hw g·∂t/∂c (N, C), ds = Σ_c g·∂t/∂s (N, HW),
    g = dy·x·σ'(t)."""
    x, st = _layout(x)
    dy = _like(dy, x)
    n, ch, hw = _dims(x)
    p = _plan(x, st, over_hw=False)
    nb, sp = p.grid[0], p.grid[1]
    dx, part, ds = torch.empty_like(x), _f32(x, n, nb, ch), _f32(x, n, sp, hw)
    _launch(
        _bam_grads_kernel, p.grid, dy, x, _small(c), _small(s), dx, part, ds, ch, hw, p.length, nb, *st,
        PRODUCT=product, RESIDUAL=residual, BC=p.tiles.bc, BHW=p.tiles.bhw, warps=p.warps,
    )  # fmt: skip
    return [dx, _total(part), _total(ds)]
