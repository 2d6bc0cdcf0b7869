"""CBAM (Woo et al., ECCV 2018, eq. 1-3) and SE (Hu et al., CVPR 2018) as one operator family,
``cbam_det::gates``: the whole module in one op, its backward in another, optionally with the
BatchNorm before it folded in.

    x  = a[c]·z + b[c]  (a folded BN: a = γ·invstd, b = β − μ·a)  or  x = z
    g_c = s·σ(W2·(relu(W1·avg_hw(x) + b1) + relu(W1·max_hw(x) + b1)) + 2·b2)      (SE: avg only)
    g_s = s·σ(γ_s·(f^{k×k}([avg_c(x·g_c); max_c(x·g_c)]) − μ_s)·invstd_s + β_s)  (CBAM only)
    y  = x·g_c·g_s

(s: the module's ``gate_scale`` in identity mode, else 1.) One op file holds, side by side:

- the **schemas** (``torch.library.Library``): ``gates`` (functional: y and a float32 ``state``
  of the small tensors backward needs, :class:`Layout`), ``gates_backward``, ``gates_`` (the same
  forward written into ``out``, for inference in place) and ``update_stats_`` (a BatchNorm's
  running statistics from the state: the op that mutates, kept apart so that ``gates`` stays
  functional);
- the **CPU kernels** (the C++ functions of ``cbam_det/ops/csrc/gate_cpu.cpp``, float32 NCHW);
- the **CUDA kernels**: the Triton kernels below and their launcher (5 launches forward, 7
  backward for CBAM; 3 and 4 for SE; plus 1 per BatchNorm whose running statistics move);
- the **PyTorch twin** (:func:`twin_forward`, :func:`twin_backward`): the same outputs with
  PyTorch operations, what a failing Triton launch computes instead under ``auto``;
- the **fakes** (shapes for ``torch.compile``) and the **autograd**: one autograd node per call
  (:class:`_Gates` in eager mode; the same formula registered on the op for ``torch.compile``),
  whose backward calls ``gates_backward``: no nested autograd, the small graphs (the MLP, the
  k×k conv and its BatchNorm, the sigmoids) differentiated by hand in the kernels.

The Triton backward writes the folded BatchNorm's backward into its last pass: every term of dx
is a per-(n, c) or per-pixel factor times a sum the earlier passes already formed, so Σ dx and
Σ dx·(z − μ) per channel are known before dz = a·dx + Bz·z + D is written. Float32 throughout
(partial sums added in a fixed order: deterministic, no atomics); max-pool gradients are shared
evenly between tied maxima, as ``amax``.
"""

import functools
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import launch as L
from ..launch import c_tile, hw_tile, jit, nanmax, nanmin, per_c, per_hw, sigmoid, tl
from ..record import note, recording
from . import _kernels

__all__ = [
    'Layout',
    'layout',
    'attend',
    'twin_forward',
    'twin_backward',
    'triton_forward',
    'triton_backward',
    'BN_NONE',
    'BN_BATCH',
    'BN_RUNNING',
    'BN_OWN',
]

#: how the BatchNorm before the module enters: none; folded with the batch statistics its node
#: saved (mean, invstd); folded with its running statistics (mean, var); the module's own
#: BatchNorm, whose batch statistics the op computes (``forward_with_bn`` in training)
BN_NONE, BN_BATCH, BN_RUNNING, BN_OWN = 0, 1, 2, 3
#: the spatial gate: none (SE), [avg; max] (the paper), [max; avg] (the authors' code)
SPATIAL_NONE, SPATIAL_AVG_MAX, SPATIAL_MAX_AVG = 0, 1, 2


# ---------------------------------------------------------------- the state


class Layout(NamedTuple):
    """Offsets (float32 elements) of the small tensors in ``state``, and its size. Per (n, c):
    gc (the channel gate), avg, max (of x over H×W), z1 (Σ_hw (z − μ), folded BN); per n and
    hidden unit: hid (relu(W1·avg + b1), then relu(W1·max + b1)); per channel (folded BN): a, b,
    mean, var, invstd; per (n, pixel): savg, smax (over C of x·g_c), o (the k×k conv), gs (the
    spatial gate); sstat: the spatial BN's mean, var, invstd as used."""

    gc: int
    avg: int
    max: int
    z1: int
    hid: int
    a: int
    b: int
    mean: int
    var: int
    invstd: int
    savg: int
    smax: int
    o: int
    gs: int
    sstat: int
    size: int


