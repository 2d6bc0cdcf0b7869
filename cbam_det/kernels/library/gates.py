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
- the **CPU kernels** (the C++ functions of ``cbam_det/ops/csrc/gates.cpp``, float32 NCHW);
- the **CUDA kernels**: the Triton kernels below and their launcher (5 launches forward, 7
  backward for CBAM; 3 and 4 for SE; plus 1 per BatchNorm whose running statistics move);
- the **PyTorch twin** (:func:`twin_forward`, :func:`twin_backward`): the same outputs with
  PyTorch operations, what a failing Triton launch computes instead under ``auto``;
- the **fakes** (shapes for ``torch.compile``) and the **autograd**: one autograd node per call
  whose backward calls ``gates_backward``: no nested autograd, the small graphs (the MLP, the
  k×k conv and its BatchNorm, the sigmoids) differentiated by hand in the kernels. In eager mode
  the node is C++ (``GatesNode`` in ``gates.cpp``, :func:`eager_node_of_gates`), so no Python runs
  between the call and the ops' kernels; :class:`_Gates`, the same in Python, where the C++
  module is not compiled; the same formula is registered on the op for ``torch.compile``.

The Triton backward writes the folded BatchNorm's backward into its last pass: every term of dx
is a per-(n, c) or per-pixel factor times a sum the earlier passes already formed, so Σ dx and
Σ dx·(z − μ) per channel are known before dz = a·dx + Bz·z + D is written. Float32 throughout
(partial sums added in a fixed order: deterministic, no atomics); max-pool gradients are shared
evenly between tied maxima, as ``amax``.
"""

import functools
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import launch as L
from ..launch import c_tile, hw_tile, jit, nanmax, nanmin, per_c, per_hw, sigmoid, tl
from ..record import note, recording
from . import _kernels
from ._autograd import call_below_autograd, eager_node

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
    """Offsets (float32 elements) of the small tensors the forward keeps for the backward, in its
    two state tensors (an entry the mode does not have takes no room). ``cstate`` (per channel):
    gc (the channel gate), gl (its logit), avg, max (of x over H×W),
    z1 (Σ_hw (z − μ), folded BN) per (n, c); hid (relu(W1·avg + b1), then relu(W1·max + b1)) per
    n and hidden unit; a, b, mean, var, invstd (folded BN) per channel; sstat: the spatial BN's
    mean, var and invstd as used. ``pstate`` (per pixel, CBAM): savg, smax (over C of x·g_c),
    o (the k×k conv), gs (the spatial gate), one (N, H·W) plane each."""

    gc: int
    gl: int
    avg: int
    max: int
    z1: int
    hid: int
    a: int
    b: int
    mean: int
    var: int
    invstd: int
    sstat: int
    csize: int
    savg: int
    smax: int
    o: int
    gs: int
    psize: int


def _offsets(sizes) -> Tuple[List[int], int]:
    out, at = [], 0
    for s in sizes:
        out.append(at)
        at += s
    return out, at


def compute_layout(n: int, c: int, hw: int, hd: int, cbam: bool, bn: bool) -> Layout:
    """The states' layout for N, C, H·W, the MLP's hidden width, CBAM (else SE) and a folded
    BatchNorm: only the entries the mode has, packed (every element of both states is written by
    the forward), also for symbolic sizes (the fakes under ``torch.compile``)."""
    k, m = int(bn), int(cbam)  # ints, not bools: torch 2.5's symbolic sizes refuse bool × SymInt
    channel, csize = _offsets([n * c] * 4 + [k * n * c, n * (1 + m) * hd] + [k * c] * 5 + [3 * m])
    pixel, psize = _offsets([m * n * hw] * 4)
    return Layout(*channel, csize, *pixel, psize)


#: :func:`compute_layout`, computed once per size
layout = functools.lru_cache(maxsize=None)(compute_layout)


# ---------------------------------------------------------------- Triton kernels: forward


@jit
def _pool_kernel(
    z_ptr, shift_ptr, part_ptr, PS, C, HW, L, sn, sc, shw,
    SHIFT: tl.constexpr, SQUARES: tl.constexpr, MIN: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """Per (n, c) over pixels [s·L, (s+1)·L): Σ (z − k), Σ (z − k)² (SQUARES), max z, min z (MIN),
    into part[q·PS + (n·S + s)·C + c] for q = 0..3; the shift k: ``shift[c]`` with SHIFT (a BN's
    mean, or its running mean where the op computes the batch statistics: the sums stay small),
    else 0. Grid (S, channel blocks, N)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    zb = z_ptr + n.to(tl.int64) * sn
    if SHIFT:
        k = per_c(shift_ptr, c, cmask)
    acc = tl.zeros([BC, BHW], dtype=tl.float32)
    sq = tl.zeros([BC, BHW], dtype=tl.float32)
    mx = tl.full([BC, BHW], float('-inf'), dtype=tl.float32)
    mn = tl.full([BC, BHW], float('inf'), dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, HW)
    for h0 in range(lo, hi, BHW):
        hw, hmask, mask, off = hw_tile(h0, hi, c, cmask, sc, shw, BHW)
        v = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, v - k, 0.0) if SHIFT else v
        acc += d
        if SQUARES:
            sq += d * d
        mx = nanmax(mx, tl.where(mask, v, float('-inf')))
        if MIN:
            mn = nanmin(mn, tl.where(mask, v, float('inf')))
    out = part_ptr + (n * tl.num_programs(0) + s) * C + c
    tl.store(out, tl.sum(acc, 1), mask=cmask)
    tl.store(out + 2 * PS, tl.reduce(mx, 1, nanmax), mask=cmask)
    if SQUARES:
        tl.store(out + PS, tl.sum(sq, 1), mask=cmask)
    if MIN:
        tl.store(out + 3 * PS, tl.reduce(mn, 1, nanmin), mask=cmask)


