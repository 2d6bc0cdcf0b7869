"""BAM's refinement F ⊗ (1 + M(F)) (Park et al., BMVC 2018, eq. 1-2) as the PyTorch operator
``cbam_det::bam_apply``, with the reduction its backward uses, ``cbam_det::bam_grads``.

    y = bam_apply(x, c, s, product, residual) = x ⊗ (r + σ(t)),  t = c[n, c] + s[n, hw]  (product: c·s)

with the branch logits c (N, C) and s (N, H·W) float32, r = 1 with ``residual``. The full-size
M(F) is never stored: forward is one pass over x, backward one pass over (dy, x) that writes dx.
Schema, CPU kernel (C++), CUDA kernel (Triton, opaque to inductor), fake and autograd below.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _kernels

__all__ = ['bam_apply', 'bam_grads']


@torch.library.custom_op('cbam_det::bam_apply', mutates_args=(), device_types='cpu')
def bam_apply(x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool) -> Tensor:
    """x ⊗ (r + σ(c + s)) (``product``: σ(c·s)), r = 1 if ``residual``, in x's dtype."""
    x, c, s = _kernels.dense(x, c, s)
    return _kernels.cpu('bam_apply').bam_apply(x, c, s, product, residual, None)


@bam_apply.register_kernel('cuda')
def cuda_bam_apply(x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool) -> Tensor:
    return _kernels.cuda('bam_apply').bam_apply(x, c, s, product, residual, None)


@bam_apply.register_fake
def _(x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool) -> Tensor:
    return torch.empty_like(x)


def _setup(ctx, inputs, output) -> None:
    x, c, s, product, residual = inputs
    ctx.save_for_backward(x, c, s)
    ctx.product, ctx.residual = product, residual


def _backward(ctx, dy: Tensor) -> Tuple[Optional[Tensor], ...]:
    x, c, s = ctx.saved_tensors
    dx, dc, ds = bam_grads(dy, x, c, s, ctx.product, ctx.residual)  # each kernel takes dy's layout itself
    return dx, dc, ds, None, None


bam_apply.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op('cbam_det::bam_grads', mutates_args=(), device_types='cpu')
def bam_grads(
    dy: Tensor, x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """BAM's backward in one pass over (dy, x): dx = dy ⊗ (r + σ(t)) (x's shape and dtype),
    dc = Σ_hw g·∂t/∂c (N, C), ds = Σ_c g·∂t/∂s (N, H·W), g = dy·x·σ'(t)."""
    dy, x, c, s = _kernels.dense(dy, x, c, s)
    dx, dc, ds = _kernels.cpu('bam_grads').bam_grads(dy, x, c, s, product, residual)
    return dx, dc, ds


@bam_grads.register_kernel('cuda')
def cuda_bam_grads(
    dy: Tensor, x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    dx, dc, ds = _kernels.cuda('bam_grads').bam_grads(dy, x, c, s, product, residual)
    return dx, dc, ds


@bam_grads.register_fake
def _(dy: Tensor, x: Tensor, c: Tensor, s: Tensor, product: bool, residual: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(c, dtype=torch.float32), torch.empty_like(s, dtype=torch.float32)


#: each op's CUDA kernel by op name (tests run them in Triton's interpreter on CPU tensors)
CUDA_KERNELS = {'bam_apply': cuda_bam_apply, 'bam_grads': cuda_bam_grads}
