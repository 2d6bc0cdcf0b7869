"""The Triton kernels' functions (:mod:`.triton_gate`) in PyTorch operations, argument for
argument: what a launch that fails to compile or to start computes instead under ``auto``
(CBAM, Woo et al., ECCV 2018, eq. 1-3; SE; BAM's gate, Park et al., BMVC 2018, eq. 1-2).

Same inputs, same outputs (shapes, dtypes, layouts), same rounding where equality matters:
x = z·a + b and x·g_c are formed as separate float32 multiplies and adds, as the kernels form
them (compiled without fp-fusion), so a tie mask here finds the maxima a kernel found and the
reverse. Sums are float32 except where the kernel's caller asks for float64 totals.
"""

from typing import List, Optional

import torch

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
]


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, C, H·W) float32."""
    return t.float().reshape(t.shape[0], t.shape[1], -1)


def _x(z: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> torch.Tensor:
    """x = a[c]·z + b[c] (a multiply, then an add), or z: (N, C, H·W) float32."""
    x = _flat(z)
    if a is None:
        return x
    return (x * a.float()[None, :, None]) + b.float()[None, :, None]


def _c(t: torch.Tensor) -> torch.Tensor:
    """An (N, C) tensor as (N, C, 1)."""
    return t.float().reshape(t.shape[0], -1, 1)


def _p(t: torch.Tensor) -> torch.Tensor:
    """An (N, H·W) tensor as (N, 1, H·W)."""
    return t.float().reshape(t.shape[0], 1, -1)


def _write(v: torch.Tensor, like: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    """(N, C, H·W) float32 values as ``like``'s shape and dtype, into ``out`` when given."""
    v = v.reshape(like.shape).to(like.dtype)
    if out is None:
        return torch.empty_like(like).copy_(v)
    return out.copy_(v)


def _sum(v: torch.Tensor, dim: int, double: bool) -> torch.Tensor:
    s = v.sum(dim)
    return s.double() if double else s


def channel_pool(z, a, b, mu=None) -> List[torch.Tensor]:
    x = _x(z, a, b)
    out = [x.sum(2) / x.shape[2], x.amax(2)]
    if mu is not None:
        out.append((_flat(z) - mu.float()[None, :, None]).sum(2).double())
    return out


def channel_moments(z, shift) -> List[torch.Tensor]:
    zf = _flat(z)
    d = zf - shift.float()[None, :, None]
    return [d.sum(2).double(), (d * d).sum(2).double(), zf.amax(2), zf.amin(2)]


def affine_extreme(zmax, zmin, a, b) -> torch.Tensor:
    a, b = a.float()[None, :], b.float()[None, :]
    return (torch.where(a >= 0, zmax.float(), zmin.float()) * a) + b


def spatial_pool(z, a, b, gc) -> List[torch.Tensor]:
    xg = _x(z, a, b) * _c(gc)
    return [xg.sum(1) / xg.shape[1], xg.amax(1)]


def apply_gates(z, a, b, gc, gs, out=None) -> torch.Tensor:
    y = _x(z, a, b) * _c(gc)
    if gs is not None:
        y = y * _p(gs)
    return _write(y, z, out)


def _spatial_max_mask(x: torch.Tensor, gc, smax) -> torch.Tensor:
    return (x * _c(gc)) == _p(smax)


def gate_grads(dy, z, a, b, gc, gs, smax, mu=None) -> List[torch.Tensor]:
    x, dyf = _x(z, a, b), _flat(dy)
    u = dyf * _p(gs)
    if mu is None:
        sums = [(u * x).sum(2)]
    else:
        zc = _flat(z) - mu.float()[None, :, None]
        sums = [u.sum(2).double(), (u * zc).sum(2).double()]
    xg = x * _c(gc)
    return sums + [(dyf * xg).sum(1), _spatial_max_mask(x, gc, smax).float().sum(1)]


def se_grads(dy, z, a, b, mu=None) -> List[torch.Tensor]:
    dyf = _flat(dy)
    if mu is None:
        return [(dyf * _x(z, a, b)).sum(2)]
    zc = _flat(z) - mu.float()[None, :, None]
    return [dyf.sum(2).double(), (dyf * zc).sum(2).double()]


def spatial_pool_grad(z, a, b, gc, smax, w_avg, w_max, cmax, mu=None) -> List[torch.Tensor]:
    x = _x(z, a, b)
    w = _p(w_avg) + torch.where(_spatial_max_mask(x, gc, smax), _p(w_max), 0.0)
    tie = x == _c(cmax)
    ties = tie.float().sum(2)
    if mu is None:
        return [(x * w).sum(2), ties]
    zc = _flat(z) - mu.float()[None, :, None]
    w = w.expand_as(x)
    return [w.sum(2).double(), (w * zc).sum(2).double(), ties, torch.where(tie, zc, 0.0).sum(2).double()]


def input_grad(dy, z, a, b, gc, gs, smax, w_avg, w_max, cmax, k1, k2, k0, bz=None, out=None) -> torch.Tensor:
    dyf = _flat(dy)
    v = _c(k0).expand_as(dyf)
    if smax is not None:
        x = _x(z, a, b)
        w = _p(w_avg) + torch.where(_spatial_max_mask(x, gc, smax), _p(w_max), 0.0)
        v = v + _c(k1) * (dyf * _p(gs) + w)
        v = v + torch.where(x == _c(cmax), _c(k2), 0.0)
    else:
        v = v + _c(k1) * dyf
    if bz is not None:
        v = v + bz.float()[None, :, None] * _flat(z)
    return _write(v, z, out)


def _bam_gate(c, s, product: bool) -> torch.Tensor:
    t = _c(c) * _p(s) if product else _c(c) + _p(s)
    return torch.sigmoid(t)


def bam_apply(x, c, s, product: bool, residual: bool, out=None) -> torch.Tensor:
    m = _bam_gate(c, s, product)
    xf = _flat(x)
    return _write(xf * (m + 1.0) if residual else xf * m, x, out)


def bam_grads(dy, x, c, s, product: bool, residual: bool) -> List[torch.Tensor]:
    m = _bam_gate(c, s, product)
    dyf, xf = _flat(dy), _flat(x)
    dx = _write(dyf * (m + 1.0) if residual else dyf * m, x, None)
    g = dyf * xf * m * (1.0 - m)
    if product:
        return [dx, (g * _p(s)).sum(2), (g * _c(c)).sum(1)]
    return [dx, g.sum(2), g.sum(1)]