@jit
def _channel_gate_kernel(
    part_ptr, PS, S, bnw_ptr, bnb_ptr, bnm_ptr, bnv_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, scale_ptr, cs_ptr,
    l_gc, l_gl, l_avg, l_max, l_z1, l_hid, l_a, l_b, l_mean, l_var, l_invstd, N, C, HD, HW, eps,
    BN: tl.constexpr, SHIFT: tl.constexpr, USE_MAX: tl.constexpr, HAS_SCALE: tl.constexpr,
    BC: tl.constexpr, BH: tl.constexpr,
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
            p = part_ptr + (n * S + s) * C + c
            s1 += tl.load(p, mask=cmask, other=0.0)
            zmax = nanmax(zmax, tl.load(p + 2 * PS, mask=cmask, other=0.0))
            if BN != 0:
                zmin = nanmin(zmin, tl.load(p + 3 * PS, mask=cmask, other=0.0))
        if BN == 0:
            avg = s1 / HW
            mx = zmax
        else:
            if BN == 3:  # the batch statistics over every image, from the shifted sums
                if SHIFT:
                    k = tl.load(bnm_ptr + c, mask=cmask, other=0.0).to(tl.float32)
                else:
                    k = tl.zeros([BC], dtype=tl.float32)
                t1 = tl.zeros([BC], dtype=tl.float32)
                t2 = tl.zeros([BC], dtype=tl.float32)
                for r in range(0, N * S):
                    t1 += tl.load(part_ptr + r * C + c, mask=cmask, other=0.0)
                    t2 += tl.load(part_ptr + PS + r * C + c, mask=cmask, other=0.0)
                m = (N * HW).to(tl.float32)
                d = t1 / m
                mean = k + d
                var = nanmax(t2 / m - d * d, 0.0)
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
            tl.store(cs_ptr + l_z1 + n * C + c, s1 - HW * (mean - k), mask=cmask)
            first = cmask & (n == 0)
            tl.store(cs_ptr + l_a + c, a, mask=first)
            tl.store(cs_ptr + l_b + c, b, mask=first)
            tl.store(cs_ptr + l_mean + c, mean, mask=first)
            tl.store(cs_ptr + l_var + c, var, mask=first)
            tl.store(cs_ptr + l_invstd + c, invstd, mask=first)
        tl.store(cs_ptr + l_avg + n * C + c, avg, mask=cmask)
        tl.store(cs_ptr + l_max + n * C + c, mx, mask=cmask)
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
            acc_a += tl.sum(w * tl.load(cs_ptr + l_avg + n * C + c, mask=cmask, other=0.0)[None, :], 1)
            if USE_MAX:
                acc_m += tl.sum(w * tl.load(cs_ptr + l_max + n * C + c, mask=cmask, other=0.0)[None, :], 1)
        bias = tl.load(b1_ptr + h, mask=hmask, other=0.0).to(tl.float32)
        tl.store(cs_ptr + l_hid + n * (2 * HD if USE_MAX else HD) + h, nanmax(acc_a + bias, 0.0), mask=hmask)
        if USE_MAX:
            tl.store(cs_ptr + l_hid + n * (2 * HD if USE_MAX else HD) + HD + h, nanmax(acc_m + bias, 0.0), mask=hmask)
    tl.debug_barrier()
    for c0 in range(0, C, BC):  # gc = s·σ(W2·(hid_avg + hid_max) + 2·b2)
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        acc = tl.zeros([BC], dtype=tl.float32)
        for h0 in range(0, HD, BH):
            h = h0 + tl.arange(0, BH)
            hmask = h < HD
            w = tl.load(w2_ptr + c[:, None] * HD + h[None, :], mask=cmask[:, None] & hmask[None, :], other=0.0)
            hs = tl.load(cs_ptr + l_hid + n * (2 * HD if USE_MAX else HD) + h, mask=hmask, other=0.0)
            if USE_MAX:
                hs += tl.load(cs_ptr + l_hid + n * (2 * HD if USE_MAX else HD) + HD + h, mask=hmask, other=0.0)
            acc += tl.sum(w.to(tl.float32) * hs[None, :], 1)
        bias = tl.load(b2_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        logit = acc + (bias * 2.0 if USE_MAX else bias)
        g = sigmoid(logit)
        if HAS_SCALE:
            g = g * tl.load(scale_ptr).to(tl.float32)
        tl.store(cs_ptr + l_gc + n * C + c, g, mask=cmask)
        tl.store(cs_ptr + l_gl + n * C + c, logit, mask=cmask)


@jit
def _spatial_pool_kernel(
    z_ptr, cs_ptr, l_a, l_b, l_gc, sp_ptr, PS, C, HW, L, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """Σ and max over channels [s·L, (s+1)·L) of x·g_c, per pixel, into sp[(n·S + s)·HW + hw]
    and sp[PS + ...]. Grid (pixel blocks, S, N)."""
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
            x = x * per_c(cs_ptr + l_a, c, cmask) + per_c(cs_ptr + l_b, c, cmask)
        xg = x * per_c(cs_ptr + l_gc + n * C, c, cmask)
        acc += tl.where(mask, xg, 0.0)
        mx = nanmax(mx, tl.where(mask, xg, float('-inf')))
    out = sp_ptr + (n * tl.num_programs(1) + s) * HW + hw
    tl.store(out, tl.sum(acc, 0), mask=hmask)
    tl.store(out + PS, tl.reduce(mx, 0, nanmax), mask=hmask)


@jit
def _spatial_conv_kernel(
    sp_ptr, PS, S, ps_ptr, P, stat_ptr, w_ptr, C, H, W, HW, PB,
    AVG_FIRST: tl.constexpr, K: tl.constexpr, BATCH: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    """The k×k conv (one output channel, zero padding) of the channel-pooled maps of image n at
    BP pixels (grid (pixel blocks, N)): the maps from the partials (stored for the own pixels as
    planes 0 and 1 of the pixel state), o stored (plane 2); with BATCH the block's count, mean
    and Σ (o − mean)² into stat[3·(n·PB + pb)]."""
    pb, n = tl.program_id(0), tl.program_id(1)
    p = pb * BP + tl.arange(0, BP)
    pmask = p < HW
    base = sp_ptr + n * S * HW
    sa = tl.zeros([BP], dtype=tl.float32)
    sm = tl.full([BP], float('-inf'), dtype=tl.float32)
    for s in range(0, S):
        sa += tl.load(base + s * HW + p, mask=pmask, other=0.0)
        sm = nanmax(sm, tl.load(base + PS + s * HW + p, mask=pmask, other=0.0))
    tl.store(ps_ptr + n * HW + p, sa / C, mask=pmask)
    tl.store(ps_ptr + P + n * HW + p, sm, mask=pmask)
    ph = p // W
    pw = p - ph * W
    acc = tl.zeros([BP], dtype=tl.float32)
    for t in range(0, K * K):
        qh = ph + (t // K - K // 2)
        qw = pw + (t % K - K // 2)
        qmask = pmask & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
        q = qh * W + qw
        va = tl.zeros([BP], dtype=tl.float32)
        vm = tl.full([BP], float('-inf'), dtype=tl.float32)
        for s in range(0, S):
            va += tl.load(base + s * HW + q, mask=qmask, other=0.0)
            vm = nanmax(vm, tl.load(base + PS + s * HW + q, mask=qmask, other=0.0))
        va = tl.where(qmask, va / C, 0.0)
        vm = tl.where(qmask, vm, 0.0)
        wa = tl.load(w_ptr + (0 if AVG_FIRST else K * K) + t).to(tl.float32)
        wm = tl.load(w_ptr + (K * K if AVG_FIRST else 0) + t).to(tl.float32)
        acc += wa * va + wm * vm
    tl.store(ps_ptr + 2 * P + n * HW + p, acc, mask=pmask)
    if BATCH:
        cnt = tl.sum(pmask.to(tl.float32), 0)
        mean = tl.sum(tl.where(pmask, acc, 0.0), 0) / cnt
        d = tl.where(pmask, acc - mean, 0.0)
        out = stat_ptr + 3 * (n * PB + pb)
        tl.store(out, cnt)
        tl.store(out + 1, mean)
        tl.store(out + 2, tl.sum(d * d, 0))


@jit
def _combined_stats(stat_ptr, NPB, BS: tl.constexpr):
    """(mean, biased variance) of all pixels from NPB blocks' (count, mean, M2), in a fixed order."""
    tot = tl.zeros([BS], dtype=tl.float32)
    acc = tl.zeros([BS], dtype=tl.float32)
    for i0 in range(0, NPB, BS):
        i = i0 + tl.arange(0, BS)
        im = i < NPB
        cnt = tl.load(stat_ptr + 3 * i, mask=im, other=0.0)
        tot += cnt
        acc += cnt * tl.load(stat_ptr + 3 * i + 1, mask=im, other=0.0)
    m = tl.sum(tot, 0)
    mean = tl.sum(acc, 0) / m
    acc = tl.zeros([BS], dtype=tl.float32)
    for i0 in range(0, NPB, BS):
        i = i0 + tl.arange(0, BS)
        im = i < NPB
        d = tl.load(stat_ptr + 3 * i + 1, mask=im, other=0.0) - mean
        acc += tl.load(stat_ptr + 3 * i + 2, mask=im, other=0.0) + tl.load(stat_ptr + 3 * i, mask=im, other=0.0) * d * d
    return mean, tl.sum(acc, 0) / m


@jit
def _apply_spatial_kernel(
    z_ptr, out_ptr, cs_ptr, l_a, l_b, l_gc, l_sstat, ps_ptr, P, stat_ptr, NPB,
    sw_ptr, sb_ptr, srm_ptr, srv_ptr, scale_ptr, C, HW, L, sn, sc, shw, on, oc, ohw, eps,
    HAS_AFFINE: tl.constexpr, BATCH: tl.constexpr, HAS_SCALE: tl.constexpr,
    BC: tl.constexpr, BHW: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """CBAM's y = x·g_c·g_s over channels [s·L, (s+1)·L) of BHW pixels (grid (pixel blocks, S,
    N)), g_s formed here from o and the spatial BN's statistics (BATCH: combined from the conv's
    blocks); split 0 stores g_s (plane 3), program (0, 0, 0) the statistics used."""
    hb, s, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    if BATCH:
        mean, var = _combined_stats(stat_ptr, NPB, BS)
    else:
        mean = tl.load(srm_ptr).to(tl.float32)
        var = tl.load(srv_ptr).to(tl.float32)
    invstd = 1.0 / tl.sqrt(var + eps)
    o = tl.load(ps_ptr + 2 * P + n * HW + hw, mask=hmask, other=0.0)
    t = (o - mean) * invstd * tl.load(sw_ptr).to(tl.float32) + tl.load(sb_ptr).to(tl.float32)
    g = sigmoid(t)
    if HAS_SCALE:
        g = g * tl.load(scale_ptr).to(tl.float32)
    tl.store(ps_ptr + 3 * P + n * HW + hw, g, mask=hmask & (s == 0))
    first = (hb == 0) & (s == 0) & (n == 0)
    tl.store(cs_ptr + l_sstat, mean, mask=first)
    tl.store(cs_ptr + l_sstat + 1, var, mask=first)
    tl.store(cs_ptr + l_sstat + 2, invstd, mask=first)
    zb = z_ptr + n.to(tl.int64) * sn
    ob = out_ptr + n.to(tl.int64) * on
    gs = g[None, :]
    lo = s * L
    hi = tl.minimum(lo + L, C)
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = c_tile(c0, hi, hw, hmask, sc, shw, BC)
        x = tl.load(zb + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_AFFINE:
            x = x * per_c(cs_ptr + l_a, c, cmask) + per_c(cs_ptr + l_b, c, cmask)
        y = (x * per_c(cs_ptr + l_gc + n * C, c, cmask)) * gs
        tl.store(ob + c[:, None] * oc + hw[None, :] * ohw, y.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _apply_channel_kernel(
    z_ptr, out_ptr, cs_ptr, l_a, l_b, l_gc, C, HW, sn, sc, shw, on, oc, ohw,
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
        x = x * per_c(cs_ptr + l_a, c, cmask) + per_c(cs_ptr + l_b, c, cmask)
    y = x * per_c(cs_ptr + l_gc + n * C, c, cmask)
    out = out_ptr + n.to(tl.int64) * on + c[:, None] * oc + hw[None, :] * ohw
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _update_stats_kernel(
    rm_ptr, rv_ptr, nbt_ptr, cs_ptr, l_mean, l_var, C, momentum, unbias,
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
        m = tl.load(cs_ptr + l_mean + c, mask=cmask, other=0.0)
        v = tl.load(cs_ptr + l_var + c, mask=cmask, other=0.0)
        tl.store(rm_ptr + c, (rm * (1.0 - mom) + m * mom).to(rm_ptr.dtype.element_ty), mask=cmask)
        tl.store(rv_ptr + c, (rv * (1.0 - mom) + v * unbias * mom).to(rv_ptr.dtype.element_ty), mask=cmask)


# ---------------------------------------------------------------- Triton kernels: backward


@jit
def _gate_grads_kernel(
    dy_ptr, z_ptr, cs_ptr, l_a, l_b, l_gc, l_mean, ps_ptr, P, pp_ptr, PP, pd_ptr, PD,
    C, HW, L, NB, sn, sc, shw, dn, dc, dhw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """CBAM's gate gradients in one pass over (dy, x), u = dy·g_s: per pixel block and channel
    Σ u·x (BN_SUMS: Σ u and Σ u·(z − μ)) into pp[(n·NB + hb)·C + c] (and pp[PP + ...]); per
    pixel over channels [s·L, (s+1)·L) Σ dy·x·g_c and Σ [x·g_c = s_max] (the spatial max's ties)
    into pd[(n·S + s)·HW + hw] and pd[PD + ...]. Grid (NB, S, N)."""
    hb, s, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = hb * BHW + tl.arange(0, BHW)
    hmask = hw < HW
    m = per_hw(ps_ptr + P + n * HW, hw, hmask)
    gs = per_hw(ps_ptr + 3 * P + n * HW, hw, hmask)
    ds = tl.zeros([BC, BHW], dtype=tl.float32)
    cnt = tl.zeros([BC, BHW], dtype=tl.float32)
    lo = s * L
    hi = tl.minimum(lo + L, C)
    part = pp_ptr + (n * NB + hb) * C
    for c0 in range(lo, hi, BC):
        c, cmask, mask, off = c_tile(c0, hi, hw, hmask, sc, shw, BC)
        z = tl.load(z_ptr + n.to(tl.int64) * sn + off, mask=mask, other=0.0).to(tl.float32)
        dof = n.to(tl.int64) * dn + c[:, None] * dc + hw[None, :] * dhw
        dy = tl.load(dy_ptr + dof, mask=mask, other=0.0).to(tl.float32)
        if HAS_AFFINE:
            x = z * per_c(cs_ptr + l_a, c, cmask) + per_c(cs_ptr + l_b, c, cmask)
        else:
            x = z
        g = per_c(cs_ptr + l_gc + n * C, c, cmask)
        u = dy * gs
        if BN_SUMS:
            zc = tl.where(mask, z - per_c(cs_ptr + l_mean, c, cmask), 0.0)
            tl.store(part + c, tl.sum(u, 1), mask=cmask)
            tl.store(part + PP + c, tl.sum(u * zc, 1), mask=cmask)
        else:
            tl.store(part + c, tl.sum(u * x, 1), mask=cmask)
        ds += dy * x * g
        cnt += tl.where(mask & (x * g == m), 1.0, 0.0)
    out = pd_ptr + (n * tl.num_programs(1) + s) * HW + hw
    tl.store(out, tl.sum(ds, 0), mask=hmask)
    tl.store(out + PD, tl.sum(cnt, 0), mask=hmask)


@jit
def _se_grads_kernel(
    dy_ptr, z_ptr, cs_ptr, l_a, l_b, l_mean, pp_ptr, PP, C, HW, L, sn, sc, shw, dn, dc, dhw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """SE's gate gradient Σ dy·x per (n, c) over pixels [s·L, (s+1)·L); BN_SUMS: Σ dy and
    Σ dy·(z − μ) (at pp[PP + ...]). Grid (S, channel blocks, N)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    if HAS_AFFINE:
        a, b = per_c(cs_ptr + l_a, c, cmask), per_c(cs_ptr + l_b, c, cmask)
    if BN_SUMS:
        mu = per_c(cs_ptr + l_mean, c, cmask)
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
    out = pp_ptr + (n * tl.num_programs(0) + s) * C + c
    tl.store(out, tl.sum(t1, 1), mask=cmask)
    if BN_SUMS:
        tl.store(out + PP, tl.sum(t2, 1), mask=cmask)


@jit
def _spatial_gate_grad_kernel(
    pd_ptr, PD, S, ps_ptr, P, cs_ptr, l_sstat, sw_ptr, sb_ptr, dt_ptr, bstat_ptr, HW, PB, BP: tl.constexpr,
):  # fmt: skip
    """d t = dg_s·g_s·σ(−t) (t: the spatial BN's output, recomputed: 1 − σ(t) would round away the
    gradient of a saturated gate) per pixel from the partials (into
    dt[n·HW + p]), the spatial max's ties per pixel (dt[P + ...]), and per block Σ dt and Σ dt·ô
    (ô: the normalised conv output) into bstat. Grid (pixel blocks, N)."""
    pb, n = tl.program_id(0), tl.program_id(1)
    p = pb * BP + tl.arange(0, BP)
    pmask = p < HW
    dgs = tl.zeros([BP], dtype=tl.float32)
    cnt = tl.zeros([BP], dtype=tl.float32)
    for s in range(0, S):
        q = pd_ptr + (n * S + s) * HW + p
        dgs += tl.load(q, mask=pmask, other=0.0)
        cnt += tl.load(q + PD, mask=pmask, other=0.0)
    tl.store(dt_ptr + P + n * HW + p, cnt, mask=pmask)
    g = tl.load(ps_ptr + 3 * P + n * HW + p, mask=pmask, other=0.0)
    o = tl.load(ps_ptr + 2 * P + n * HW + p, mask=pmask, other=0.0)
    xh = (o - tl.load(cs_ptr + l_sstat)) * tl.load(cs_ptr + l_sstat + 2)
    t = xh * tl.load(sw_ptr).to(tl.float32) + tl.load(sb_ptr).to(tl.float32)
    dt = tl.where(pmask, dgs * g * sigmoid(-t), 0.0)
    tl.store(dt_ptr + n * HW + p, dt, mask=pmask)
    out = bstat_ptr + 2 * (n * PB + pb)
    tl.store(out, tl.sum(dt, 0))
    tl.store(out + 1, tl.sum(dt * xh, 0))


@jit
def _spatial_conv_grad_kernel(
    dt_ptr, P, bstat_ptr, NPB, ps_ptr, cs_ptr, l_sstat, sw_ptr, w_ptr, wm_ptr, dwp_ptr, dsw_ptr, dsb_ptr,
    C, H, W, HW, M,
    AVG_FIRST: tl.constexpr, K: tl.constexpr, BATCH: tl.constexpr, BP: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """Through the spatial BN and the k×k conv (grid (pixel blocks, N)): d o from dt and the
    BN's totals; the pooled maps' gradients as w_avg = d savg / C and w_max = d smax / ties (into
    wm[n·HW + p] and wm[P + ...]); per block the conv weight's partial gradients (2·k² of them);
    program (0, 0) the spatial BN's weight and bias gradients."""
    pb, n = tl.program_id(0), tl.program_id(1)
    p = pb * BP + tl.arange(0, BP)
    pmask = p < HW
    s1 = tl.zeros([BS], dtype=tl.float32)
    s2 = tl.zeros([BS], dtype=tl.float32)
    for i0 in range(0, NPB, BS):
        i = i0 + tl.arange(0, BS)
        im = i < NPB
        s1 += tl.load(bstat_ptr + 2 * i, mask=im, other=0.0)
        s2 += tl.load(bstat_ptr + 2 * i + 1, mask=im, other=0.0)
    sum_dt = tl.sum(s1, 0)
    sum_dtx = tl.sum(s2, 0)
    mean = tl.load(cs_ptr + l_sstat)
    invstd = tl.load(cs_ptr + l_sstat + 2)
    coef = tl.load(sw_ptr).to(tl.float32) * invstd
    m1 = sum_dt / M
    m2 = sum_dtx / M
    ph = p // W
    pw = p - ph * W
    da = tl.zeros([BP], dtype=tl.float32)
    dm = tl.zeros([BP], dtype=tl.float32)
    for t in range(0, K * K):  # the transposed conv: Σ_t w[t]·do[p − off_t]
        qh = ph - (t // K - K // 2)
        qw = pw - (t % K - K // 2)
        qmask = pmask & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
        q = n * HW + qh * W + qw
        dtq = tl.load(dt_ptr + q, mask=qmask, other=0.0)
        if BATCH:
            xq = (tl.load(ps_ptr + 2 * P + q, mask=qmask, other=0.0) - mean) * invstd
            doq = coef * (dtq - m1 - xq * m2)
        else:
            doq = coef * dtq
        doq = tl.where(qmask, doq, 0.0)
        da += tl.load(w_ptr + (0 if AVG_FIRST else K * K) + t).to(tl.float32) * doq
        dm += tl.load(w_ptr + (K * K if AVG_FIRST else 0) + t).to(tl.float32) * doq
    ties = tl.load(dt_ptr + P + n * HW + p, mask=pmask, other=1.0)
    tl.store(wm_ptr + n * HW + p, da / C, mask=pmask)
    tl.store(wm_ptr + P + n * HW + p, dm / nanmax(ties, 1.0), mask=pmask)
    dtp = tl.load(dt_ptr + n * HW + p, mask=pmask, other=0.0)
    if BATCH:
        xp = (tl.load(ps_ptr + 2 * P + n * HW + p, mask=pmask, other=0.0) - mean) * invstd
        dop = coef * (dtp - m1 - xp * m2)
    else:
        dop = coef * dtp
    dop = tl.where(pmask, dop, 0.0)
    out = dwp_ptr + (n * tl.num_programs(0) + pb) * 2 * K * K
    for t in range(0, K * K):  # Σ_p do[p]·map[p + off_t]
        qh = ph + (t // K - K // 2)
        qw = pw + (t % K - K // 2)
        qmask = pmask & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
        q = n * HW + qh * W + qw
        va = tl.load(ps_ptr + q, mask=qmask, other=0.0)
        vm = tl.load(ps_ptr + P + q, mask=qmask, other=0.0)
        tl.store(out + (0 if AVG_FIRST else K * K) + t, tl.sum(dop * va, 0))
        tl.store(out + (K * K if AVG_FIRST else 0) + t, tl.sum(dop * vm, 0))
    first = (pb == 0) & (n == 0)
    tl.store(dsw_ptr, sum_dtx.to(dsw_ptr.dtype.element_ty), mask=first)
    tl.store(dsb_ptr, sum_dt.to(dsb_ptr.dtype.element_ty), mask=first)


@jit
def _spatial_pool_grad_kernel(
    z_ptr, cs_ptr, l_a, l_b, l_gc, l_max, l_mean, ps_ptr, P, wm_ptr, q_ptr, PQ, C, HW, L, sn, sc, shw,
    HAS_AFFINE: tl.constexpr, BN_SUMS: tl.constexpr, BC: tl.constexpr, BHW: tl.constexpr,
):  # fmt: skip
    """g_c's gradient through the spatial pooling, Σ x·w with w = w_avg + [x·g_c = s_max]·w_max,
    and the channel max's ties Σ [x = c_max], per (n, c) over pixels [s·L, (s+1)·L), into q[k·PQ
    + (n·S + s)·C + c] (k = 0, 2); BN_SUMS instead of Σ x·w: Σ w (k = 0) and Σ w·(z − μ) (1), and
    also Σ [x = c_max]·(z − μ) (3). Grid (S, channel blocks, N)."""
    s, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    zb = z_ptr + n.to(tl.int64) * sn
    if HAS_AFFINE:
        a, b = per_c(cs_ptr + l_a, c, cmask), per_c(cs_ptr + l_b, c, cmask)
    g = per_c(cs_ptr + l_gc + n * C, c, cmask)
    cm = per_c(cs_ptr + l_max + n * C, c, cmask)
    if BN_SUMS:
        mu = per_c(cs_ptr + l_mean, c, cmask)
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
        m = per_hw(ps_ptr + P + n * HW, hw, hmask)
        w = per_hw(wm_ptr + n * HW, hw, hmask) + tl.where(x * g == m, per_hw(wm_ptr + P + n * HW, hw, hmask), 0.0)
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
    out = q_ptr + (n * tl.num_programs(0) + s) * C + c
    tl.store(out, tl.sum(t1, 1), mask=cmask)
    tl.store(out + 2 * PQ, tl.sum(ties, 1), mask=cmask)
    if BN_SUMS:
        tl.store(out + PQ, tl.sum(t2, 1), mask=cmask)
        tl.store(out + 3 * PQ, tl.sum(t4, 1), mask=cmask)


@jit
def _channel_gate_grad_kernel(
    pp_ptr, PP, NB, q_ptr, PQ, S3, cs_ptr, l_gc, l_gl, l_hid, l_a, bnb_ptr, w2_ptr,
    sm_ptr, o_dl, o_sq1, o_sq2, o_dhp, dw2_ptr, db2_ptr, dwp_ptr, NPB, dconv_ptr, N, C, HD, KK2,
    CBAM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """The channel gate's backward for BC channels, all images (grid (channel blocks,)): dg_c
    from the partials (CBAM: the gate-gradient pass plus the spatial-pool-gradient pass; a folded
    BN: from its sums Q1, Q2, kept for the last kernel), d logit = dg_c·g_c·σ(−logit), W2's and b2's
    gradients, and the block's share of d hid = W2ᵀ·d logit (partials). Program 0 adds the conv
    weight's partial gradients."""
    cb = tl.program_id(0)
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    if BN:
        a = tl.load(cs_ptr + l_a + c, mask=cmask, other=0.0)
        beta = tl.load(bnb_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    dl_sum = tl.zeros([BC], dtype=tl.float32)
    for n in range(0, N):
        t1 = tl.zeros([BC], dtype=tl.float32)
        t2 = tl.zeros([BC], dtype=tl.float32)
        for j in range(0, NB):
            t1 += tl.load(pp_ptr + (n * NB + j) * C + c, mask=cmask, other=0.0)
            if BN:
                t2 += tl.load(pp_ptr + PP + (n * NB + j) * C + c, mask=cmask, other=0.0)
        if CBAM:
            for j in range(0, S3):
                t1 += tl.load(q_ptr + (n * S3 + j) * C + c, mask=cmask, other=0.0)
                if BN:
                    t2 += tl.load(q_ptr + PQ + (n * S3 + j) * C + c, mask=cmask, other=0.0)
        if BN:  # x = a·(z − μ) + β: Σ (u + w)·x from the two sums
            tl.store(sm_ptr + o_sq1 + n * C + c, t1, mask=cmask)
            tl.store(sm_ptr + o_sq2 + n * C + c, t2, mask=cmask)
            dgc = a * t2 + beta * t1
        else:
            dgc = t1
        g = tl.load(cs_ptr + l_gc + n * C + c, mask=cmask, other=0.0)
        lg = tl.load(cs_ptr + l_gl + n * C + c, mask=cmask, other=0.0)
        dl = tl.where(cmask, dgc * g * sigmoid(-lg), 0.0)
        tl.store(sm_ptr + o_dl + n * C + c, dl, mask=cmask)
        dl_sum += dl
        for h0 in range(0, HD, BH):
            h = h0 + tl.arange(0, BH)
            hmask = h < HD
            w = tl.load(w2_ptr + c[:, None] * HD + h[None, :], mask=cmask[:, None] & hmask[None, :], other=0.0)
            tl.store(sm_ptr + o_dhp + (cb * N + n) * HD + h, tl.sum(w.to(tl.float32) * dl[:, None], 0), mask=hmask)
    tl.store(db2_ptr + c, (dl_sum * 2.0 if CBAM else dl_sum).to(db2_ptr.dtype.element_ty), mask=cmask)
    tl.debug_barrier()
    for h0 in range(0, HD, BH):
        h = h0 + tl.arange(0, BH)
        hmask = h < HD
        acc = tl.zeros([BC, BH], dtype=tl.float32)
        for n in range(0, N):
            dl = tl.load(sm_ptr + o_dl + n * C + c, mask=cmask, other=0.0)
            hs = tl.load(cs_ptr + l_hid + n * (2 * HD if CBAM else HD) + h, mask=hmask, other=0.0)
            if CBAM:
                hs += tl.load(cs_ptr + l_hid + n * (2 * HD if CBAM else HD) + HD + h, mask=hmask, other=0.0)
            acc += dl[:, None] * hs[None, :]
        dw2 = dw2_ptr + c[:, None] * HD + h[None, :]
        tl.store(dw2, acc.to(dw2_ptr.dtype.element_ty), mask=cmask[:, None] & hmask[None, :])
    if CBAM:
        for i0 in range(0, KK2, BS):
            i = i0 + tl.arange(0, BS)
            im = (i < KK2) & (cb == 0)
            acc1 = tl.zeros([BS], dtype=tl.float32)
            for j in range(0, NPB):
                acc1 += tl.load(dwp_ptr + j * KK2 + i, mask=im, other=0.0)
            tl.store(dconv_ptr + i, acc1.to(dconv_ptr.dtype.element_ty), mask=im)


@jit
def _channel_mlp_grad_kernel(
    sm_ptr, o_dhp, CB, cs_ptr, l_hid, l_avg, l_max, l_gc, l_a, l_mean, l_invstd, l_z1, w1_ptr,
    dw1_ptr, db1_ptr, q_ptr, PQ, S3, o_sq1, o_sq2, o_k2, o_k0, o_bz, o_d, dbnw_ptr, dbnb_ptr,
    N, C, HD, HW, M,
    CBAM: tl.constexpr, BN: tl.constexpr, BATCH: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    """The MLP's first layer backward for BC channels (grid (channel blocks,)): d hid from the
    partials (masked where hid ≤ 0: a NaN hid passes the gradient on, as torch's relu does), W1's
    gradient (program 0: b1's), d avg and d max, and the input gradient's
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
                dh += tl.load(sm_ptr + o_dhp + (j * N + n) * HD + h, mask=hmask, other=0.0)
            ha = tl.load(cs_ptr + l_hid + n * (2 * HD if CBAM else HD) + h, mask=hmask, other=0.0)
            dha = tl.where(ha <= 0, 0.0, dh)
            acc += dha[:, None] * tl.load(cs_ptr + l_avg + n * C + c, mask=cmask, other=0.0)[None, :]
            dbias += dha
            if CBAM:
                hm = tl.load(cs_ptr + l_hid + n * (2 * HD if CBAM else HD) + HD + h, mask=hmask, other=0.0)
                dhm = tl.where(hm <= 0, 0.0, dh)
                acc += dhm[:, None] * tl.load(cs_ptr + l_max + n * C + c, mask=cmask, other=0.0)[None, :]
                dbias += dhm
        dw1 = dw1_ptr + h[:, None] * C + c[None, :]
        tl.store(dw1, acc.to(dw1_ptr.dtype.element_ty), mask=hmask[:, None] & cmask[None, :])
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
                dh += tl.load(sm_ptr + o_dhp + (j * N + n) * HD + h, mask=hmask, other=0.0)
            w = tl.load(w1_ptr + h[:, None] * C + c[None, :], mask=hmask[:, None] & cmask[None, :], other=0.0)
            w = w.to(tl.float32)
            ha = tl.load(cs_ptr + l_hid + n * (2 * HD if CBAM else HD) + h, mask=hmask, other=0.0)
            davg += tl.sum(w * tl.where(ha <= 0, 0.0, dh)[:, None], 0)
            if CBAM:
                hm = tl.load(cs_ptr + l_hid + n * (2 * HD if CBAM else HD) + HD + h, mask=hmask, other=0.0)
                dmax += tl.sum(w * tl.where(hm <= 0, 0.0, dh)[:, None], 0)
        k0 = davg / HW
        tl.store(sm_ptr + o_k0 + n * C + c, k0, mask=cmask)
        if CBAM:
            ties = tl.zeros([BC], dtype=tl.float32)
            tie_z = tl.zeros([BC], dtype=tl.float32)
            for j in range(0, S3):
                ties += tl.load(q_ptr + 2 * PQ + (n * S3 + j) * C + c, mask=cmask, other=0.0)
                if BN:
                    tie_z += tl.load(q_ptr + 3 * PQ + (n * S3 + j) * C + c, mask=cmask, other=0.0)
            k2 = dmax / nanmax(ties, 1.0)
            tl.store(sm_ptr + o_k2 + n * C + c, k2, mask=cmask)
        if BN:  # Σ_hw dx and Σ_hw dx·(z − μ) of dx = g_c·(u + w) + [x = c_max]·K2 + K0
            g = tl.load(cs_ptr + l_gc + n * C + c, mask=cmask, other=0.0)
            sdx += g * tl.load(sm_ptr + o_sq1 + n * C + c, mask=cmask, other=0.0) + k0 * HW
            sdxz += g * tl.load(sm_ptr + o_sq2 + n * C + c, mask=cmask, other=0.0)
            sdxz += k0 * tl.load(cs_ptr + l_z1 + n * C + c, mask=cmask, other=0.0)
            if CBAM:
                sdx += k2 * ties
                sdxz += k2 * tie_z
    if BN:
        a = tl.load(cs_ptr + l_a + c, mask=cmask, other=0.0)
        invstd = tl.load(cs_ptr + l_invstd + c, mask=cmask, other=0.0)
        tl.store(dbnw_ptr + c, (invstd * sdxz).to(dbnw_ptr.dtype.element_ty), mask=cmask)
        tl.store(dbnb_ptr + c, sdx.to(dbnb_ptr.dtype.element_ty), mask=cmask)
        if BATCH:  # dz = a·(dx − Σdx/M − (z − μ)·invstd²·Σdx(z − μ)/M)
            k = a * invstd * invstd * sdxz / M
            tl.store(sm_ptr + o_bz + c, -k, mask=cmask)
            mean = tl.load(cs_ptr + l_mean + c, mask=cmask, other=0.0)
            tl.store(sm_ptr + o_d + c, k * mean - a * sdx / M, mask=cmask)


@jit
def _input_grad_kernel(
    dy_ptr, z_ptr, dx_ptr, cs_ptr, l_a, l_b, l_gc, l_max, ps_ptr, P, wm_ptr, sm_ptr, o_k2, o_k0, o_bz, o_d,
    C, HW, sn, sc, shw, dn, dc, dhw,
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
    g = per_c(cs_ptr + l_gc + n * C, c, cmask)
    v = per_c(sm_ptr + o_k0 + n * C, c, cmask)
    if CBAM or (BN and BATCH):
        z = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if CBAM:
        if HAS_AFFINE:
            x = z * per_c(cs_ptr + l_a, c, cmask) + per_c(cs_ptr + l_b, c, cmask)
        else:
            x = z
        m = per_hw(ps_ptr + P + n * HW, hw, hmask)
        w = per_hw(wm_ptr + n * HW, hw, hmask) + tl.where(x * g == m, per_hw(wm_ptr + P + n * HW, hw, hmask), 0.0)
        v += g * (dy * per_hw(ps_ptr + 3 * P + n * HW, hw, hmask) + w)
        v += tl.where(x == per_c(cs_ptr + l_max + n * C, c, cmask), per_c(sm_ptr + o_k2 + n * C, c, cmask), 0.0)
    else:
        v += g * dy
    if BN:
        v = v * per_c(cs_ptr + l_a, c, cmask)
        if BATCH:
            v += per_c(sm_ptr + o_bz, c, cmask) * z + per_c(sm_ptr + o_d, c, cmask)
    tl.store(dx_ptr + off, v.to(dx_ptr.dtype.element_ty), mask=mask)


#: the kernels that touch no full-size tensor (their work is per channel or per pixel: their
#: registers and spills cost nothing measurable against their launch; tools/analysis/kernel_compile.py)
SMALL_KERNELS = (
    '_channel_gate_kernel',
    '_spatial_conv_kernel',
    '_update_stats_kernel',
    '_spatial_gate_grad_kernel',
    '_spatial_conv_grad_kernel',
    '_channel_gate_grad_kernel',
    '_channel_mlp_grad_kernel',
)


# ---------------------------------------------------------------- the Triton launch plans


class _Forward(NamedTuple):
    """One forward's launch settings (per kernel: grid, length per split, BC, BHW, warps)."""

    pool: tuple
    s1: int
    spool: Optional[tuple]  # CBAM
    s3: int
    conv: Optional[tuple]  # CBAM: (grid, BP, warps)
    pb: int
    apply: tuple
    gate: tuple  # (BC, BH, warps)


class _Backward(NamedTuple):
    """One backward's launch settings and the offsets of its small scratch tensor."""

    grads: tuple  # CBAM: gate_grads (grid, length, BC, BHW, warps); SE: se_grads
    nb: int  # partials per (n, c) of the first pass
    sgrad: Optional[tuple]  # CBAM: (grid, BP, warps) of both spatial-gate kernels
    pb: int
    pgrad: Optional[tuple]  # CBAM: spatial_pool_grad
    s3: int
    cgrad: tuple  # (grid, BC, BH, warps) of both channel-gate kernels
    cb: int
    dx: tuple  # (grid, BC, BHW)
    o: dict  # offsets of the small scratch tensor
    size: int


_BP = 256  # pixels per program of the spatial-gate kernels


def _hw_plan(n: int, c: int, hw: int, cl: bool, sms: int, warps: Optional[int]) -> tuple:
    """A reduction over H×W per (n, c): (grid (S, channel blocks, N), pixels per split, BC, BHW,
    warps: ``warps``, else ``launch.OVER_HW_WARPS``'s rule)."""
    t = L.tiles(cl, c, hw)
    cb, nb = L.cdiv(c, t.bc), L.cdiv(hw, t.bhw)
    s, per = L.splits(nb, n * cb, L.WAVES * sms)
    return (s, cb, n), per * t.bhw, t.bc, t.bhw, warps or (L.WARPS if cl else 2 * L.WARPS)


def _c_plan(n: int, c: int, hw: int, cl: bool, sms: int, elements: int = 0) -> tuple:
    """A loop over C per pixel block: (grid (pixel blocks, S, N), channels per split, BC, BHW, warps):
    8 elements of a tile per thread, or 4 with ``elements`` (a kernel with many accumulators)."""
    t = L.tiles(cl, c, hw, per_pixel=True, elements=elements)
    cb, nb = L.cdiv(c, t.bc), L.cdiv(hw, t.bhw)
    s, per = L.splits(cb, n * nb, L.WAVES * sms)
    return (nb, s, n), per * t.bc, t.bc, t.bhw, max(L.WARPS, t.bc * t.bhw // (32 * (4 if elements else 8)))


def _gate_tiles(c: int, hd: int) -> tuple:
    """(BC, BH, warps) of the small channel-gate kernels: 128 channels by up to 16 hidden units (a
    tile wider than C is masked) at 8 warps."""
    return 128, min(16, L.pow2(hd)), 8


@functools.lru_cache(maxsize=None)
def _forward_plan(n: int, c: int, hw: int, hd: int, cl: bool, cbam: bool, sms: int, hw_warps=None) -> _Forward:
    pool = _hw_plan(n, c, hw, cl, sms, hw_warps)
    spool = conv = None
    s3 = pb = 0
    if cbam:
        spool = _c_plan(n, c, hw, cl, sms)
        s3, pb = spool[0][1], L.cdiv(hw, _BP)
        conv = ((pb, n), _BP, 4)
        apply = spool
    else:
        t = L.tiles(cl, c, hw)
        apply = ((L.cdiv(hw, t.bhw), L.cdiv(c, t.bc), n), 0, t.bc, t.bhw, L.WARPS)
    return _Forward(pool, pool[0][0], spool, s3, conv, pb, apply, _gate_tiles(c, hd))


@functools.lru_cache(maxsize=None)
def _backward_plan(
    n: int, c: int, hw: int, hd: int, cl: bool, cbam: bool, affine: bool, sms: int, hw_warps=None
) -> _Backward:
    gc_bc, gc_bh, gc_w = _gate_tiles(c, hd)
    cb = L.cdiv(c, gc_bc)
    sgrad = pgrad = None
    pb = s3 = 0
    if cbam:  # (with a folded BN's sums: half the tile, as many pixels per block, within 128 registers)
        grads = _c_plan(n, c, hw, cl, sms, L.TILE if affine else 0)
        pb = L.cdiv(hw, _BP)
        sgrad = ((pb, n), _BP, 4)
        pgrad = _hw_plan(n, c, hw, cl, sms, hw_warps)
        s3 = pgrad[0][0]
    else:
        grads = _hw_plan(n, c, hw, cl, sms, hw_warps)
    nb = grads[0][0]
    names = ('dl', 'sq1', 'sq2', 'dhp', 'k2', 'k0', 'bz', 'd')
    offsets, size = _offsets([n * c] * 3 + [cb * n * hd] + [n * c] * 2 + [c] * 2)
    t = L.tiles(cl, c, hw)
    dx = ((L.cdiv(hw, t.bhw), L.cdiv(c, t.bc), n), t.bc, t.bhw)
    return _Backward(
        grads, nb, sgrad, pb, pgrad, s3, ((cb,), gc_bc, gc_bh, gc_w), cb, dx, dict(zip(names, offsets)), size
    )


#: (shape, strides) → (n, c, hw) strides of the layouts :func:`_launch_strides` took as they are,
#: for dense (NCHW or channels-last) tensors and for any (``_ANY_STRIDES``)
_DENSE_STRIDES: Dict[tuple, Tuple[int, int, int]] = {}
_ANY_STRIDES: Dict[tuple, Tuple[int, int, int]] = {}


def _launch_strides(t: Tensor, dense: bool = True) -> Tuple[Tensor, Tuple[int, int, int]]:
    """``t`` and its (n, c, hw) strides: NCHW- or channels-last-contiguous (``dense``: the outputs
    made ``empty_like`` it share its strides), or any layout whose H and W merge (a gradient that is
    only read, a broadcast one included); other layouts are made contiguous. A layout taken as it
    is is remembered: the next tensor of that shape and strides costs a dictionary look-up."""
    known = (_DENSE_STRIDES if dense else _ANY_STRIDES).get((t.shape, t.stride()))
    if known is not None:
        return t, known
    if t.numel() == 0:
        raise ValueError(f'cbam_det::gates: the tensor of shape {tuple(t.shape)} is empty; N, C, H and W must be >= 1')
    st = L.strides(t)
    if st is None or dense and not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        t = t.contiguous()
        st = L.strides(t)
    (_DENSE_STRIDES if dense else _ANY_STRIDES)[(t.shape, t.stride())] = st
    return t, st


# ---------------------------------------------------------------- the Triton launchers


def triton_forward(
    z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial, sbn_batch, eps, seps, out
):
    """The forward's launches (5 for CBAM, 3 for SE): y (into ``out`` when given) and the two states."""
    z, st = _launch_strides(z)
    sn, sc, shw = st
    w1, w2 = w1.contiguous(), w2.contiguous()
    n, c, h, w = z.shape
    hw, hd, dev = h * w, w1.shape[0], z.device
    cl = sc == 1 and c > 1
    cbam = spatial != SPATIAL_NONE
    p = _forward_plan(n, c, hw, hd, cl, cbam, L.sm_count(dev), L.OVER_HW_WARPS)
    lay = layout(n, c, hw, hd, cbam, bn_mode != BN_NONE)
    cs = torch.empty(lay.csize, dtype=torch.float32, device=dev)
    ps = cs.new_empty(lay.psize)
    y = torch.empty_like(z) if out is None else out  # (empty_like(z) has z's strides)
    yn, yc, yhw = st if out is None or out is z else L.strides(out)
    grid, length, bc, bhw, warps = p.pool
    part = cs.new_empty(4 * n * p.s1 * c)
    shift = bn_mode != BN_NONE and bnm is not None
    L.launch(
        _pool_kernel, grid, z, bnm, part, n * p.s1 * c, c, hw, length, sn, sc, shw,
        SHIFT=shift, SQUARES=bn_mode == BN_OWN, MIN=bn_mode != BN_NONE, BC=bc, BHW=bhw, warps=warps,
    )  # fmt: skip
    gbc, gbh, gw = p.gate
    L.launch(
        _channel_gate_kernel, (n,), part, n * p.s1 * c, p.s1, bnw, bnb, bnm, bnv, w1, b1, w2, b2, scale, cs,
        lay.gc, lay.gl, lay.avg, lay.max, lay.z1, lay.hid, lay.a, lay.b, lay.mean, lay.var, lay.invstd,
        n, c, hd, hw, eps, BN=bn_mode, SHIFT=shift, USE_MAX=cbam, HAS_SCALE=scale is not None, BC=gbc, BH=gbh, warps=gw,
    )  # fmt: skip
    affine = bn_mode != BN_NONE
    if not cbam:
        grid, _, bc, bhw, warps = p.apply
        L.launch(
            _apply_channel_kernel, grid, z, y, cs, lay.a, lay.b, lay.gc, c, hw, sn, sc, shw, yn, yc, yhw,
            HAS_AFFINE=affine, BC=bc, BHW=bhw, warps=warps,
        )  # fmt: skip
        return y, cs, ps
    grid, length, bc, bhw, warps = p.spool
    sp = cs.new_empty(2 * n * p.s3 * hw)
    L.launch(
        _spatial_pool_kernel, grid, z, cs, lay.a, lay.b, lay.gc, sp, n * p.s3 * hw, c, hw, length, sn, sc, shw,
        HAS_AFFINE=affine, BC=bc, BHW=bhw, warps=warps,
    )  # fmt: skip
    grid, bp, warps = p.conv
    stat = cs.new_empty(3 * n * p.pb)
    L.launch(
        _spatial_conv_kernel, grid, sp, n * p.s3 * hw, p.s3, ps, n * hw, stat, cw.reshape(-1), c, h, w, hw, p.pb,
        AVG_FIRST=spatial == SPATIAL_AVG_MAX, K=cw.shape[-1], BATCH=sbn_batch, BP=bp, warps=warps,
    )  # fmt: skip
    grid, length, bc, bhw, warps = p.apply
    L.launch(
        _apply_spatial_kernel, grid, z, y, cs, lay.a, lay.b, lay.gc, lay.sstat, ps, n * hw, stat, n * p.pb,
        sw, sb, srm, srv, scale, c, hw, length, sn, sc, shw, yn, yc, yhw, seps,
        HAS_AFFINE=affine, BATCH=sbn_batch, HAS_SCALE=scale is not None, BC=bc, BHW=bhw, BS=256, warps=warps,
    )  # fmt: skip
    return y, cs, ps


def triton_backward(dy, z, cs, ps, bnw, bnb, w1, b1, w2, b2, cw, sw, sb, bn_mode, spatial, sbn_batch, want_dz):
    """The backward's launches (7 for CBAM, 4 for SE): [dz, dW1, db1, dW2, db2] + (CBAM) [d conv,
    d γ_s, d β_s] + (folded BN) [d γ, d β]."""
    z, (sn, sc, shw) = _launch_strides(z)
    dy, (dn, dc, dhw) = _launch_strides(dy, dense=False)
    w1, w2 = w1.contiguous(), w2.contiguous()
    n, c, h, w = z.shape
    hw, hd, dev = h * w, w1.shape[0], z.device
    cl = sc == 1 and c > 1
    cbam = spatial != SPATIAL_NONE
    k = cw.shape[-1] if cbam else 0
    affine = bn_mode != BN_NONE
    p = _backward_plan(n, c, hw, hd, cl, cbam, affine, L.sm_count(dev), L.OVER_HW_WARPS)
    lay = layout(n, c, hw, hd, cbam, bn_mode != BN_NONE)
    sm = cs.new_empty(p.size)  # (cs: float32)
    o = p.o
    dw1, db1, dw2, db2 = torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(w2), torch.empty_like(b2)
    grads = [None, dw1, db1, dw2, db2]
    nhw = n * hw
    grid, length, bc, bhw, warps = p.grads
    pp = sm.new_empty((2 if affine else 1) * n * p.nb * c)
    dconv = q = dwp = wm = None
    if cbam:
        dconv = cw.new_empty(cw.shape)  # (contiguous: the kernel writes it flat)
        dsw, dsb = torch.empty_like(sw), torch.empty_like(sw)
        grads += [dconv, dsw, dsb]
        pd = sm.new_empty(2 * n * grid[1] * hw)
        L.launch(
            _gate_grads_kernel, grid, dy, z, cs, lay.a, lay.b, lay.gc, lay.mean, ps, nhw, pp, n * p.nb * c, pd,
            n * grid[1] * hw, c, hw, length, p.nb, sn, sc, shw, dn, dc, dhw,
            HAS_AFFINE=affine, BN_SUMS=affine, BC=bc, BHW=bhw, warps=warps,
        )  # fmt: skip
        sgrid, bp, swarps = p.sgrad
        dt, bstat = sm.new_empty(2 * nhw), sm.new_empty(2 * n * p.pb)
        L.launch(
            _spatial_gate_grad_kernel, sgrid, pd, n * grid[1] * hw, grid[1], ps, nhw, cs, lay.sstat, sw, sb, dt,
            bstat, hw, p.pb, BP=bp, warps=swarps,
        )  # fmt: skip
        wm, dwp = sm.new_empty(2 * nhw), sm.new_empty(n * p.pb * 2 * k * k)
        L.launch(
            _spatial_conv_grad_kernel, sgrid, dt, nhw, bstat, n * p.pb, ps, cs, lay.sstat, sw, cw.reshape(-1), wm,
            dwp, dsw, dsb, c, h, w, hw, nhw,
            AVG_FIRST=spatial == SPATIAL_AVG_MAX, K=k, BATCH=sbn_batch, BP=bp, BS=256, warps=swarps,
        )  # fmt: skip
        grid, length, bc, bhw, warps = p.pgrad
        q = sm.new_empty((4 if affine else 3) * n * p.s3 * c)
        L.launch(
            _spatial_pool_grad_kernel, grid, z, cs, lay.a, lay.b, lay.gc, lay.max, lay.mean, ps, nhw, wm, q,
            n * p.s3 * c, c, hw, length, sn, sc, shw,
            HAS_AFFINE=affine, BN_SUMS=affine, BC=bc, BHW=bhw, warps=2 * warps if affine else warps,
        )  # fmt: skip
    else:
        L.launch(
            _se_grads_kernel, grid, dy, z, cs, lay.a, lay.b, lay.mean, pp, n * p.nb * c, c, hw, length, sn, sc, shw,
            dn, dc, dhw, HAS_AFFINE=affine, BN_SUMS=affine, BC=bc, BHW=bhw, warps=warps,
        )  # fmt: skip
    grid, bc, bh, warps = p.cgrad
    pq = n * p.s3 * c
    L.launch(
        _channel_gate_grad_kernel, grid, pp, n * p.nb * c, p.nb, q, pq, p.s3, cs, lay.gc, lay.gl, lay.hid, lay.a, bnb,
        w2, sm, o['dl'], o['sq1'], o['sq2'], o['dhp'], dw2, db2, dwp, n * p.pb,
        None if dconv is None else dconv.view(-1), n, c, hd, 2 * k * k,
        CBAM=cbam, BN=affine, BC=bc, BH=bh, BS=128, warps=warps,
    )  # fmt: skip
    dbnw = dbnb = None
    if affine:
        dbnw, dbnb = torch.empty_like(bnw), torch.empty_like(bnb)
        grads += [dbnw, dbnb]
    batch = bn_mode in (BN_BATCH, BN_OWN)
    L.launch(
        _channel_mlp_grad_kernel, grid, sm, o['dhp'], p.cb, cs, lay.hid, lay.avg, lay.max, lay.gc, lay.a, lay.mean,
        lay.invstd, lay.z1, w1, dw1, db1, q, pq, p.s3, o['sq1'], o['sq2'], o['k2'], o['k0'], o['bz'], o['d'],
        dbnw, dbnb, n, c, hd, hw, nhw,
        CBAM=cbam, BN=affine, BATCH=batch, BC=bc, BH=bh, warps=warps,
    )  # fmt: skip
    if want_dz:
        dz = torch.empty_like(z)
        grid, bc, bhw = p.dx
        L.launch(
            _input_grad_kernel, grid, dy, z, dz, cs, lay.a, lay.b, lay.gc, lay.max, ps, nhw, wm, sm, o['k2'],
            o['k0'], o['bz'], o['d'], c, hw, sn, sc, shw, dn, dc, dhw,
            HAS_AFFINE=affine, CBAM=cbam, BN=affine, BATCH=batch, BC=bc, BHW=bhw,
        )  # fmt: skip
        grads[0] = dz
    return grads


def triton_update(rm, rv, nbt, cs, l_mean, l_var, momentum, unbias) -> None:
    """One launch: a BatchNorm's running statistics (``momentum`` < 0: the cumulative average)."""
    c = rm.numel()
    L.launch(
        _update_stats_kernel, (1,), rm, rv, nbt, cs, l_mean, l_var, c, max(momentum, 0.0), unbias,
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
    ``out`` when given) and the states, every entry of :class:`Layout` filled as the kernels fill it."""
    n, c, h, w = z.shape
    hw, hd = h * w, w1.shape[0]
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32  # (float64: the tests' reference)
    cbam = spatial != SPATIAL_NONE
    lay = layout(n, c, hw, hd, cbam, bn_mode != BN_NONE)
    st = torch.zeros(lay.csize, dtype=acc, device=z.device)
    ps = torch.zeros(lay.psize, dtype=acc, device=z.device)
    with _autocast_off(z.device):
        zf = z.to(acc)
        x = zf
        if bn_mode != BN_NONE:
            if bn_mode == BN_OWN:
                mean, var = zf.mean((0, 2, 3)), zf.var((0, 2, 3), unbiased=False)
                invstd = torch.rsqrt(var + eps)
            elif bn_mode == BN_BATCH:
                mean, invstd = bnm.to(acc), bnv.to(acc)
                var = 1.0 / (invstd * invstd) - eps
            else:
                mean, var = bnm.to(acc), bnv.to(acc)
                invstd = torch.rsqrt(var + eps)
            a = bnw.to(acc) * invstd
            b = bnb.to(acc) - mean * a
            x = zf * a[:, None, None] + b[:, None, None]
            for at, t in ((lay.a, a), (lay.b, b), (lay.mean, mean), (lay.var, var), (lay.invstd, invstd)):
                _put(st, at, t)
            _put(st, lay.z1, (zf - mean[:, None, None]).sum((2, 3)))
        avg, mx = x.mean((2, 3)), x.amax((2, 3))
        ha = torch.relu(avg @ w1.to(acc).t() + b1.to(acc))
        hs, hm = ha, None
        if cbam:
            hm = torch.relu(mx @ w1.to(acc).t() + b1.to(acc))
            hs = ha + hm
        logit = hs @ w2.to(acc).t() + b2.to(acc) * (2.0 if cbam else 1.0)
        gc = torch.sigmoid(logit)
        if scale is not None:
            gc = gc * scale.to(acc)
        _put(st, lay.gc, gc)
        _put(st, lay.gl, logit)
        _put(st, lay.avg, avg)
        _put(st, lay.max, mx)
        _put(st, lay.hid, torch.stack([ha, hm], 1) if cbam else ha)
        y = x * gc[:, :, None, None]
        if cbam:
            savg, smax = y.mean(1), y.amax(1)
            desc = torch.stack([savg, smax] if spatial == SPATIAL_AVG_MAX else [smax, savg], 1)
            o = torch.nn.functional.conv2d(desc, cw.to(acc), padding=cw.shape[-1] // 2)[:, 0]
            if sbn_batch:
                smean, svar = o.mean(), o.var(unbiased=False)
            else:
                smean, svar = srm.to(acc).reshape(()), srv.to(acc).reshape(())
            sinv = torch.rsqrt(svar + seps)
            gs = torch.sigmoid((o - smean) * sinv * sw.to(acc) + sb.to(acc))
            if scale is not None:
                gs = gs * scale.to(acc)
            for at, t in ((lay.savg, savg), (lay.smax, smax), (lay.o, o), (lay.gs, gs)):
                _put(ps, at, t)
            _put(st, lay.sstat, torch.stack([smean, svar, sinv]))
            y = y * gs[:, None]
    y = y.to(z.dtype)
    return (y if out is None else out.copy_(y)), st, ps


def _views(cs: Tensor, ps: Tensor, n: int, c: int, h: int, w: int, hd: int, cbam: bool, bn: bool) -> dict:
    """The states' entries the mode has, as tensors of their shapes (views)."""
    lay = layout(n, c, h * w, hd, cbam, bn)
    nc, nhw = (n, c), (n, h, w)
    shapes = dict(gc=nc, gl=nc, avg=nc, max=nc, hid=(n, 2 if cbam else 1, hd))
    if bn:
        shapes.update(z1=nc, a=(c,), b=(c,), mean=(c,), var=(c,), invstd=(c,))
    if cbam:
        shapes.update(sstat=(3,), savg=nhw, smax=nhw, o=nhw, gs=nhw)
    out = {}
    for name, shape in shapes.items():
        at = getattr(lay, name)
        size = 1
        for s in shape:
            size *= s
        src = ps if name in ('savg', 'smax', 'o', 'gs') else cs
        out[name] = src[at : at + size].view(shape)
    return out


def twin_backward(dy, z, cs, ps, bnw, bnb, w1, b1, w2, b2, cw, sw, sb, bn_mode, spatial, sbn_batch, want_dz):
    """:func:`triton_backward`'s gradients with PyTorch operations, from the same states: the
    formulas written out (no autograd)."""
    n, c, h, w = z.shape
    hw, hd = h * w, w1.shape[0]
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    cbam = spatial != SPATIAL_NONE
    v = _views(cs, ps, n, c, h, w, hd, cbam, bn_mode != BN_NONE)
    with _autocast_off(z.device):
        zf, dyf = z.to(acc), dy.to(acc)
        x = zf
        if bn_mode != BN_NONE:
            x = zf * v['a'][:, None, None] + v['b'][:, None, None]
        gc, gcb = v['gc'], v['gc'][:, :, None, None]
        grads_s = []
        if cbam:
            gs = v['gs']
            u = dyf * gs[:, None]
            xg = x * gcb
            tie_s = xg == v['smax'][:, None]
            smean, sinv = v['sstat'][0], v['sstat'][2]
            xh = (v['o'] - smean) * sinv
            dt = (dyf * xg).sum(1) * gs * torch.sigmoid(-(xh * sw.to(acc).reshape(()) + sb.to(acc).reshape(())))
            coef = sw.to(acc).reshape(()) * sinv
            m = n * hw
            do = coef * (dt - dt.sum() / m - xh * (dt * xh).sum() / m) if sbn_batch else coef * dt
            pad = cw.shape[-1] // 2
            desc = torch.stack([v['savg'], v['smax']] if spatial == SPATIAL_AVG_MAX else [v['smax'], v['savg']], 1)
            cwf = cw.to(acc)
            ddesc = torch.nn.grad.conv2d_input(desc.shape, cwf, do[:, None], padding=pad)
            dconv = torch.nn.grad.conv2d_weight(desc, cwf.shape, do[:, None], padding=pad)
            dsavg, dsmax = (ddesc[:, 0], ddesc[:, 1]) if spatial == SPATIAL_AVG_MAX else (ddesc[:, 1], ddesc[:, 0])
            wfull = (dsavg / c)[:, None] + torch.where(tie_s, (dsmax / tie_s.sum(1).to(acc).clamp_min(1))[:, None], 0.0)
            dgc = ((u + wfull) * x).sum((2, 3))
            grads_s = [dconv.to(cw.dtype), (dt * xh).sum().reshape(sw.shape).to(sw.dtype)]
            grads_s.append(dt.sum().reshape(sw.shape).to(sw.dtype))
        else:
            dgc = (dyf * x).sum((2, 3))
        dl = dgc * gc * torch.sigmoid(-v['gl'])
        ha = v['hid'][:, 0]
        hm = v['hid'][:, 1] if cbam else None
        hs = ha + hm if cbam else ha
        w1f, w2f = w1.to(acc), w2.to(acc)
        dw2, db2 = dl.t() @ hs, dl.sum(0) * (2.0 if cbam else 1.0)
        dh = dl @ w2f
        dha = torch.where(ha <= 0, 0.0, dh)
        dw1, db1, davg = dha.t() @ v['avg'], dha.sum(0), dha @ w1f
        dx = (davg / hw)[:, :, None, None]
        if cbam:
            dhm = torch.where(hm <= 0, 0.0, dh)
            dw1, db1 = dw1 + dhm.t() @ v['max'], db1 + dhm.sum(0)
            tie_c = x == v['max'][:, :, None, None]
            k2 = (dhm @ w1f) / tie_c.sum((2, 3)).to(acc).clamp_min(1)
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


def twin_update(rm, rv, nbt, cs, l_mean, l_var, momentum, unbias) -> None:
    """:func:`triton_update` with PyTorch operations."""
    c = rm.numel()
    nbt.add_(1)
    mom = 1.0 / nbt.float() if momentum < 0 else momentum
    rm.copy_(rm * (1.0 - mom) + cs[l_mean : l_mean + c] * mom)
    rv.copy_(rv * (1.0 - mom) + cs[l_var : l_var + c] * unbias * mom)


# ---------------------------------------------------------------- the C++ kernels


def _dense(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def cpu_forward(
    z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial, sbn_batch, eps, seps, out
):
    """The C++ forward (float32, NCHW): one call."""
    n, c, h, w = z.shape
    lay = layout(n, c, h * w, w1.shape[0], spatial != SPATIAL_NONE, bn_mode != BN_NONE)
    y, cs, ps = _kernels.cpu('gates').gates_forward(
        z.contiguous(), bnw, bnb, bnm, bnv, w1.contiguous(), b1, w2.contiguous(), b2, _dense(cw), sw, sb, srm, srv,
        scale, bn_mode, spatial, sbn_batch, eps, seps, out, list(lay),
    )  # fmt: skip
    return y, cs, ps


def cpu_backward(dy, z, cs, ps, bnw, bnb, w1, b1, w2, b2, cw, sw, sb, bn_mode, spatial, sbn_batch, want_dz):
    """The C++ backward: one call."""
    n, c, h, w = z.shape
    lay = layout(n, c, h * w, w1.shape[0], spatial != SPATIAL_NONE, bn_mode != BN_NONE)
    grads = _kernels.cpu('gates_backward').gates_backward(
        dy.contiguous(), z.contiguous(), cs, ps, bnw, bnb, w1.contiguous(), b1, w2.contiguous(), b2, _dense(cw), sw,
        sb, bn_mode, spatial, sbn_batch, want_dz, list(lay),
    )  # fmt: skip
    if not want_dz:
        grads[0] = None
    return grads


def cpu_update(rm, rv, nbt, cs, l_mean, l_var, momentum, unbias) -> None:
    _kernels.cpu('update_stats_').update_stats(rm, rv, nbt, cs, l_mean, l_var, momentum, unbias)


# ---------------------------------------------------------------- the operators


_lib = torch.library.Library('cbam_det', 'FRAGMENT')
_FORWARD_ARGS = (
    'Tensor z, Tensor? bn_weight, Tensor? bn_bias, Tensor? bn_mean, Tensor? bn_var, Tensor w1, Tensor b1, '
    'Tensor w2, Tensor b2, Tensor? conv_weight, Tensor? sbn_weight, Tensor? sbn_bias, Tensor? sbn_mean, '
    'Tensor? sbn_var, Tensor? gate_scale, int bn_mode, int spatial, bool sbn_batch, float eps, float sbn_eps, '
    'bool triton, bool fallback'
)
#: the family's ops (``torch.ops.cbam_det.<name>``), each defined below
OPS = ('gates', 'gates_', 'gates_backward', 'update_stats_')
_lib.define(f'gates({_FORWARD_ARGS}) -> (Tensor, Tensor, Tensor)')
_lib.define(f'gates_(Tensor(a!) out, {_FORWARD_ARGS}) -> ()')
_lib.define(
    'gates_backward(Tensor dy, Tensor z, Tensor cstate, Tensor pstate, Tensor? bn_weight, Tensor? bn_bias, '
    'Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor? conv_weight, Tensor? sbn_weight, Tensor? sbn_bias, '
    'int bn_mode, int spatial, '
    'bool sbn_batch, bool want_dz, bool triton, bool fallback) -> Tensor?[]'
)
_lib.define(
    'update_stats_(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor(c!) num_batches_tracked, Tensor cstate, '
    'int mean_at, int var_at, float momentum, float unbias, bool triton, bool fallback) -> ()'
)


def _key(name: str, *args) -> tuple:
    """What an op's plan depends on (besides sizes): the failure memory's key."""
    z = args[0]
    return (name, z.dtype, L.strides(z) is not None and z.stride(1) == 1) + tuple(
        a for a in args if isinstance(a, (bool, int, float))
    )


def _forward_impl(*args, out: Optional[Tensor] = None):
    """The device's kernels: C++ on the CPU (Triton in its interpreter where ``triton``), Triton on CUDA."""
    *inputs, triton, fallback = args
    if not triton and args[0].is_cpu:
        return cpu_forward(*inputs, out)
    return L.run_or_twin(lambda: _key('gates', *inputs), fallback, triton_forward, twin_forward, *inputs, out)


def _backward_impl(*args):
    *inputs, triton, fallback = args
    if not triton and args[0].is_cpu:
        return cpu_backward(*inputs)
    key = lambda: _key('gates_backward', *inputs[1:])  # noqa: E731
    return L.run_or_twin(key, fallback, triton_backward, twin_backward, *inputs)


def _update_impl(rm, rv, nbt, cs, l_mean, l_var, momentum, unbias, triton, fallback) -> None:
    if not triton and rm.is_cpu:
        return cpu_update(rm, rv, nbt, cs, l_mean, l_var, momentum, unbias)
    key = lambda: ('update_stats_',)  # noqa: E731
    L.run_or_twin(key, fallback, triton_update, twin_update, rm, rv, nbt, cs, l_mean, l_var, momentum, unbias)


def _inplace_impl(out: Tensor, *args) -> None:
    z = args[0]
    same = out is z or out.shape == z.shape and out.dtype == z.dtype and out.device == z.device
    if not (same and (out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last))):
        raise ValueError(
            f"cbam_det::gates_: out must have the input's shape {tuple(z.shape)}, dtype {z.dtype} and device "
            f'{z.device} and be NCHW- or channels-last-contiguous; got shape {tuple(out.shape)}, {out.dtype}, '
            f'{out.device}, strides {out.stride()}'
        )
    _forward_impl(*args, out=out)


for _dk in ('CPU', 'CUDA'):
    _lib.impl('gates', _forward_impl, _dk)
    _lib.impl('gates_', _inplace_impl, _dk)
    _lib.impl('gates_backward', _backward_impl, _dk)
    _lib.impl('update_stats_', _update_impl, _dk)


# The fakes give shapes to torch.compile. On real ``meta`` tensors while a census observes the
# launches (:func:`..launch.observe`) they run the Triton launchers: the grids of a full-size
# network, nothing launched.


@torch.library.register_fake('cbam_det::gates')
def _fake_gates(z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial, *rest):
    if z.device.type == 'meta' and L.observing():
        return triton_forward(
            z, bnw, bnb, bnm, bnv, w1, b1, w2, b2, cw, sw, sb, srm, srv, scale, bn_mode, spatial, *rest[:-2], None
        )
    n, c, h, w = z.shape
    lay = compute_layout(n, c, h * w, w1.shape[0], spatial != SPATIAL_NONE, bn_mode != BN_NONE)
    f32 = dict(dtype=torch.float32)
    return torch.empty_like(z), z.new_empty((lay.csize,), **f32), z.new_empty((lay.psize,), **f32)


@torch.library.register_fake('cbam_det::gates_')
def _(out, *args) -> None:
    if out.device.type == 'meta' and L.observing():
        triton_forward(*args[:-2], out)


@torch.library.register_fake('cbam_det::gates_backward')
def _fake_gates_backward(
    dy, z, cs, ps, bnw, bnb, w1, b1, w2, b2, cw, sw, sb, bn_mode, spatial, sbn_batch, want_dz, triton, fallback
):  # noqa: E501
    if z.device.type == 'meta' and L.observing():
        return triton_backward(
            dy, z, cs, ps, bnw, bnb, w1, b1, w2, b2, cw, sw, sb, bn_mode, spatial, sbn_batch, want_dz
        )
    out = [torch.empty_like(z) if want_dz else None] + [torch.empty_like(t) for t in (w1, b1, w2, b2)]
    if spatial != SPATIAL_NONE:
        out += [torch.empty_like(cw), torch.empty_like(sw), torch.empty_like(sw)]
    if bn_mode != BN_NONE:
        out += [torch.empty_like(bnw), torch.empty_like(bnb)]
    return out


@torch.library.register_fake('cbam_det::update_stats_')
def _(*args) -> None:
    if args[0].device.type == 'meta' and L.observing():
        triton_update(*args[:-2])


GATES = torch.ops.cbam_det.gates.default
GATES_ = torch.ops.cbam_det.gates_.default
GATES_BACKWARD = torch.ops.cbam_det.gates_backward.default
UPDATE_STATS_ = torch.ops.cbam_det.update_stats_.default


# ---------------------------------------------------------------- autograd: one node per call


def _setup(ctx, inputs, output) -> None:
    (z, bnw, bnb, _, _, w1, b1, w2, b2, cw, sw, sb, _, _, _, bn_mode, spatial, sbn_batch, _, _, triton, fallback) = (
        inputs
    )
    ctx.save_for_backward(z, output[1], output[2], bnw, bnb, w1, b1, w2, b2, cw, sw, sb)
    ctx.flags = (bn_mode, spatial, sbn_batch)
    ctx.run = (triton, fallback)
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)  # the state's gradient stays None (no zeros formed)


def _backward(ctx, dy: Tensor, _dcs: Optional[Tensor], _dps: Optional[Tensor]) -> tuple:
    z, cs, ps, bnw, bnb, w1, b1, w2, b2, cw, sw, sb = ctx.saved_tensors
    bn_mode, spatial, sbn_batch = ctx.flags
    g = GATES_BACKWARD(
        dy, z, cs, ps, bnw, bnb, w1, b1, w2, b2, cw, sw, sb, bn_mode, spatial, sbn_batch, ctx.needs_input_grad[0],
        *ctx.run,
    )  # fmt: skip
    spatial_grads = (g[5], g[6], g[7]) if spatial != SPATIAL_NONE else (None, None, None)
    bn_grads = tuple(g[-2:]) if bn_mode != BN_NONE else (None, None)
    return (g[0],) + bn_grads + (None, None) + tuple(g[1:5]) + spatial_grads + (None,) * 10


#: the eager node takes z, the BN's γ and β, W1, b1, W2, b2, the conv's weight and the spatial BN's γ
#: and β, then the op's arguments (``_Gates.call(*args)``)
_Gates = eager_node(
    '_Gates',
    GATES,
    _setup,
    _backward,
    'The eager autograd node of ``cbam_det::gates``.',
    inputs=(0, 1, 2, 5, 6, 7, 8, 9, 10, 11),
)
torch.library.register_autograd('cbam_det::gates', _backward, setup_context=_setup)


def eager_node_of_gates() -> Callable[..., tuple]:
    """The eager node of ``cbam_det::gates``, called with the op's arguments: the C++ node of the
    family's compiled module (``csrc/gates.cpp``'s ``GatesNode``: no Python between the call and
    the op's kernels, forward or backward) where it is compiled, else :data:`_Gates` (the same
    op calls from a Python ``autograd.Function``: without a compiler, or ``CBAM_DET_NO_EXT=1``)."""
    from ...ops import ext

    compiled = ext('gates')
    return compiled.gates_node if compiled is not None else _Gates.call


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
    node: Callable[..., tuple]  # the eager autograd node: node(*op_args) -> (y, cstate, pstate)


def module_args(module: nn.Module, cache: bool = True) -> _Args:
    """The op's arguments that depend on the module and its mode only, cached on it (the cache
    is dropped when the module moves, changes dtype or mode: ``AttentionModule._apply``/``train``;
    ``cache=False`` under ``torch.compile``, which traces them once)."""
    cached = module.__dict__.get('_gates_args') if cache else None
    if cached is not None:
        return cached
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
        spatial, seps, smom, strain, supdate, eager_node_of_gates() if cache else _Gates.call,
    )  # fmt: skip
    if cache:
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
    a = module_args(module, cache=not compiled)
    bn_mode, bnw, bnb, bnm, bnv, eps, z = BN_NONE, None, None, None, None, 0.0, x
    own_update = False
    if bn is not None:
        bnw, bnb, eps = bn.weight, bn.bias, float(bn.eps)
        if bn.training or bn.running_mean is None:  # the running mean (if any) shifts the sums
            bn_mode, own_update, bnm = BN_OWN, bn.training and bn.running_mean is not None, bn.running_mean
            if x.shape[0] * x.shape[2] * x.shape[3] <= 1:
                raise ValueError(
                    f'Expected more than 1 value per channel when training, got input size {tuple(x.shape)}'
                )
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
        if compiled:
            y, cs, ps = GATES(*args)
        else:
            y, cs, ps = a.node(*args)
    elif module.inplace and not compiled and source is None and not (supdate or own_update or recording()):
        GATES_(z, *args)  # inference in place: no state needed
        return z
    else:
        y, cs, ps = GATES(*args) if compiled else call_below_autograd(GATES, *args)
    if supdate or own_update:
        m = n * h * w
        sizes = (n, c, h * w, a.w1.shape[0], a.spatial != SPATIAL_NONE, bn_mode != BN_NONE)
        lay = compute_layout(*sizes) if compiled else layout(*sizes)  # (Dynamo warns on a cache)
        if supdate:
            UPDATE_STATS_(
                a.srm, a.srv, a.snbt, cs, lay.sstat, lay.sstat + 1, a.smomentum, m / (m - 1), triton, fallback
            )
        if own_update:
            mom = -1.0 if bn.momentum is None else float(bn.momentum)
            UPDATE_STATS_(bn.running_mean, bn.running_var, bn.num_batches_tracked, cs, lay.mean, lay.var, mom,
                          m / (m - 1), triton, fallback)  # fmt: skip
    if recording():
        v = _views(cs, ps, n, c, h, w, a.w1.shape[0], a.spatial != SPATIAL_NONE, bn_mode != BN_NONE)
        note(module, channel=v['gc'], spatial=v['gs'][:, None] if a.spatial != SPATIAL_NONE else None)
    return y