def _up16(n: int) -> int:
    return -(-n // 16) * 16


@functools.lru_cache(maxsize=None)
def layout(n: int, c: int, hw: int, hd: int) -> Layout:
    """The state's layout for N, C, H·W and the MLP's hidden width (every block 16-aligned)."""
    sizes = [n * c] * 4 + [n * 2 * hd] + [c] * 5 + [n * hw] * 4 + [4]
    offsets, at = [], 0
    for s in sizes:
        offsets.append(at)
        at += _up16(s)
    return Layout(*offsets, at)


# ---------------------------------------------------------------- Triton kernels: forward


@jit
def _pool_kernel(
    z_ptr, shift_ptr, ws_ptr, o_sum, o_sq, o_max, o_min, C, HW, L, sn, sc, shw,
    SHIFT: tl.constexpr, SQUARES: tl.constexpr, MIN: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """Per (n, c) over pixels [s·L, (s+1)·L): Σ (z − k), Σ (z − k)² (SQUARES), max z, min z (MIN),
    into ws[o_* + (n·S + s)·C + c]; the shift k: 0, ``shift[c]`` (SHIFT 1) or z[0, c, 0, 0] (2).
    Grid (S, channel blocks, N)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    zb = z_ptr + n.to(tl.int64) * sn
    if SHIFT == 1:
        k = per_c(shift_ptr, c, cmask)
    elif SHIFT == 2:
        k = tl.load(z_ptr + c * sc, mask=cmask, other=0.0).to(tl.float32)[:, None]
    acc = tl.zeros([BC, BHW], dtype=tl.float32)
    sq = tl.zeros([BC, BHW], dtype=tl.float32)
    mx = tl.full([BC, BHW], float('-inf'), dtype=tl.float32)
    mn = tl.full([BC, BHW], float('inf'), dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, HW)
    for h0 in range(lo, hi, BHW):
        hw, hmask, mask, off = hw_tile(h0, hi, c, cmask, sc, shw, BHW)
        v = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, v - k, 0.0) if SHIFT != 0 else v
        acc += d
        if SQUARES:
            sq += d * d
        mx = nanmax(mx, tl.where(mask, v, float('-inf')))
        if MIN:
            mn = nanmin(mn, tl.where(mask, v, float('inf')))
    out = ws_ptr + (n * tl.num_programs(0) + s) * C + c
    tl.store(out + o_sum, tl.sum(acc, 1), mask=cmask)
    tl.store(out + o_max, tl.reduce(mx, 1, nanmax), mask=cmask)
    if SQUARES:
        tl.store(out + o_sq, tl.sum(sq, 1), mask=cmask)
    if MIN:
        tl.store(out + o_min, tl.reduce(mn, 1, nanmin), mask=cmask)


@jit
def _channel_gate_kernel(
    ws_ptr, o_sum, o_sq, o_max, o_min, S, z_ptr, sc,
    bnw_ptr, bnb_ptr, bnm_ptr, bnv_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, scale_ptr, st_ptr,
    l_gc, l_avg, l_max, l_z1, l_hid, l_a, l_b, l_mean, l_var, l_invstd,
    N, C, HD, HW, eps,
    BN: tl.constexpr, USE_MAX: tl.constexpr, HAS_SCALE: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    """The channel gate of image n (grid (N,)): the pooled descriptors of x from the partials
    (with a folded BN: its statistics and a, b first), the shared MLP, the sigmoid. Writes avg,
    max, z1, hid and gc of row n, and (program 0) a, b, mean, var, invstd."""
    n = tl.program_id(0)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        s1 = tl.zeros([BC], dtype=tl.float32)
        zmax = tl.full([BC], float('-inf'), dtype=tl.float32)
        zmin = tl.full([BC], float('inf'), dtype=tl.float32)
        for s in range(0, S):
            p = ws_ptr + (n * S + s) * C + c
            s1 += tl.load(p + o_sum, mask=cmask, other=0.0)
            zmax = nanmax(zmax, tl.load(p + o_max, mask=cmask, other=0.0))
            if BN != 0:
                zmin = nanmin(zmin, tl.load(p + o_min, mask=cmask, other=0.0))
        if BN == 0:
            avg = s1 / HW
            mx = zmax
        else:
            if BN == 3:  # the batch statistics over every image, from the shifted sums
                k = tl.load(z_ptr + c * sc, mask=cmask, other=0.0).to(tl.float32)
                t1 = tl.zeros([BC], dtype=tl.float32)
                t2 = tl.zeros([BC], dtype=tl.float32)
                for r in range(0, N * S):
                    t1 += tl.load(ws_ptr + o_sum + r * C + c, mask=cmask, other=0.0)
                    t2 += tl.load(ws_ptr + o_sq + r * C + c, mask=cmask, other=0.0)
                m = (N * HW).to(tl.float32)
                d = t1 / m
                mean = k + d
                var = tl.maximum(t2 / m - d * d, 0.0)
                invstd = 1.0 / tl.sqrt(var + eps)
            elif BN == 1:  # the statistics the BN's node saved
                mean = tl.load(bnm_ptr + c, mask=cmask, other=0.0).to(tl.float32)
                invstd = tl.load(bnv_ptr + c, mask=cmask, other=1.0).to(tl.float32)
                var = 1.0 / (invstd * invstd) - eps
                k = mean
            else:  # running statistics
                mean = tl.load(bnm_ptr + c, mask=cmask, other=0.0).to(tl.float32)
                var = tl.load(bnv_ptr + c, mask=cmask, other=1.0).to(tl.float32)
                invstd = 1.0 / tl.sqrt(var + eps)
                k = mean
            a = tl.load(bnw_ptr + c, mask=cmask, other=0.0).to(tl.float32) * invstd
            b = tl.load(bnb_ptr + c, mask=cmask, other=0.0).to(tl.float32) - mean * a
            avg = (s1 / HW + k) * a + b
            mx = tl.where(a >= 0, zmax * a + b, zmin * a + b)
            tl.store(st_ptr + l_z1 + n * C + c, s1 - HW * (mean - k), mask=cmask)
            first = cmask & (n == 0)
            tl.store(st_ptr + l_a + c, a, mask=first)
            tl.store(st_ptr + l_b + c, b, mask=first)
            tl.store(st_ptr + l_mean + c, mean, mask=first)
            tl.store(st_ptr + l_var + c, var, mask=first)
            tl.store(st_ptr + l_invstd + c, invstd, mask=first)
        tl.store(st_ptr + l_avg + n * C + c, avg, mask=cmask)
        tl.store(st_ptr + l_max + n * C + c, mx, mask=cmask)
    tl.debug_barrier()
    for h0 in range(0, HD, BH):  # hid = relu(W1·v + b1), v = avg, max
        h = h0 + tl.arange(0, BH)
        hmask = h < HD
        acc_a = tl.zeros([BH], dtype=tl.float32)
        acc_m = tl.zeros([BH], dtype=tl.float32)
        for c0 in range(0, C, BC):
            c = c0 + tl.arange(0, BC)
            cmask = c < C
            m2 = hmask[:, None] & cmask[None, :]
            w = tl.load(w1_ptr + h[:, None] * C + c[None, :], mask=m2, other=0.0).to(tl.float32)
            acc_a += tl.sum(w * tl.load(st_ptr + l_avg + n * C + c, mask=cmask, other=0.0)[None, :], 1)
            if USE_MAX:
                acc_m += tl.sum(w * tl.load(st_ptr + l_max + n * C + c, mask=cmask, other=0.0)[None, :], 1)
        bias = tl.load(b1_ptr + h, mask=hmask, other=0.0).to(tl.float32)
        tl.store(st_ptr + l_hid + n * 2 * HD + h, nanmax(acc_a + bias, 0.0), mask=hmask)
        if USE_MAX:
            tl.store(st_ptr + l_hid + n * 2 * HD + HD + h, nanmax(acc_m + bias, 0.0), mask=hmask)
    tl.debug_barrier()
    for c0 in range(0, C, BC):  # gc = s·σ(W2·(hid_avg + hid_max) + 2·b2)
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        acc = tl.zeros([BC], dtype=tl.float32)
        for h0 in range(0, HD, BH):
            h = h0 + tl.arange(0, BH)
            hmask = h < HD
            w = tl.load(w2_ptr + c[:, None] * HD + h[None, :], mask=cmask[:, None] & hmask[None, :], other=0.0)
            hs = tl.load(st_ptr + l_hid + n * 2 * HD + h, mask=hmask, other=0.0)
            if USE_MAX:
                hs += tl.load(st_ptr + l_hid + n * 2 * HD + HD + h, mask=hmask, other=0.0)
            acc += tl.sum(w.to(tl.float32) * hs[None, :], 1)
        bias = tl.load(b2_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        g = sigmoid(acc + (bias * 2.0 if USE_MAX else bias))
        if HAS_SCALE:
            g = g * tl.load(scale_ptr).to(tl.float32)
        tl.store(st_ptr + l_gc + n * C + c, g, mask=cmask)


@jit
def _spatial_pool_kernel(
    z_ptr, st_ptr, l_a, l_b, l_gc, ws_ptr, o_sum, o_max, C, HW, L, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """Σ and max over channels [s·L, (s+1)·L) of x·g_c, per pixel, into ws[o_* + (n·S + s)·HW + hw].
    Grid (pixel blocks, S, N)."""
    hb, s, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    zb = z_ptr + n.to(tl.int64) * sn
    acc = tl.zeros([BC, BHW], dtype=tl.float32)
    mx = tl.full([BC, BHW], float('-inf'), dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, C)
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = c_tile(c0, hi, hw, hmask, sc, shw, BC)
        x = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_AFFINE:
            x = x * per_c(st_ptr + l_a, c, cmask) + per_c(st_ptr + l_b, c, cmask)
        xg = x * per_c(st_ptr + l_gc + n * C, c, cmask)
        acc += tl.where(mask, xg, 0.0)
        mx = nanmax(mx, tl.where(mask, xg, float('-inf')))
    out = ws_ptr + (n * tl.num_programs(1) + s) * HW + hw
    tl.store(out + o_sum, tl.sum(acc, 0), mask=hmask)
    tl.store(out + o_max, tl.reduce(mx, 0, nanmax), mask=hmask)


@jit
def _spatial_conv_kernel(
    ws_ptr, o_sum, o_max, S, st_ptr, l_savg, l_smax, l_o, o_stat, w_ptr, C, H, W, HW, PB,
    AVG_FIRST: tl.constexpr, K: tl.constexpr, BATCH: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    """The k×k conv (one output channel, zero padding) of the channel-pooled maps of image n at
    BP pixels (grid (pixel blocks, N)): the maps from the partials (stored for the own pixels),
    o stored; with BATCH the block's count, mean and Σ (o − mean)² into ws[o_stat + 3·(n·PB + pb)]."""
    pb, n = tl.program_id(0), tl.program_id(1)
    p = pb * BP + tl.arange(0, BP)
    pmask = p < HW
    base = ws_ptr + n * S * HW
    sa = tl.zeros([BP], dtype=tl.float32)
    sm = tl.full([BP], float('-inf'), dtype=tl.float32)
    for s in range(0, S):
        sa += tl.load(base + o_sum + s * HW + p, mask=pmask, other=0.0)
        sm = nanmax(sm, tl.load(base + o_max + s * HW + p, mask=pmask, other=0.0))
    tl.store(st_ptr + l_savg + n * HW + p, sa / C, mask=pmask)
    tl.store(st_ptr + l_smax + n * HW + p, sm, mask=pmask)
    ph = p // W
    pw = p - ph * W
    acc = tl.zeros([BP], dtype=tl.float32)
    for t in tl.static_range(K * K):
        qh = ph + (t // K - K // 2)
        qw = pw + (t % K - K // 2)
        qmask = pmask & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
        q = qh * W + qw
        va = tl.zeros([BP], dtype=tl.float32)
        vm = tl.full([BP], float('-inf'), dtype=tl.float32)
        for s in range(0, S):
            va += tl.load(base + o_sum + s * HW + q, mask=qmask, other=0.0)
            vm = nanmax(vm, tl.load(base + o_max + s * HW + q, mask=qmask, other=0.0))
        va = tl.where(qmask, va / C, 0.0)
        vm = tl.where(qmask, vm, 0.0)
        wa = tl.load(w_ptr + (0 if AVG_FIRST else K * K) + t).to(tl.float32)
        wm = tl.load(w_ptr + (K * K if AVG_FIRST else 0) + t).to(tl.float32)
        acc += wa * va + wm * vm
    tl.store(st_ptr + l_o + n * HW + p, acc, mask=pmask)
    if BATCH:
        cnt = tl.sum(pmask.to(tl.float32), 0)
        mean = tl.sum(tl.where(pmask, acc, 0.0), 0) / cnt
        d = tl.where(pmask, acc - mean, 0.0)
        out = ws_ptr + o_stat + 3 * (n * PB + pb)
        tl.store(out, cnt)
        tl.store(out + 1, mean)
        tl.store(out + 2, tl.sum(d * d, 0))


@jit
def _combined_stats(ws_ptr, o_stat, NPB, BS: tl.constexpr):
    """(mean, biased variance) of all pixels from NPB blocks' (count, mean, M2), in a fixed order."""
    tot = tl.zeros([BS], dtype=tl.float32)
    acc = tl.zeros([BS], dtype=tl.float32)
    for i0 in range(0, NPB, BS):
        i = i0 + tl.arange(0, BS)
        im = i < NPB
        cnt = tl.load(ws_ptr + o_stat + 3 * i, mask=im, other=0.0)
        tot += cnt
        acc += cnt * tl.load(ws_ptr + o_stat + 3 * i + 1, mask=im, other=0.0)
    m = tl.sum(tot, 0)
    mean = tl.sum(acc, 0) / m
    acc = tl.zeros([BS], dtype=tl.float32)
    for i0 in range(0, NPB, BS):
        i = i0 + tl.arange(0, BS)
        im = i < NPB
        d = tl.load(ws_ptr + o_stat + 3 * i + 1, mask=im, other=0.0) - mean
        acc += tl.load(ws_ptr + o_stat + 3 * i + 2, mask=im, other=0.0) + tl.load(
            ws_ptr + o_stat + 3 * i, mask=im, other=0.0
        ) * d * d
    return mean, tl.sum(acc, 0) / m


@jit
def _apply_spatial_kernel(
    z_ptr, out_ptr, st_ptr, l_a, l_b, l_gc, l_o, l_gs, l_sstat, ws_ptr, o_stat, NPB,
    sw_ptr, sb_ptr, srm_ptr, srv_ptr, scale_ptr, C, HW, L, sn, sc, shw, on, oc, ohw, eps,
    HAS_AFFINE: tl.constexpr, BATCH: tl.constexpr, HAS_SCALE: tl.constexpr,
    BC: tl.constexpr, BHW: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """CBAM's y = x·g_c·g_s over channels [s·L, (s+1)·L) of BHW pixels (grid (pixel blocks, S,
    N)), g_s formed here from o and the spatial BN's statistics (BATCH: combined from the conv's
    blocks); split 0 stores g_s, program (0, 0, 0) the statistics used."""
    hb, s, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    if BATCH:
        mean, var = _combined_stats(ws_ptr, o_stat, NPB, BS)
    else:
        mean = tl.load(srm_ptr).to(tl.float32)
        var = tl.load(srv_ptr).to(tl.float32)
    invstd = 1.0 / tl.sqrt(var + eps)
    o = tl.load(st_ptr + l_o + n * HW + hw, mask=hmask, other=0.0)
    t = (o - mean) * invstd * tl.load(sw_ptr).to(tl.float32) + tl.load(sb_ptr).to(tl.float32)
    g = sigmoid(t)
    if HAS_SCALE:
        g = g * tl.load(scale_ptr).to(tl.float32)
    tl.store(st_ptr + l_gs + n * HW + hw, g, mask=hmask & (s == 0))
    first = (hb == 0) & (s == 0) & (n == 0)
    tl.store(st_ptr + l_sstat, mean, mask=first)
    tl.store(st_ptr + l_sstat + 1, var, mask=first)
    tl.store(st_ptr + l_sstat + 2, invstd, mask=first)
    zb = z_ptr + n.to(tl.int64) * sn
    ob = out_ptr + n.to(tl.int64) * on
    gs = g[None, :]
    lo = s * L
    hi = tl.minimum(lo + L, C)
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = c_tile(c0, hi, hw, hmask, sc, shw, BC)
        x = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_AFFINE:
            x = x * per_c(st_ptr + l_a, c, cmask) + per_c(st_ptr + l_b, c, cmask)
        y = (x * per_c(st_ptr + l_gc + n * C, c, cmask)) * gs
        tl.store(ob + c[:, None] * oc + hw[None, :] * ohw, y.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _apply_channel_kernel(
    z_ptr, out_ptr, st_ptr, l_a, l_b, l_gc, C, HW, sn, sc, shw, on, oc, ohw,
    HAS_AFFINE: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """SE's y = x·g_c, one [BC, BHW] tile per program (grid (pixel blocks, channel blocks, N))."""
    hb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask, hmask = c < C, hw < HW
    mask = cmask[:, None] & hmask[None, :]
    x = tl.load(z_ptr + n.to(tl.int64) * sn + c[:, None] * sc + hw[None, :] * shw, mask=mask, other=0.0)
    x = x.to(tl.float32)
    if HAS_AFFINE:
        x = x * per_c(st_ptr + l_a, c, cmask) + per_c(st_ptr + l_b, c, cmask)
    y = x * per_c(st_ptr + l_gc + n * C, c, cmask)
    out = out_ptr + n.to(tl.int64) * on + c[:, None] * oc + hw[None, :] * ohw
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _update_stats_kernel(
    rm_ptr, rv_ptr, nbt_ptr, st_ptr, l_mean, l_var, C, momentum, unbias,
    CUMULATIVE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """A BatchNorm's running statistics from the batch statistics in the state, as
    ``nn.BatchNorm2d`` in training: one program (it also counts the batch)."""
    count = tl.load(nbt_ptr) + 1
    tl.store(nbt_ptr, count)
    mom = 1.0 / count.to(tl.float32) if CUMULATIVE else momentum
    for c0 in range(0, C, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        cmask = c < C
        rm = tl.load(rm_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        m = tl.load(st_ptr + l_mean + c, mask=cmask, other=0.0)
        v = tl.load(st_ptr + l_var + c, mask=cmask, other=0.0)
        tl.store(rm_ptr + c, (rm * (1.0 - mom) + m * mom).to(rm_ptr.dtype.element_ty), mask=cmask)
        tl.store(rv_ptr + c, (rv * (1.0 - mom) + v * unbias * mom).to(rv_ptr.dtype.element_ty), mask=cmask)


# ---------------------------------------------------------------- Triton kernels: backward


@jit
def _gate_grads_kernel(
    dy_ptr, z_ptr, st_ptr, l_a, l_b, l_gc, l_gs, l_smax, l_mean, ws_ptr, o_p1, o_p2, o_dgs, o_cnt,
    C, HW, L, NB, sn, sc, shw, dn, dc, dhw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """CBAM's gate gradients in one pass over (dy, x), u = dy·g_s: per pixel block and channel
    Σ u·x (BN_SUMS: Σ u and Σ u·(z − μ)) into (N, NB, C) partials; per pixel over channels
    [s·L, (s+1)·L) Σ dy·x·g_c and Σ [x·g_c = s_max] (the spatial max's ties). Grid (NB, S, N)."""
    hb, s, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    gs = per_hw(st_ptr + l_gs + n * HW, hw, hmask)
    m = per_hw(st_ptr + l_smax + n * HW, hw, hmask)
    ds = tl.zeros([BC, BHW], dtype=tl.float32)
    cnt = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, C)
    part = ws_ptr + (n * NB + hb) * C
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = c_tile(c0, hi, hw, hmask, sc, shw, BC)
        z = tl.load(z_ptr + n.to(tl.int64) * sn + off, mask=mask, other=0.0).to(tl.float32)
        dof = n.to(tl.int64) * dn + c[:, None] * dc + hw[None, :] * dhw
        dy = tl.load(dy_ptr + dof, mask=mask, other=0.0).to(tl.float32)
        if HAS_AFFINE:
            x = z * per_c(st_ptr + l_a, c, cmask) + per_c(st_ptr + l_b, c, cmask)
        else:
            x = z
        g = per_c(st_ptr + l_gc + n * C, c, cmask)
        u = dy * gs
        if BN_SUMS:
            zc = tl.where(mask, z - per_c(st_ptr + l_mean, c, cmask), 0.0)
            tl.store(part + o_p1 + c, tl.sum(u, 1), mask=cmask)
            tl.store(part + o_p2 + c, tl.sum(u * zc, 1), mask=cmask)
        else:
            tl.store(part + o_p1 + c, tl.sum(u * x, 1), mask=cmask)
        ds += dy * x * g
        cnt += tl.where(mask & (x * g == m), 1.0, 0.0)
    out = ws_ptr + (n * tl.num_programs(1) + s) * HW + hw
    tl.store(out + o_dgs, tl.sum(ds, 0), mask=hmask)
    tl.store(out + o_cnt, tl.sum(cnt, 0), mask=hmask)


@jit
def _se_grads_kernel(
    dy_ptr, z_ptr, st_ptr, l_a, l_b, l_mean, ws_ptr, o_1, o_2, C, HW, L, sn, sc, shw, dn, dc, dhw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """SE's gate gradient Σ dy·x per (n, c) over pixels [s·L, (s+1)·L); BN_SUMS: Σ dy and
    Σ dy·(z − μ). Grid (S, channel blocks, N)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    if HAS_AFFINE:
        a, b = per_c(st_ptr + l_a, c, cmask), per_c(st_ptr + l_b, c, cmask)
    if BN_SUMS:
        mu = per_c(st_ptr + l_mean, c, cmask)
    t1 = tl.zeros([BC, BHW], dtype=tl.float32)
    t2 = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, HW)
    for h0 in range(lo, hi, BHW):
        hw, hmask, mask, off = hw_tile(h0, hi, c, cmask, sc, shw, BHW)
        z = tl.load(z_ptr + n.to(tl.int64) * sn + off, mask=mask, other=0.0).to(tl.float32)
        dof = n.to(tl.int64) * dn + c[:, None] * dc + hw[None, :] * dhw
        dy = tl.load(dy_ptr + dof, mask=mask, other=0.0).to(tl.float32)
        if BN_SUMS:
            t1 += dy
            t2 += dy * tl.where(mask, z - mu, 0.0)
        else:
            x = z * a + b if HAS_AFFINE else z
            t1 += dy * x
    out = ws_ptr + (n * tl.num_programs(0) + s) * C + c
    tl.store(out + o_1, tl.sum(t1, 1), mask=cmask)
    if BN_SUMS:
        tl.store(out + o_2, tl.sum(t2, 1), mask=cmask)


@jit
def _spatial_gate_grad_kernel(
    ws_ptr, o_dgs, o_cnt, S, st_ptr, l_o, l_gs, l_sstat, scale_ptr, o_dt, o_ties, o_bstat, HW, PB,
    HAS_SCALE: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    """d t = dg_s·g_s·(1 − σ) (t: the spatial BN's output) per pixel from the partials, the
    spatial max's ties per pixel, and per block Σ dt and Σ dt·ô (ô: the normalised conv output).
    Grid (pixel blocks, N)."""
    pb, n = tl.program_id(0), tl.program_id(1)
    p = pb * BP + tl.arange(0, BP)
    pmask = p < HW
    dgs = tl.zeros([BP], dtype=tl.float32)
    cnt = tl.zeros([BP], dtype=tl.float32)
    for s in range(0, S):
        q = ws_ptr + (n * S + s) * HW + p
        dgs += tl.load(q + o_dgs, mask=pmask, other=0.0)
        cnt += tl.load(q + o_cnt, mask=pmask, other=0.0)
    tl.store(ws_ptr + o_ties + n * HW + p, cnt, mask=pmask)
    g = tl.load(st_ptr + l_gs + n * HW + p, mask=pmask, other=0.0)
    sig = g / tl.load(scale_ptr).to(tl.float32) if HAS_SCALE else g
    dt = tl.where(pmask, dgs * g * (1.0 - sig), 0.0)
    tl.store(ws_ptr + o_dt + n * HW + p, dt, mask=pmask)
    xh = (tl.load(st_ptr + l_o + n * HW + p, mask=pmask, other=0.0) - tl.load(st_ptr + l_sstat)) * tl.load(
        st_ptr + l_sstat + 2
    )
    out = ws_ptr + o_bstat + 2 * (n * PB + pb)
    tl.store(out, tl.sum(dt, 0))
    tl.store(out + 1, tl.sum(dt * xh, 0))


@jit
def _spatial_conv_grad_kernel(
    ws_ptr, o_dt, o_ties, o_bstat, NPB, st_ptr, l_o, l_savg, l_smax, l_sstat, sw_ptr, w_ptr,
    o_wa, o_wm, o_dwp, dsw_ptr, dsb_ptr, C, H, W, HW, M,
    AVG_FIRST: tl.constexpr, K: tl.constexpr, BATCH: tl.constexpr, BP: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """Through the spatial BN and the k×k conv (grid (pixel blocks, N)): d o from dt and the
    BN's totals; the pooled maps' gradients as w_avg = d savg / C and w_max = d smax / ties;
    per block the conv weight's partial gradients (2·k² of them); program (0, 0) the spatial BN's
    weight and bias gradients."""
    pb, n = tl.program_id(0), tl.program_id(1)
    p = pb * BP + tl.arange(0, BP)
    pmask = p < HW
    s1 = tl.zeros([BS], dtype=tl.float32)
    s2 = tl.zeros([BS], dtype=tl.float32)
    for i0 in range(0, NPB, BS):
        i = i0 + tl.arange(0, BS)
        im = i < NPB
        s1 += tl.load(ws_ptr + o_bstat + 2 * i, mask=im, other=0.0)
        s2 += tl.load(ws_ptr + o_bstat + 2 * i + 1, mask=im, other=0.0)
    sum_dt = tl.sum(s1, 0)
    sum_dtx = tl.sum(s2, 0)
    mean = tl.load(st_ptr + l_sstat)
    invstd = tl.load(st_ptr + l_sstat + 2)
    coef = tl.load(sw_ptr).to(tl.float32) * invstd
    m1 = sum_dt / M
    m2 = sum_dtx / M
    ph = p // W
    pw = p - ph * W
    da = tl.zeros([BP], dtype=tl.float32)
    dm = tl.zeros([BP], dtype=tl.float32)
    for t in tl.static_range(K * K):  # the transposed conv: Σ_t w[t]·do[p − off_t]
        qh = ph - (t // K - K // 2)
        qw = pw - (t % K - K // 2)
        qmask = pmask & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
        q = n * HW + qh * W + qw
        dtq = tl.load(ws_ptr + o_dt + q, mask=qmask, other=0.0)
        if BATCH:
            xq = (tl.load(st_ptr + l_o + q, mask=qmask, other=0.0) - mean) * invstd
            doq = coef * (dtq - m1 - xq * m2)
        else:
            doq = coef * dtq
        doq = tl.where(qmask, doq, 0.0)
        da += tl.load(w_ptr + (0 if AVG_FIRST else K * K) + t).to(tl.float32) * doq
        dm += tl.load(w_ptr + (K * K if AVG_FIRST else 0) + t).to(tl.float32) * doq
    ties = tl.load(ws_ptr + o_ties + n * HW + p, mask=pmask, other=1.0)
    tl.store(ws_ptr + o_wa + n * HW + p, da / C, mask=pmask)
    tl.store(ws_ptr + o_wm + n * HW + p, dm / tl.maximum(ties, 1.0), mask=pmask)
    dtp = tl.load(ws_ptr + o_dt + n * HW + p, mask=pmask, other=0.0)
    if BATCH:
        xp = (tl.load(st_ptr + l_o + n * HW + p, mask=pmask, other=0.0) - mean) * invstd
        dop = coef * (dtp - m1 - xp * m2)
    else:
        dop = coef * dtp
    dop = tl.where(pmask, dop, 0.0)
    out = ws_ptr + o_dwp + (n * tl.num_programs(0) + pb) * 2 * K * K
    for t in tl.static_range(K * K):  # Σ_p do[p]·map[p + off_t]
        qh = ph + (t // K - K // 2)
        qw = pw + (t % K - K // 2)
        qmask = pmask & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
        q = n * HW + qh * W + qw
        va = tl.load(st_ptr + l_savg + q, mask=qmask, other=0.0)
        vm = tl.load(st_ptr + l_smax + q, mask=qmask, other=0.0)
        tl.store(out + (0 if AVG_FIRST else K * K) + t, tl.sum(dop * va, 0))
        tl.store(out + (K * K if AVG_FIRST else 0) + t, tl.sum(dop * vm, 0))
    first = (pb == 0) & (n == 0)
    tl.store(dsw_ptr, sum_dtx.to(dsw_ptr.dtype.element_ty), mask=first)
    tl.store(dsb_ptr, sum_dt.to(dsb_ptr.dtype.element_ty), mask=first)


@jit
def _spatial_pool_grad_kernel(
    z_ptr, st_ptr, l_a, l_b, l_gc, l_smax, l_max, l_mean, ws_ptr, o_wa, o_wm, o_q1, o_q2, o_q3, o_q4,
    C, HW, L, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """g_c's gradient through the spatial pooling, Σ x·w with w = w_avg + [x·g_c = s_max]·w_max,
    and the channel max's ties Σ [x = c_max], per (n, c) over pixels [s·L, (s+1)·L); BN_SUMS
    instead of Σ x·w: Σ w and Σ w·(z − μ), and also Σ [x = c_max]·(z − μ). Grid (S, channel
    blocks, N)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    zb = z_ptr + n.to(tl.int64) * sn
    if HAS_AFFINE:
        a, b = per_c(st_ptr + l_a, c, cmask), per_c(st_ptr + l_b, c, cmask)
    g = per_c(st_ptr + l_gc + n * C, c, cmask)
    cm = per_c(st_ptr + l_max + n * C, c, cmask)
    if BN_SUMS:
        mu = per_c(st_ptr + l_mean, c, cmask)
    t1 = tl.zeros([BC, BHW], dtype=tl.float32)
    t2 = tl.zeros([BC, BHW], dtype=tl.float32)
    ties = tl.zeros([BC, BHW], dtype=tl.float32)
    t4 = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, HW)
    for h0 in range(lo, hi, BHW):
        hw, hmask, mask, off = hw_tile(h0, hi, c, cmask, sc, shw, BHW)
        z = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        x = z * a + b if HAS_AFFINE else z
        m = per_hw(st_ptr + l_smax + n * HW, hw, hmask)
        w = per_hw(ws_ptr + o_wa + n * HW, hw, hmask) + tl.where(
            x * g == m, per_hw(ws_ptr + o_wm + n * HW, hw, hmask), 0.0
        )
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
    out = ws_ptr + (n * tl.num_programs(0) + s) * C + c
    tl.store(out + o_q1, tl.sum(t1, 1), mask=cmask)
    tl.store(out + o_q3, tl.sum(ties, 1), mask=cmask)
    if BN_SUMS:
        tl.store(out + o_q2, tl.sum(t2, 1), mask=cmask)
        tl.store(out + o_q4, tl.sum(t4, 1), mask=cmask)


@jit
def _channel_gate_grad_kernel(
    ws_ptr, o_p1, o_p2, NB, o_q1, o_q2, S3, st_ptr, l_gc, l_hid, l_a, bnb_ptr, w2_ptr, scale_ptr,
    o_dl, o_sq1, o_sq2, o_dhp, dw2_ptr, db2_ptr, o_dwp, NPB, dconv_ptr, N, C, HD, KK2,
    CBAM: tl.constexpr, BN: tl.constexpr, HAS_SCALE: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr,
    BS: tl.constexpr,
):  # fmt: skip
    """The channel gate's backward for BC channels, all images (grid (channel blocks,)): dg_c
    from the partials (CBAM: the gate-gradient pass plus the spatial-pool-gradient pass; a folded
    BN: from its sums Q1, Q2, kept for the last kernel), d logit = dg_c·g_c·(1 − σ), W2's and b2's
    gradients, and the block's share of d hid = W2ᵀ·d logit (partials). Program 0 adds the conv
    weight's partial gradients."""
    cb = tl.program_id(0)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    if BN:
        a = tl.load(st_ptr + l_a + c, mask=cmask, other=0.0)
        beta = tl.load(bnb_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    dl_sum = tl.zeros([BC], dtype=tl.float32)
    for n in range(0, N):
        t1 = tl.zeros([BC], dtype=tl.float32)
        t2 = tl.zeros([BC], dtype=tl.float32)
        for j in range(0, NB):
            t1 += tl.load(ws_ptr + o_p1 + (n * NB + j) * C + c, mask=cmask, other=0.0)
            if BN:
                t2 += tl.load(ws_ptr + o_p2 + (n * NB + j) * C + c, mask=cmask, other=0.0)
        if CBAM:
            for j in range(0, S3):
                t1 += tl.load(ws_ptr + o_q1 + (n * S3 + j) * C + c, mask=cmask, other=0.0)
                if BN:
                    t2 += tl.load(ws_ptr + o_q2 + (n * S3 + j) * C + c, mask=cmask, other=0.0)
        if BN:  # x = a·(z − μ) + β: Σ (u + w)·x from the two sums
            tl.store(ws_ptr + o_sq1 + n * C + c, t1, mask=cmask)
            tl.store(ws_ptr + o_sq2 + n * C + c, t2, mask=cmask)
            dgc = a * t2 + beta * t1
        else:
            dgc = t1
        g = tl.load(st_ptr + l_gc + n * C + c, mask=cmask, other=0.0)
        sig = g / tl.load(scale_ptr).to(tl.float32) if HAS_SCALE else g
        dl = tl.where(cmask, dgc * g * (1.0 - sig), 0.0)
        tl.store(ws_ptr + o_dl + n * C + c, dl, mask=cmask)
        dl_sum += dl
        for h0 in range(0, HD, BH):
            h = h0 + tl.arange(0, BH)
            hmask = h < HD
            w = tl.load(w2_ptr + c[:, None] * HD + h[None, :], mask=cmask[:, None] & hmask[None, :], other=0.0)
            tl.store(ws_ptr + o_dhp + (cb * N + n) * HD + h, tl.sum(w.to(tl.float32) * dl[:, None], 0), mask=hmask)
    tl.store(db2_ptr + c, (dl_sum * 2.0 if CBAM else dl_sum).to(db2_ptr.dtype.element_ty), mask=cmask)
    tl.debug_barrier()
    for h0 in range(0, HD, BH):
        h = h0 + tl.arange(0, BH)
        hmask = h < HD
        acc = tl.zeros([BC, BH], dtype=tl.float32)
        for n in range(0, N):
            dl = tl.load(ws_ptr + o_dl + n * C + c, mask=cmask, other=0.0)
            hs = tl.load(st_ptr + l_hid + n * 2 * HD + h, mask=hmask, other=0.0)
            if CBAM:
                hs += tl.load(st_ptr + l_hid + n * 2 * HD + HD + h, mask=hmask, other=0.0)
            acc += dl[:, None] * hs[None, :]
        tl.store(dw2_ptr + c[:, None] * HD + h[None, :], acc.to(dw2_ptr.dtype.element_ty), mask=cmask[:, None] & hmask[None, :])
    if CBAM:
        for i0 in range(0, KK2, BS):
            i = i0 + tl.arange(0, BS)
            im = (i < KK2) & (cb == 0)
            acc1 = tl.zeros([BS], dtype=tl.float32)
            for j in range(0, NPB):
                acc1 += tl.load(ws_ptr + o_dwp + j * KK2 + i, mask=im, other=0.0)
            tl.store(dconv_ptr + i, acc1.to(dconv_ptr.dtype.element_ty), mask=im)


@jit
def _channel_mlp_grad_kernel(
    ws_ptr, o_dhp, CB, st_ptr, l_hid, l_avg, l_max, l_gc, l_a, l_mean, l_invstd, l_z1, w1_ptr,
    dw1_ptr, db1_ptr, o_q3, o_q4, S3, o_sq1, o_sq2, o_k2, o_k0, o_bz, o_d, dbnw_ptr, dbnb_ptr,
    N, C, HD, HW, M,
    CBAM: tl.constexpr, BN: tl.constexpr, BATCH: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    """The MLP's first layer backward for BC channels (grid (channel blocks,)): d hid from the
    partials, W1's gradient (program 0: b1's), d avg and d max, and the input gradient's
    per-(n, c) coefficients K0 = d avg / HW, K2 = d max / ties; with a folded BN its weight and
    bias gradients and the per-channel terms of dz = a·dx + Bz·z + D."""
    cb = tl.program_id(0)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    for h0 in range(0, HD, BH):  # dW1 = Σ_n d hid_avg ⊗ avg + d hid_max ⊗ max, db1
        h = h0 + tl.arange(0, BH)
        hmask = h < HD
        acc = tl.zeros([BH, BC], dtype=tl.float32)
        dbias = tl.zeros([BH], dtype=tl.float32)
        for n in range(0, N):
            dh = tl.zeros([BH], dtype=tl.float32)
            for j in range(0, CB):
                dh += tl.load(ws_ptr + o_dhp + (j * N + n) * HD + h, mask=hmask, other=0.0)
            ha = tl.load(st_ptr + l_hid + n * 2 * HD + h, mask=hmask, other=0.0)
            dha = tl.where(ha > 0, dh, 0.0)
            acc += dha[:, None] * tl.load(st_ptr + l_avg + n * C + c, mask=cmask, other=0.0)[None, :]
            dbias += dha
            if CBAM:
                hm = tl.load(st_ptr + l_hid + n * 2 * HD + HD + h, mask=hmask, other=0.0)
                dhm = tl.where(hm > 0, dh, 0.0)
                acc += dhm[:, None] * tl.load(st_ptr + l_max + n * C + c, mask=cmask, other=0.0)[None, :]
                dbias += dhm
        tl.store(dw1_ptr + h[:, None] * C + c[None, :], acc.to(dw1_ptr.dtype.element_ty), mask=hmask[:, None] & cmask[None, :])
        tl.store(db1_ptr + h, dbias.to(db1_ptr.dtype.element_ty), mask=hmask & (cb == 0))
    sdx = tl.zeros([BC], dtype=tl.float32)
    sdxz = tl.zeros([BC], dtype=tl.float32)
    for n in range(0, N):  # d avg = W1ᵀ d hid_avg, d max = W1ᵀ d hid_max
        davg = tl.zeros([BC], dtype=tl.float32)
        dmax = tl.zeros([BC], dtype=tl.float32)
        for h0 in range(0, HD, BH):
            h = h0 + tl.arange(0, BH)
            hmask = h < HD
            dh = tl.zeros([BH], dtype=tl.float32)
            for j in range(0, CB):
                dh += tl.load(ws_ptr + o_dhp + (j * N + n) * HD + h, mask=hmask, other=0.0)
            w = tl.load(w1_ptr + h[:, None] * C + c[None, :], mask=hmask[:, None] & cmask[None, :], other=0.0)
            w = w.to(tl.float32)
            ha = tl.load(st_ptr + l_hid + n * 2 * HD + h, mask=hmask, other=0.0)
            davg += tl.sum(w * tl.where(ha > 0, dh, 0.0)[:, None], 0)
            if CBAM:
                hm = tl.load(st_ptr + l_hid + n * 2 * HD + HD + h, mask=hmask, other=0.0)
                dmax += tl.sum(w * tl.where(hm > 0, dh, 0.0)[:, None], 0)
        k0 = davg / HW
        tl.store(ws_ptr + o_k0 + n * C + c, k0, mask=cmask)
        if CBAM:
            ties = tl.zeros([BC], dtype=tl.float32)
            tie_z = tl.zeros([BC], dtype=tl.float32)
            for j in range(0, S3):
                ties += tl.load(ws_ptr + o_q3 + (n * S3 + j) * C + c, mask=cmask, other=0.0)
                if BN:
                    tie_z += tl.load(ws_ptr + o_q4 + (n * S3 + j) * C + c, mask=cmask, other=0.0)
            k2 = dmax / tl.maximum(ties, 1.0)
            tl.store(ws_ptr + o_k2 + n * C + c, k2, mask=cmask)
        if BN:  # Σ_hw dx and Σ_hw dx·(z − μ) of dx = g_c·(u + w) + [x = c_max]·K2 + K0
            g = tl.load(st_ptr + l_gc + n * C + c, mask=cmask, other=0.0)
            sdx += g * tl.load(ws_ptr + o_sq1 + n * C + c, mask=cmask, other=0.0) + k0 * HW
            sdxz += g * tl.load(ws_ptr + o_sq2 + n * C + c, mask=cmask, other=0.0)
            sdxz += k0 * tl.load(st_ptr + l_z1 + n * C + c, mask=cmask, other=0.0)
            if CBAM:
                sdx += k2 * ties
                sdxz += k2 * tie_z
    if BN:
        a = tl.load(st_ptr + l_a + c, mask=cmask, other=0.0)
        invstd = tl.load(st_ptr + l_invstd + c, mask=cmask, other=0.0)
        tl.store(dbnw_ptr + c, (invstd * sdxz).to(dbnw_ptr.dtype.element_ty), mask=cmask)
        tl.store(dbnb_ptr + c, sdx.to(dbnb_ptr.dtype.element_ty), mask=cmask)
        if BATCH:  # dz = a·(dx − Σdx/M − (z − μ)·invstd²·Σdx(z − μ)/M)
            k = a * invstd * invstd * sdxz / M
            tl.store(ws_ptr + o_bz + c, -k, mask=cmask)
            mean = tl.load(st_ptr + l_mean + c, mask=cmask, other=0.0)
            tl.store(ws_ptr + o_d + c, k * mean - a * sdx / M, mask=cmask)


@jit
def _input_grad_kernel(
    dy_ptr, z_ptr, dx_ptr, st_ptr, l_a, l_b, l_gc, l_gs, l_smax, l_max, ws_ptr, o_wa, o_wm, o_k2, o_k0,
    o_bz, o_d, C, HW, sn, sc, shw, dn, dc, dhw,
    HAS_AFFINE: tl.constexpr, CBAM: tl.constexpr, BN: tl.constexpr, BATCH: tl.constexpr,
    BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """dx = g_c·(dy·g_s + w) + [x = c_max]·K2 + K0 (SE: g_c·dy + K0), w = w_avg + [x·g_c =
    s_max]·w_max; with a folded BN dz = a·dx (+ Bz·z + D with batch statistics). One tile per
    program (grid (pixel blocks, channel blocks, N)); dz in z's dtype and strides."""
    hb, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    hw = hb * BHW + tl.arange(0, BHW)
    cmask, hmask = c < C, hw < HW
    mask = cmask[:, None] & hmask[None, :]
    off = n.to(tl.int64) * sn + c[:, None] * sc + hw[None, :] * shw
    dy = tl.load(dy_ptr + n.to(tl.int64) * dn + c[:, None] * dc + hw[None, :] * dhw, mask=mask, other=0.0)
    dy = dy.to(tl.float32)
    g = per_c(st_ptr + l_gc + n * C, c, cmask)
    v = per_c(ws_ptr + o_k0 + n * C, c, cmask)
    if CBAM or (BN and BATCH):
        z = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if CBAM:
        if HAS_AFFINE:
            x = z * per_c(st_ptr + l_a, c, cmask) + per_c(st_ptr + l_b, c, cmask)
        else:
            x = z
        m = per_hw(st_ptr + l_smax + n * HW, hw, hmask)
        w = per_hw(ws_ptr + o_wa + n * HW, hw, hmask) + tl.where(x * g == m, per_hw(ws_ptr + o_wm + n * HW, hw, hmask), 0.0)
        v += g * (dy * per_hw(st_ptr + l_gs + n * HW, hw, hmask) + w)
        v += tl.where(x == per_c(st_ptr + l_max + n * C, c, cmask), per_c(ws_ptr + o_k2 + n * C, c, cmask), 0.0)
    else:
        v += g * dy
    if BN:
        v = v * per_c(st_ptr + l_a, c, cmask)
        if BATCH:
            v += per_c(ws_ptr + o_bz, c, cmask) * z + per_c(ws_ptr + o_d, c, cmask)
    tl.store(dx_ptr + off, v.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- the Triton launch plans


class _Forward(NamedTuple):
    """One forward's launch settings and scratch offsets (float32 elements of one workspace)."""

    pool: tuple  # (grid, length, BC, BHW, warps)
    s1: int
    spool: Optional[tuple]  # CBAM: (grid, length, BC, BHW, warps)
    s3: int
    conv: Optional[tuple]  # CBAM: (grid, BP, warps)
    pb: int
    apply: tuple  # (grid, length, BC, BHW, warps) — SE: (grid, 0, BC, BHW, warps)
    gate: tuple  # (BC, BH, warps)
    o: dict  # scratch offsets
    size: int


class _Backward(NamedTuple):
    grads: tuple  # CBAM: gate_grads (grid, length, BC, BHW, warps); SE: se_grads
    nb: int  # partials per (n, c) of the first pass
    sgrad: Optional[tuple]  # CBAM: (grid, BP, warps) for both spatial-gate kernels
    pb: int
    pgrad: Optional[tuple]  # CBAM: spatial_pool_grad (grid, length, BC, BHW, warps)
    s3: int
    cgrad: tuple  # (grid, BC, BH, warps) for both channel-gate kernels
    cb: int
    dx: tuple  # (grid, BC, BHW)
    o: dict
    size: int


def _offsets(sizes: dict) -> Tuple[dict, int]:
    out, at = {}, 0
    for name, size in sizes.items():
        out[name] = at
        at += _up16(max(size, 1))
    return out, at


_BP = 256  # pixels per program of the spatial-gate kernels


def _hw_plan(n: int, c: int, hw: int, cl: bool, sms: int) -> tuple:
    """A reduction over H×W per (n, c): (grid (S, channel blocks, N), pixels per split, BC, BHW, warps)."""
    t = L.tiles(cl, c, hw)
    cb, nb = L.cdiv(c, t.bc), L.cdiv(hw, t.bhw)
    s, per = L.splits(nb, n * cb, L.WAVES * sms)
    return (s, cb, n), per * t.bhw, t.bc, t.bhw, L.WARPS if cl else 2 * L.WARPS


def _c_plan(n: int, c: int, hw: int, cl: bool, sms: int, warps: int = 0) -> tuple:
    """A loop over C per pixel block: (grid (pixel blocks, S, N), channels per split, BC, BHW, warps)."""
    t = L.tiles(cl, c, hw, per_pixel=True)
    cb, nb = L.cdiv(c, t.bc), L.cdiv(hw, t.bhw)
    s, per = L.splits(cb, n * nb, L.WAVES * sms)
    return (nb, s, n), per * t.bc, t.bc, t.bhw, max(warps or L.WARPS, t.bc * t.bhw // (32 * 8))


def _gate_tiles(c: int, hd: int) -> tuple:
    """(BC, BH, warps) of the small channel-gate kernels: tiles of at most 4096 weights."""
    bh = min(64, L.pow2(hd))
    return min(4096 // bh, L.pow2(c)), bh, 4


@functools.lru_cache(maxsize=None)
def _forward_plan(n: int, c: int, h: int, w: int, hd: int, cl: bool, cbam: bool, batch: bool, sms: int) -> _Forward:
    hw = h * w
    pool = _hw_plan(n, c, hw, cl, sms)
    s1 = pool[0][0]
    sizes = {'sum': n * s1 * c, 'sq': n * s1 * c, 'max': n * s1 * c, 'min': n * s1 * c}
    spool = conv = None
    s3 = pb = 0
    if cbam:
        spool = _c_plan(n, c, hw, cl, sms)
        s3 = spool[0][1]
        pb = L.cdiv(hw, _BP)
        conv = ((pb, n), _BP, 4)
        sizes.update(psum=n * s3 * hw, pmax=n * s3 * hw, stat=3 * n * pb)
        apply = spool
    else:
        t = L.tiles(cl, c, hw)
        apply = ((L.cdiv(hw, t.bhw), L.cdiv(c, t.bc), n), 0, t.bc, t.bhw, L.WARPS)
    o, size = _offsets(sizes)
    return _Forward(pool, s1, spool, s3, conv, pb, apply, _gate_tiles(c, hd), o, size)


@functools.lru_cache(maxsize=None)
def _backward_plan(n: int, c: int, h: int, w: int, hd: int, k: int, cl: bool, cbam: bool, sms: int) -> _Backward:
    hw = h * w
    gc_bc, gc_bh, gc_w = _gate_tiles(c, hd)
    cb = L.cdiv(c, gc_bc)
    sizes = {}
    sgrad = pgrad = None
    pb = s3 = 0
    if cbam:
        grads = _c_plan(n, c, hw, cl, sms)
        nb, s = grads[0][0], grads[0][1]
        pb = L.cdiv(hw, _BP)
        sgrad = ((pb, n), _BP, 4)
        pgrad = _hw_plan(n, c, hw, cl, sms)
        s3 = pgrad[0][0]
        sizes.update(
            p1=n * nb * c, p2=n * nb * c, dgs=n * s * hw, cnt=n * s * hw, dt=n * hw, ties=n * hw, bstat=2 * n * pb,
            wa=n * hw, wm=n * hw, dwp=n * pb * 2 * k * k, q1=n * s3 * c, q2=n * s3 * c, q3=n * s3 * c, q4=n * s3 * c,
        )  # fmt: skip
    else:
        grads = _hw_plan(n, c, hw, cl, sms)
        nb = grads[0][0]
        sizes.update(p1=n * nb * c, p2=n * nb * c)
    sizes.update(dl=n * c, sq1=n * c, sq2=n * c, dhp=cb * n * hd, k2=n * c, k0=n * c, bz=c, d=c)
    t = L.tiles(cl, c, hw)
    dx = ((L.cdiv(hw, t.bhw), L.cdiv(c, t.bc), n), t.bc, t.bhw)
    o, size = _offsets(sizes)
    return _Backward(grads, nb, sgrad, pb, pgrad, s3, ((cb,), gc_bc, gc_bh, gc_w), cb, dx, o, size)


def _launch_strides(t: Tensor) -> Tuple[Tensor, Tuple[int, int, int]]:
    st = L.strides(t)
    if st is None:
        t = t.contiguous()
        st = L.strides(t)
    return t, st


# ---------------------------------------------------------------- the Triton launchers


def triton_forward(
    z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial, sbn_batch, eps, seps, out
):
    """The forward's launches (5 for CBAM, 3 for SE): y (into ``out`` when given) and the state."""
    z, (sn, sc, shw) = _launch_strides(z)
    n, c, h, w = z.shape
    hw, hd = h * w, w1.shape[0]
    cl = sc == 1 and c > 1
    cbam = spatial != SPATIAL_NONE
    p = _forward_plan(n, c, h, w, hd, cl, cbam, sbn_batch, L.sm_count(z.device))
    lay = layout(n, c, hw, hd)
    st = torch.empty(lay.size, dtype=torch.float32, device=z.device)
    ws = torch.empty(p.size, dtype=torch.float32, device=z.device)
    y = torch.empty_like(z) if out is None else out
    yn, yc, yhw = L.strides(y)
    o = p.o
    grid, length, bc, bhw, warps = p.pool
    shift = 0 if bn_mode == BN_NONE else 2 if bn_mode == BN_OWN else 1
    L.launch(
        _pool_kernel, grid, z, bnm, ws, o['sum'], o['sq'], o['max'], o['min'], c, hw, length, sn, sc, shw,
        SHIFT=shift, SQUARES=bn_mode == BN_OWN, MIN=bn_mode != BN_NONE, BC=bc, BHW=bhw, warps=warps,
    )  # fmt: skip
    gbc, gbh, gw = p.gate
    L.launch(
        _channel_gate_kernel, (n,), ws, o['sum'], o['sq'], o['max'], o['min'], p.s1, z, sc, bnw, bnb, bnm, bnv,
        w1, b1, w2, b2, scale, st, lay.gc, lay.avg, lay.max, lay.z1, lay.hid, lay.a, lay.b, lay.mean, lay.var,
        lay.invstd, n, c, hd, hw, eps,
        BN=bn_mode, USE_MAX=cbam, HAS_SCALE=scale is not None, BC=gbc, BH=gbh, warps=gw,
    )  # fmt: skip
    affine = bn_mode != BN_NONE
    if not cbam:
        grid, _, bc, bhw, warps = p.apply
        L.launch(
            _apply_channel_kernel, grid, z, y, st, lay.a, lay.b, lay.gc, c, hw, sn, sc, shw, yn, yc, yhw,
            HAS_AFFINE=affine, BC=bc, BHW=bhw, warps=warps,
        )  # fmt: skip
        return y, st
    grid, length, bc, bhw, warps = p.spool
    L.launch(
        _spatial_pool_kernel, grid, z, st, lay.a, lay.b, lay.gc, ws, o['psum'], o['pmax'], c, hw, length, sn, sc,
        shw, HAS_AFFINE=affine, BC=bc, BHW=bhw, warps=warps,
    )  # fmt: skip
    grid, bp, warps = p.conv
    k = cw.shape[-1]
    L.launch(
        _spatial_conv_kernel, grid, ws, o['psum'], o['pmax'], p.s3, st, lay.savg, lay.smax, lay.o, o['stat'], cw,
        c, h, w, hw, p.pb, AVG_FIRST=spatial == SPATIAL_AVG_MAX, K=k, BATCH=sbn_batch, BP=bp, warps=warps,
    )  # fmt: skip
    grid, length, bc, bhw, warps = p.apply
    L.launch(
        _apply_spatial_kernel, grid, z, y, st, lay.a, lay.b, lay.gc, lay.o, lay.gs, lay.sstat, ws, o['stat'],
        n * p.pb, sw, sb, srm, srv, scale, c, hw, length, sn, sc, shw, yn, yc, yhw, seps,
        HAS_AFFINE=affine, BATCH=sbn_batch, HAS_SCALE=scale is not None, BC=bc, BHW=bhw, BS=256, warps=warps,
    )  # fmt: skip
    return y, st


def triton_backward(dy, z, st, bnw, bnb, w1, b1, w2, b2, cw, sw, scale, bn_mode, spatial, sbn_batch, want_dz):
    """The backward's launches (7 for CBAM, 4 for SE): [dz, dW1, db1, dW2, db2] + (CBAM) [d conv,
    d γ_s, d β_s] + (folded BN) [d γ, d β]."""
    z, (sn, sc, shw) = _launch_strides(z)
    dy, (dn, dc, dhw) = _launch_strides(dy)
    n, c, h, w = z.shape
    hw, hd = h * w, w1.shape[0]
    cl = sc == 1 and c > 1
    cbam = spatial != SPATIAL_NONE
    k = cw.shape[-1] if cbam else 0
    p = _backward_plan(n, c, h, w, hd, k, cl, cbam, L.sm_count(z.device))
    lay = layout(n, c, hw, hd)
    ws = torch.empty(p.size, dtype=torch.float32, device=z.device)
    o = p.o
    affine = bn_mode != BN_NONE
    dw1, db1, dw2, db2 = torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(w2), torch.empty_like(b2)
    grads = [None, dw1, db1, dw2, db2]
    dconv = dsw = dsb = None
    if cbam:
        dconv, dsw, dsb = torch.empty_like(cw), torch.empty_like(sw), torch.empty_like(sw)
        grads += [dconv, dsw, dsb]
        grid, length, bc, bhw, warps = p.grads
        L.launch(
            _gate_grads_kernel, grid, dy, z, st, lay.a, lay.b, lay.gc, lay.gs, lay.smax, lay.mean, ws, o['p1'],
            o['p2'], o['dgs'], o['cnt'], c, hw, length, p.nb, sn, sc, shw, dn, dc, dhw,
            HAS_AFFINE=affine, BN_SUMS=affine, BC=bc, BHW=bhw, warps=2 * warps if affine else warps,
        )  # fmt: skip
        grid, bp, warps = p.sgrad
        L.launch(
            _spatial_gate_grad_kernel, grid, ws, o['dgs'], o['cnt'], p.grads[0][1], st, lay.o, lay.gs,
            lay.sstat, scale, o['dt'], o['ties'], o['bstat'], hw, p.pb, HAS_SCALE=scale is not None, BP=bp,
            warps=warps,
        )  # fmt: skip
        L.launch(
            _spatial_conv_grad_kernel, grid, ws, o['dt'], o['ties'], o['bstat'], n * p.pb, st, lay.o, lay.savg,
            lay.smax, lay.sstat, sw, cw, o['wa'], o['wm'], o['dwp'], dsw, dsb, c, h, w, hw, n * hw,
            AVG_FIRST=spatial == SPATIAL_AVG_MAX, K=k, BATCH=sbn_batch, BP=bp, BS=256, warps=warps,
        )  # fmt: skip
        grid, length, bc, bhw, warps = p.pgrad
        L.launch(
            _spatial_pool_grad_kernel, grid, z, st, lay.a, lay.b, lay.gc, lay.smax, lay.max, lay.mean, ws, o['wa'],
            o['wm'], o['q1'], o['q2'], o['q3'], o['q4'], c, hw, length, sn, sc, shw,
            HAS_AFFINE=affine, BN_SUMS=affine, BC=bc, BHW=bhw, warps=2 * warps if affine else warps,
        )  # fmt: skip
    else:
        grid, length, bc, bhw, warps = p.grads
        L.launch(
            _se_grads_kernel, grid, dy, z, st, lay.a, lay.b, lay.mean, ws, o['p1'], o['p2'], c, hw, length, sn, sc,
            shw, dn, dc, dhw, HAS_AFFINE=affine, BN_SUMS=affine, BC=bc, BHW=bhw, warps=warps,
        )  # fmt: skip
    grid, bc, bh, warps = p.cgrad
    L.launch(
        _channel_gate_grad_kernel, grid, ws, o['p1'], o['p2'], p.nb, o.get('q1', 0), o.get('q2', 0), p.s3, st,
        lay.gc, lay.hid, lay.a, bnb, w2, scale, o['dl'], o['sq1'], o['sq2'], o['dhp'], dw2, db2, o.get('dwp', 0),
        n * p.pb, dconv, n, c, hd, 2 * k * k,
        CBAM=cbam, BN=affine, HAS_SCALE=scale is not None, BC=bc, BH=bh, BS=128, warps=warps,
    )  # fmt: skip
    dbnw = dbnb = None
    if affine:
        dbnw, dbnb = torch.empty_like(bnw), torch.empty_like(bnb)
        grads += [dbnw, dbnb]
    batch = bn_mode in (BN_BATCH, BN_OWN)
    L.launch(
        _channel_mlp_grad_kernel, grid, ws, o['dhp'], p.cb, st, lay.hid, lay.avg, lay.max, lay.gc, lay.a, lay.mean,
        lay.invstd, lay.z1, w1, dw1, db1, o.get('q3', 0), o.get('q4', 0), p.s3, o['sq1'], o['sq2'], o['k2'],
        o['k0'], o['bz'], o['d'], dbnw, dbnb, n, c, hd, hw, n * hw,
        CBAM=cbam, BN=affine, BATCH=batch, BC=bc, BH=bh, warps=warps,
    )  # fmt: skip
    if want_dz:
        dz = torch.empty_like(z)
        grid, bc, bhw = p.dx
        L.launch(
            _input_grad_kernel, grid, dy, z, dz, st, lay.a, lay.b, lay.gc, lay.gs, lay.smax, lay.max, ws,
            o.get('wa', 0), o.get('wm', 0), o['k2'], o['k0'], o['bz'], o['d'], c, hw, sn, sc, shw, dn, dc, dhw,
            HAS_AFFINE=affine, CBAM=cbam, BN=affine, BATCH=batch, BC=bc, BHW=bhw,
        )  # fmt: skip
        grads[0] = dz
    return grads


def triton_update(rm, rv, nbt, st, l_mean, l_var, momentum, unbias) -> None:
    """One launch: a BatchNorm's running statistics (``momentum`` < 0: the cumulative average)."""
    c = rm.numel()
    L.launch(
        _update_stats_kernel, (1,), rm, rv, nbt, st, l_mean, l_var, c, max(momentum, 0.0), unbias,
        CUMULATIVE=momentum < 0, BLOCK=min(1024, L.pow2(c)),
    )  # fmt: skip


# ---------------------------------------------------------------- the PyTorch twin


def _put(st: Tensor, at: int, t: Tensor) -> None:
    st[at : at + t.numel()] = t.reshape(-1)


def _autocast_off(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def twin_forward(
    z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial, sbn_batch, eps, seps, out
):
    """:func:`triton_forward`'s outputs with PyTorch operations (float32, autocast off): y (into
    ``out`` when given) and the state, every entry of :class:`Layout` filled as the kernels fill it."""
    n, c, h, w = z.shape
    hw, hd = h * w, w1.shape[0]
    lay = layout(n, c, hw, hd)
    st = torch.zeros(lay.size, dtype=torch.float32, device=z.device)
    cbam = spatial != SPATIAL_NONE
    with _autocast_off(z.device):
        zf = z.float()
        x = zf
        if bn_mode != BN_NONE:
            if bn_mode == BN_OWN:
                mean, var = zf.mean((0, 2, 3)), zf.var((0, 2, 3), unbiased=False)
                invstd = torch.rsqrt(var + eps)
            elif bn_mode == BN_BATCH:
                mean, invstd = bnm.float(), bnv.float()
                var = 1.0 / (invstd * invstd) - eps
            else:
                mean, var = bnm.float(), bnv.float()
                invstd = torch.rsqrt(var + eps)
            a = bnw.float() * invstd
            b = bnb.float() - mean * a
            x = zf * a[:, None, None] + b[:, None, None]
            for at, t in ((lay.a, a), (lay.b, b), (lay.mean, mean), (lay.var, var), (lay.invstd, invstd)):
                _put(st, at, t)
            _put(st, lay.z1, (zf - mean[:, None, None]).sum((2, 3)))
        avg, mx = x.mean((2, 3)), x.amax((2, 3))
        ha = torch.relu(avg @ w1.float().t() + b1.float())
        hs, hm = ha, None
        if cbam:
            hm = torch.relu(mx @ w1.float().t() + b1.float())
            hs = ha + hm
        gc = torch.sigmoid(hs @ w2.float().t() + b2.float() * (2.0 if cbam else 1.0))
        if scale is not None:
            gc = gc * scale.float()
        _put(st, lay.gc, gc)
        _put(st, lay.avg, avg)
        _put(st, lay.max, mx)
        _put(st, lay.hid, torch.stack([ha, hm if hm is not None else torch.zeros_like(ha)], 1))
        y = x * gc[:, :, None, None]
        if cbam:
            savg, smax = y.mean(1), y.amax(1)
            desc = torch.stack([savg, smax] if spatial == SPATIAL_AVG_MAX else [smax, savg], 1)
            o = torch.nn.functional.conv2d(desc, cw.float(), padding=cw.shape[-1] // 2)[:, 0]
            if sbn_batch:
                smean, svar = o.mean(), o.var(unbiased=False)
            else:
                smean, svar = srm.float().reshape(()), srv.float().reshape(())
            sinv = torch.rsqrt(svar + seps)
            gs = torch.sigmoid((o - smean) * sinv * sw.float() + sb.float())
            if scale is not None:
                gs = gs * scale.float()
            for at, t in ((lay.savg, savg), (lay.smax, smax), (lay.o, o), (lay.gs, gs)):
                _put(st, at, t)
            _put(st, lay.sstat, torch.stack([smean, svar, sinv]))
            y = y * gs[:, None]
    y = y.to(z.dtype)
    return (y if out is None else out.copy_(y)), st


def _views(st: Tensor, n: int, c: int, h: int, w: int, hd: int) -> dict:
    lay = layout(n, c, h * w, hd)
    nc, nhw = (n, c), (n, h, w)
    shapes = dict(gc=nc, avg=nc, max=nc, z1=nc, hid=(n, 2, hd), a=(c,), b=(c,), mean=(c,), var=(c,), invstd=(c,))
    shapes.update(savg=nhw, smax=nhw, o=nhw, gs=nhw, sstat=(4,))
    out = {}
    for name, shape in shapes.items():
        at = getattr(lay, name)
        size = 1
        for s in shape:
            size *= s
        out[name] = st[at : at + size].view(shape)
    return out


def twin_backward(dy, z, st, bnw, bnb, w1, b1, w2, b2, cw, sw, scale, bn_mode, spatial, sbn_batch, want_dz):
    """:func:`triton_backward`'s gradients with PyTorch operations, from the same state: the
    formulas written out (no autograd)."""
    n, c, h, w = z.shape
    hw, hd = h * w, w1.shape[0]
    v = _views(st, n, c, h, w, hd)
    cbam = spatial != SPATIAL_NONE
    with _autocast_off(z.device):
        zf, dyf = z.float(), dy.float()
        x = zf
        if bn_mode != BN_NONE:
            x = zf * v['a'][:, None, None] + v['b'][:, None, None]
        gc, gcb = v['gc'], v['gc'][:, :, None, None]
        s = scale.float() if scale is not None else 1.0
        grads_s = []
        if cbam:
            gs = v['gs']
            u = dyf * gs[:, None]
            xg = x * gcb
            tie_s = xg == v['smax'][:, None]
            dt = (dyf * xg).sum(1) * gs * (1.0 - gs / s)
            smean, svar, sinv = v['sstat'][0], v['sstat'][1], v['sstat'][2]
            xh = (v['o'] - smean) * sinv
            coef = sw.float().reshape(()) * sinv
            m = n * hw
            do = coef * (dt - dt.sum() / m - xh * (dt * xh).sum() / m) if sbn_batch else coef * dt
            pad = cw.shape[-1] // 2
            desc = torch.stack(
                [v['savg'], v['smax']] if spatial == SPATIAL_AVG_MAX else [v['smax'], v['savg']], 1
            )
            cwf = cw.float()
            ddesc = torch.nn.grad.conv2d_input(desc.shape, cwf, do[:, None], padding=pad)
            dconv = torch.nn.grad.conv2d_weight(desc, cwf.shape, do[:, None], padding=pad)
            dsavg, dsmax = (ddesc[:, 0], ddesc[:, 1]) if spatial == SPATIAL_AVG_MAX else (ddesc[:, 1], ddesc[:, 0])
            wfull = (dsavg / c)[:, None] + torch.where(
                tie_s, (dsmax / tie_s.sum(1).float().clamp_min(1))[:, None], 0.0
            )
            dgc = ((u + wfull) * x).sum((2, 3))
            grads_s = [dconv.to(cw.dtype), (dt * xh).sum().reshape(sw.shape).to(sw.dtype)]
            grads_s.append(dt.sum().reshape(sw.shape).to(sw.dtype))
        else:
            dgc = (dyf * x).sum((2, 3))
        dl = dgc * gc * (1.0 - gc / s)
        ha, hm = v['hid'][:, 0], v['hid'][:, 1]
        hs = ha + hm if cbam else ha
        w1f, w2f = w1.float(), w2.float()
        dw2, db2 = dl.t() @ hs, dl.sum(0) * (2.0 if cbam else 1.0)
        dh = dl @ w2f
        dha = torch.where(ha > 0, dh, 0.0)
        dw1, db1, davg = dha.t() @ v['avg'], dha.sum(0), dha @ w1f
        dx = (davg / hw)[:, :, None, None]
        if cbam:
            dhm = torch.where(hm > 0, dh, 0.0)
            dw1, db1 = dw1 + dhm.t() @ v['max'], db1 + dhm.sum(0)
            tie_c = x == v['max'][:, :, None, None]
            k2 = (dhm @ w1f) / tie_c.sum((2, 3)).float().clamp_min(1)
            dx = dx + gcb * (u + wfull) + torch.where(tie_c, k2[:, :, None, None], 0.0)
        else:
            dx = dx + gcb * dyf
        grads_bn = []
        if bn_mode != BN_NONE:
            a, mean, invstd = v['a'][:, None, None], v['mean'][:, None, None], v['invstd']
            zc = zf - mean
            sdx, sdxz = dx.sum((0, 2, 3)), (dx * zc).sum((0, 2, 3))
            grads_bn = [(invstd * sdxz).to(bnw.dtype), sdx.to(bnb.dtype)]
            if bn_mode == BN_RUNNING:
                dx = a * dx
            else:
                m = n * hw
                dx = a * (dx - (sdx / m)[:, None, None] - zc * (invstd * invstd * sdxz / m)[:, None, None])
    dz = dx.to(z.dtype) if want_dz else None
    params = [dw1.to(w1.dtype), db1.to(b1.dtype), dw2.to(w2.dtype), db2.to(b2.dtype)]
    return [dz] + params + grads_s + grads_bn


def twin_update(rm, rv, nbt, st, l_mean, l_var, momentum, unbias) -> None:
    """:func:`triton_update` with PyTorch operations."""
    c = rm.numel()
    nbt.add_(1)
    mom = 1.0 / nbt.float() if momentum < 0 else momentum
    rm.copy_(rm * (1.0 - mom) + st[l_mean : l_mean + c] * mom)
    rv.copy_(rv * (1.0 - mom) + st[l_var : l_var + c] * unbias * mom)


# ---------------------------------------------------------------- the C++ kernels


def _dense(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def cpu_forward(
    z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial, sbn_batch, eps, seps, out
):
    """The C++ forward (float32, NCHW): one call."""
    n, c, h, w = z.shape
    lay = layout(n, c, h * w, w1.shape[0])
    y, st = _kernels.cpu('gates').gates_forward(
        z.contiguous(), bnw, bnb, bnm, bnv, w1.contiguous(), b1, w2.contiguous(), b2, _dense(cw), sw, sb, srm, srv,
        scale, bn_mode, spatial, sbn_batch, eps, seps, out, list(lay),
    )  # fmt: skip
    return y, st


def cpu_backward(dy, z, st, bnw, bnb, w1, b1, w2, b2, cw, sw, scale, bn_mode, spatial, sbn_batch, want_dz):
    """The C++ backward: one call."""
    n, c, h, w = z.shape
    lay = layout(n, c, h * w, w1.shape[0])
    grads = _kernels.cpu('gates_backward').gates_backward(
        dy.contiguous(), z.contiguous(), st, bnw, bnb, w1.contiguous(), b1, w2.contiguous(), b2, _dense(cw), sw,
        scale, bn_mode, spatial, sbn_batch, want_dz, list(lay),
    )  # fmt: skip
    if not want_dz:
        grads[0] = None
    return grads


def cpu_update(rm, rv, nbt, st, l_mean, l_var, momentum, unbias) -> None:
    _kernels.cpu('update_stats_').update_stats(rm, rv, nbt, st, l_mean, l_var, momentum, unbias)


# ---------------------------------------------------------------- the operators


_lib = torch.library.Library('cbam_det', 'FRAGMENT')
_FORWARD_ARGS = (
    'Tensor z, Tensor? bn_weight, Tensor? bn_bias, Tensor? bn_mean, Tensor? bn_var, Tensor w1, Tensor b1, '
    'Tensor w2, Tensor b2, Tensor? conv_weight, Tensor? sbn_weight, Tensor? sbn_bias, Tensor? sbn_mean, '
    'Tensor? sbn_var, Tensor? gate_scale, int bn_mode, int spatial, bool sbn_batch, float eps, float sbn_eps, '
    'bool triton, bool fallback'
)
_lib.define(f'gates({_FORWARD_ARGS}) -> (Tensor, Tensor)')
_lib.define(f'gates_(Tensor(a!) out, {_FORWARD_ARGS}) -> ()')
_lib.define(
    'gates_backward(Tensor dy, Tensor z, Tensor state, Tensor? bn_weight, Tensor? bn_bias, Tensor w1, Tensor b1, '
    'Tensor w2, Tensor b2, Tensor? conv_weight, Tensor? sbn_weight, Tensor? gate_scale, int bn_mode, int spatial, '
    'bool sbn_batch, bool want_dz, bool triton, bool fallback) -> Tensor?[]'
)
_lib.define(
    'update_stats_(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor(c!) num_batches_tracked, Tensor state, '
    'int mean_at, int var_at, float momentum, float unbias, bool triton, bool fallback) -> ()'
)


def _key(name: str, *args) -> tuple:
    """What an op's plan depends on (besides sizes): the failure memory's key."""
    z = args[0]
    return (name, z.dtype, L.strides(z) is not None and z.stride(1) == 1) + tuple(
        a for a in args if isinstance(a, (bool, int, float))
    )


def _triton_forward_or_twin(*args):
    *inputs, triton, fallback, out = args
    return L.run_or_twin(_key('gates', *inputs), fallback, triton_forward, twin_forward, *inputs, out)


def _forward_impl(*args, out: Optional[Tensor] = None):
    """The device's kernels: C++ on the CPU (Triton in its interpreter where ``triton``), Triton on CUDA."""
    triton = args[-2]
    if args[0].device.type == 'cpu' and not triton:
        return cpu_forward(*args[:-2], out)
    return _triton_forward_or_twin(*args, out)


def _backward_impl(*args):
    triton, fallback = args[-2:]
    inputs = args[:-2]
    if inputs[0].device.type == 'cpu' and not triton:
        return cpu_backward(*inputs)
    return L.run_or_twin(_key('gates_backward', *inputs[1:]), fallback, triton_backward, twin_backward, *inputs)


def _update_impl(rm, rv, nbt, st, l_mean, l_var, momentum, unbias, triton, fallback) -> None:
    args = (rm, rv, nbt, st, l_mean, l_var, momentum, unbias)
    if rm.device.type == 'cpu' and not triton:
        return cpu_update(*args)
    L.run_or_twin(('update_stats_',), fallback, triton_update, twin_update, *args)


def _inplace_impl(out: Tensor, *args) -> None:
    _forward_impl(*args, out=out)


for _dk in ('CPU', 'CUDA'):
    _lib.impl('gates', _forward_impl, _dk)
    _lib.impl('gates_', _inplace_impl, _dk)
    _lib.impl('gates_backward', _backward_impl, _dk)
    _lib.impl('update_stats_', _update_impl, _dk)


@torch.library.register_fake('cbam_det::gates')
def _(z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, *rest):
    n, c, h, w = z.shape
    return torch.empty_like(z), z.new_empty((layout(n, c, h * w, w1.shape[0]).size,), dtype=torch.float32)


@torch.library.register_fake('cbam_det::gates_')
def _(out, *args) -> None:
    return None


@torch.library.register_fake('cbam_det::gates_backward')
def _(dy, z, st, bnw, bnb, w1, b1, w2, b2, cw, sw, scale, bn_mode, spatial, sbn_batch, want_dz, triton, fallback):
    out = [torch.empty_like(z) if want_dz else None] + [torch.empty_like(t) for t in (w1, b1, w2, b2)]
    if spatial != SPATIAL_NONE:
        out += [torch.empty_like(cw), torch.empty_like(sw), torch.empty_like(sw)]
    if bn_mode != BN_NONE:
        out += [torch.empty_like(bnw), torch.empty_like(bnb)]
    return out


@torch.library.register_fake('cbam_det::update_stats_')
def _(*args) -> None:
    return None


GATES = torch.ops.cbam_det.gates.default
GATES_ = torch.ops.cbam_det.gates_.default
GATES_BACKWARD = torch.ops.cbam_det.gates_backward.default
UPDATE_STATS_ = torch.ops.cbam_det.update_stats_.default


# ---------------------------------------------------------------- autograd: one node per call


def _setup(ctx, inputs, output) -> None:
    (z, bnw, bnb, _, _, w1, b1, w2, b2, cw, sw, _, _, _, scale, bn_mode, spatial, sbn_batch, _, _, triton, fallback) = (
        inputs
    )
    ctx.save_for_backward(z, output[1], bnw, bnb, w1, b1, w2, b2, cw, sw, scale)
    ctx.flags = (bn_mode, spatial, sbn_batch)
    ctx.run = (triton, fallback)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # the state's gradient stays None (no zeros formed)


def _backward(ctx, dy: Tensor, _dstate: Optional[Tensor]) -> tuple:
    z, st, bnw, bnb, w1, b1, w2, b2, cw, sw, scale = ctx.saved_tensors
    bn_mode, spatial, sbn_batch = ctx.flags
    g = GATES_BACKWARD(
        dy, z, st, bnw, bnb, w1, b1, w2, b2, cw, sw, scale, bn_mode, spatial, sbn_batch, ctx.needs_input_grad[0],
        *ctx.run,
    )  # fmt: skip
    spatial_grads = (g[5], g[6], g[7]) if spatial != SPATIAL_NONE else (None, None, None)
    bn_grads = tuple(g[-2:]) if bn_mode != BN_NONE else (None, None)
    return (g[0],) + bn_grads + (None, None) + tuple(g[1:5]) + spatial_grads + (None,) * 10


class _Gates(torch.autograd.Function):
    """The eager autograd node of ``cbam_det::gates`` (the op's registered formula, without the
    generic wrapper's per-call argument flattening)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = GATES(*inputs)
        _setup(ctx, inputs, output)
        return output

    backward = staticmethod(_backward)


torch.library.register_autograd('cbam_det::gates', _backward, setup_context=_setup)


# ---------------------------------------------------------------- from a module


class _Args(NamedTuple):
    """What a module gives the op, decided at its first call in a mode (see :func:`attend`)."""

    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor
    cw: Optional[Tensor]
    sw: Optional[Tensor]
    sb: Optional[Tensor]
    srm: Optional[Tensor]
    srv: Optional[Tensor]
    snbt: Optional[Tensor]
    scale: Optional[Tensor]
    spatial: int
    seps: float
    smomentum: float  # < 0: cumulative average
    strain: bool  # the spatial BN normalises with batch statistics
    supdate: bool  # and updates its running statistics


def module_args(module: nn.Module) -> _Args:
    """The op's arguments that depend on the module and its mode only, cached on it (the cache
    is dropped when the module moves, changes dtype or mode: ``AttentionModule._apply``/``train``)."""
    cache = module.__dict__.get('_gates_args')
    if cache is not None:
        return cache
    cg, sg = module.kernel_gates()
    spatial, cw = SPATIAL_NONE, None
    sw = sb = srm = srv = snbt = None
    seps, smom, strain, supdate = 0.0, 0.0, False, False
    if sg is not None:
        bn = sg.bn
        spatial = SPATIAL_AVG_MAX if sg.pool == 'avg_max' else SPATIAL_MAX_AVG
        cw, sw, sb, seps = sg.conv.weight, bn.weight, bn.bias, float(bn.eps)
        srm, srv, snbt = bn.running_mean, bn.running_var, bn.num_batches_tracked
        strain = bn.training or srm is None
        supdate = bn.training and srm is not None
        smom = -1.0 if bn.momentum is None else float(bn.momentum)
    args = _Args(
        cg.fc1.weight, cg.fc1.bias, cg.fc2.weight, cg.fc2.bias, cw, sw, sb, srm, srv, snbt, module.gate_scale,
        spatial, seps, smom, strain, supdate,
    )  # fmt: skip
    module.__dict__['_gates_args'] = args
    return args


def attend(
    module: nn.Module,
    x: Tensor,
    bn: Optional[nn.BatchNorm2d],
    source: Optional[tuple],
    triton: bool,
    fallback: bool,
    compiled: bool = False,
) -> Tensor:
    """CBAM's or SE's output on ``x`` through the ops (``bn``: the module's own BatchNorm before
    it, whose statistics the op computes; ``source``: (z, mode, γ, β, mean, var-or-invstd, eps)
    of a BatchNorm whose output x is, to fold in, from ``dispatch``); the running statistics of
    the BatchNorms that train are updated by ``update_stats_``."""
    a = module_args(module)
    bn_mode, bnw, bnb, bnm, bnv, eps, z = BN_NONE, None, None, None, None, 0.0, x
    own_update = False
    if bn is not None:
        bnw, bnb, eps = bn.weight, bn.bias, float(bn.eps)
        if bn.training or bn.running_mean is None:
            bn_mode, own_update = BN_OWN, bn.training and bn.running_mean is not None
            if x.shape[0] * x.shape[2] * x.shape[3] <= 1:
                raise ValueError(f'Expected more than 1 value per channel when training, got input size {tuple(x.shape)}')
        else:
            bn_mode, bnm, bnv = BN_RUNNING, bn.running_mean, bn.running_var
    elif source is not None:
        z, bn_mode, bnw, bnb, bnm, bnv, eps = source
    n, c, h, w = z.shape
    sbn_batch = a.strain and (n * h * w > 1 or a.srm is None)
    args = (
        z, bnw, bnb, bnm, bnv, a.w1, a.b1, a.w2, a.b2, a.cw, a.sw, a.sb, a.srm, a.srv, a.scale, bn_mode, a.spatial,
        sbn_batch, eps, a.seps, triton, fallback,
    )  # fmt: skip
    supdate = a.supdate and sbn_batch
    grad_params = a.w1.requires_grad or a.w2.requires_grad or (bnb is not None and bnb.requires_grad)
    if torch.is_grad_enabled() and (z.requires_grad or grad_params):
        y, st = GATES(*args) if compiled else _Gates.apply(*args)
    elif module.inplace and source is None and not (supdate or own_update or recording()):
        GATES_(z, *args)  # inference in place: no state needed
        return z
    else:
        y, st = GATES(*args)
    if supdate or own_update:
        m = n * h * w
        lay = layout(n, c, h * w, a.w1.shape[0])
        if supdate:
            UPDATE_STATS_(a.srm, a.srv, a.snbt, st, lay.sstat, lay.sstat + 1, a.smomentum, m / (m - 1), triton, fallback)
        if own_update:
            mom = -1.0 if bn.momentum is None else float(bn.momentum)
            UPDATE_STATS_(bn.running_mean, bn.running_var, bn.num_batches_tracked, st, lay.mean, lay.var, mom,
                          m / (m - 1), triton, fallback)  # fmt: skip
    if recording():
        v = _views(st, n, c, h, w, a.w1.shape[0])
        note(module, channel=v['gc'], spatial=v['gs'][:, None] if a.spatial != SPATIAL_NONE else None)
    return y

