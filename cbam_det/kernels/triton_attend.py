"""The ``triton`` backend's autograd for CBAM (Woo et al., ECCV 2018, eq. 1-3) and SE (Hu et al.,
CVPR 2018), optionally with the BatchNorm before them folded in (x = a[c]·z + b[c]).

Passes over the full-size tensors of one training step (each a read or a write of N·C·H·W
elements), all in :mod:`.triton_gate`:

    forward   channel pool (or the BN's moments) 1, spatial pool 1, apply 2          CBAM 4, SE 3
    backward  gate gradients (dy, x) 2, spatial-pool gradient (x) 1, dz (dy, x, dz) 3  CBAM 6, SE 4

SE's dz = K1·dy + K0 needs x only for a BN in training (then 5). What the CPU backend
recomputes, this one keeps: the pooled descriptors and the small gate graphs of the forward
(MLP, k×k conv, the gate's BN: (N, C) and (N, 1, H, W) tensors, which the CUDA caching
allocator serves at no cost) stay on the autograd context until backward. The folded BN's
backward needs Σ_hw dx and Σ_hw dx·(z − μ) per channel before dz can be written; every term
of dx is a per-(n, c) or per-pixel factor times something the earlier passes already sum
(``Q1 = Σ (dy·g_s + w)``, ``Q2 = Σ (dy·g_s + w)(z − μ)``, the channel-max ties and their
Σ (z − μ), Σ (z − μ)), so the sums are formed from those and the BN backward becomes the
per-channel affine map of the last pass: dz = A·dx + Bz·z + D.
"""

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import fused
from . import triton_gate as T
from .policy import fallback, fallback_enabled

__all__ = ['GatedAttention']


class GatedAttention(torch.autograd.Function):
    """(z, out, module, bn, reuse_input, ext, *params) → y, as :class:`.fused._GatedAttention`
    (same arguments; ``ext`` is :mod:`.triton_gate`), keeping the forward's gate graphs."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, out: Optional[torch.Tensor], module, bn, reuse_input: bool, ext, *params):
        bn, s, y = fused.gated_forward(ctx, module, T, z, bn, out, grad=True)  # the small graphs kept
        ctx.module, ctx.bn, ctx.small, ctx.params, ctx.reuse_input = module, bn, s, params, reuse_input
        ctx.fallback = fallback_enabled()  # backward may run on the autograd engine's thread
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        with fallback(ctx.fallback):
            return GatedAttention._backward(ctx, dy)

    @staticmethod
    def _backward(ctx, dy: torch.Tensor):
        (z,), bn, s, module = ctx.saved_tensors, ctx.bn, ctx.small, ctx.module
        ctx.small = None
        n, c, h, w = z.shape
        hw = h * w
        dy = fused._layout_of(dy, z)
        cg, sg, use_max = fused._gates(module)
        a, b, gc, gs, smax = s.a, s.b, s.channel_gate_flat, s.spatial_gate_flat, s.spatial_max_flat
        params = {}
        sums = bn is not None and (
            bn.batch_stats or any(t is not None and t.requires_grad for t in (bn.weight, bn.bias))
        )
        mu = bn.mean.detach().float().contiguous() if sums else None
        w_avg = w_max = cmax = ties = tie_z = z1 = q1 = q2 = None
        if sg is not None:
            r = T.gate_grads(dy, z, a, b, gc, gs, smax, mu)
            dgs, cnt_s = r[-2], r[-1]
            ps = [p for p in sg.parameters() if p.requires_grad]
            d = fused._grads(s.spatial_gate, [s.spatial_avg, s.spatial_max] + ps, dgs.view(n, 1, h, w))
            params.update(zip(ps, d[2:]))
            w_avg = (d[0].reshape(n, hw) / c).contiguous()
            w_max = (d[1].reshape(n, hw) / cnt_s.clamp_min(1)).contiguous()
            cmax = s.channel_max.detach()
            q = T.spatial_pool_grad(z, a, b, gc, smax, w_avg, w_max, cmax, mu)
            if mu is None:
                dgc, ties = r[0] + q[0], q[1]
            else:
                q1, q2, ties, tie_z = r[0] + q[0], r[1] + q[1], q[2], q[3]
        else:
            r = T.se_grads(dy, z, a, b, mu)
            if mu is None:
                dgc = r[0]
            else:
                q1, q2 = r
        if mu is not None:  # x = a·(z − μ) + β: Σ_hw (dy·g_s + w)·x from the two sums
            beta = bn.bias.detach().double() if bn.bias is not None else 0.0
            dgc = (a.double() * q2 + beta * q1).float()
            z1 = s.centered_sum
        pc = [p for p in cg.parameters() if p.requires_grad]
        leaves = [s.channel_avg] + ([s.channel_max] if use_max else [])
        d = fused._grads(s.channel_gate, leaves + pc, dgc.view(n, c, 1, 1))
        params.update(zip(pc, d[len(leaves) :]))
        d_avg = d[0].reshape(n, c)
        cmg = d[1].reshape(n, c) / ties.clamp_min(1) if use_max else None
        k1, k2, k0, bz = gc, cmg, d_avg / hw, None  # dx = k1·(dy·g_s + w) + [x = c_max]·k2 + k0
        if bn is not None:
            k1, k2, k0, bz = _fold_bn_backward(bn, s.invstd, a, mu, k1, k2, k0, q1, q2, ties, tie_z, z1, hw, params)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = T.input_grad(
                dy, z, a, b, gc, gs, smax, w_avg, w_max, cmax, k1, k2, k0, bz, z if ctx.reuse_input else None
            )
        return (dx, None, None, None, None, None) + tuple(params.get(p) for p in ctx.params)


def _fold_bn_backward(bn, invstd, a, mu, k1, k2, k0, q1, q2, ties, tie_z, z1, hw: int, params: dict):
    """The K's of dz = A·dx + Bz·z + D (A = a = γ·invstd) and the BN's parameter gradients,
    with Σ_hw dx = g_c·Q1 + d_avg + cmg·ties and Σ_hw dx·(z − μ) = g_c·Q2 + d_avg/HW·Σ(z − μ)
    + cmg·Σ_ties (z − μ) (``mu`` None: nothing needs the sums)."""
    ad = a.double()
    bz = d = None
    if mu is not None:
        gc, cmg, base = k1.double(), None if k2 is None else k2.double(), k0.double()
        sum_dx = gc * q1 + base * hw
        sum_dxz = gc * q2 + base * z1
        if cmg is not None:
            sum_dx = sum_dx + cmg * ties.double()
            sum_dxz = sum_dxz + cmg * tie_z
        sum_dx, sum_dx_xhat = sum_dx.sum(0), invstd.double() * sum_dxz.sum(0)
        if bn.weight is not None and bn.weight.requires_grad:
            params[bn.weight] = sum_dx_xhat.float()
        if bn.bias is not None and bn.bias.requires_grad:
            params[bn.bias] = sum_dx.float()
        if bn.batch_stats:
            m = k1.shape[0] * hw
            k = ad * invstd.double() * sum_dx_xhat / m
            bz = (-k).float().contiguous()
            d = k * mu.double() - ad * sum_dx / m
    k0 = ad * k0.double() + (d if d is not None else 0.0)
    return a * k1, None if k2 is None else a * k2, k0.float(), bz
