"""The gating ops of CBAM (Woo et al., ECCV 2018, eq. 1-3) and SE (Hu et al., CVPR 2018) as PyTorch
operators: ``cbam_det::channel_pool``, ``spatial_pool``, ``apply_gates`` and the two reductions
their backward uses, ``gate_grads`` (SE: ``se_gate_grad``) and ``spatial_pool_grad``.

    (avg, max)   = channel_pool(x)          mean and max over H×W           (N, C) each
    (savg, smax) = spatial_pool(x, g_c)     mean and max over C of x·g_c    (N, H·W) each
    y            = apply_gates(x, g_c, g_s) x·g_c[n, c]·g_s[n, hw]          x's shape (g_s None: SE)

The small graphs between them (the shared MLP, the k×k conv and its BN, the sigmoids) are
ordinary PyTorch operations (:mod:`cbam_det.kernels.graph`), so that autograd and inductor handle
them. Each op below is one unit: its schema (``custom_op``), CPU kernel (the C++ module), CUDA
kernel (the Triton launchers, opaque to inductor), fake (shapes, strides and dtypes for tracing)
and autograd (``register_autograd``: the full-size parts of each backward as PyTorch operations,
which inductor can fuse into one pass with the other ops' input gradients; the reductions over
(dy, x) as the two gradient ops). Gates, pooled maps and their gradients are float32 and
contiguous; x is float32 NCHW on the CPU kernels (float32/float16/bfloat16, NCHW or
channels-last on CUDA). Max-pool gradients are shared evenly between tied maxima, as ``amax``.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _kernels

__all__ = ['channel_pool', 'spatial_pool', 'apply_gates', 'gate_grads', 'se_gate_grad', 'spatial_pool_grad']


def _small(n: int, m: int, like: Tensor) -> Tensor:
    return like.new_empty((n, m), dtype=torch.float32)


def _hw(x: Tensor) -> int:
    return x.shape[2] * x.shape[3]


# ---------------------------------------------------------------- channel_pool


@torch.library.custom_op('cbam_det::channel_pool', mutates_args=(), device_types='cpu')
def channel_pool(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(mean, max) over H×W of ``x``: two (N, C) float32 tensors."""
    (x,) = _kernels.dense(x)
    avg, mx = _kernels.cpu('channel_pool').channel_pool(x, None, None)
    return avg, mx


@channel_pool.register_kernel('cuda')
def cuda_channel_pool(x: Tensor) -> Tuple[Tensor, Tensor]:
    avg, mx = _kernels.cuda('channel_pool').channel_pool(x, None, None)
    return avg, mx


@channel_pool.register_fake
def _(x: Tensor) -> Tuple[Tensor, Tensor]:
    return _small(x.shape[0], x.shape[1], x), _small(x.shape[0], x.shape[1], x)


def _channel_pool_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output[1])


def _channel_pool_backward(ctx, d_avg: Tensor, d_max: Tensor) -> Tensor:
    x, mx = ctx.saved_tensors
    mx = mx[:, :, None, None]
    tie = x.float() == mx  # the kernel's max is one of x's values, compared in float32
    count = tie.sum((2, 3), keepdim=True, dtype=torch.float32)
    g_avg = d_avg[:, :, None, None] / _hw(x)
    return torch.where(tie, d_max[:, :, None, None] / count + g_avg, g_avg).to(x.dtype)


channel_pool.register_autograd(_channel_pool_backward, setup_context=_channel_pool_setup)


# ---------------------------------------------------------------- spatial_pool


@torch.library.custom_op('cbam_det::spatial_pool', mutates_args=(), device_types='cpu')
def spatial_pool(x: Tensor, gc: Tensor) -> Tuple[Tensor, Tensor]:
    """(mean, max) over C of ``x``·g_c, g_c (N, C): two (N, H·W) float32 tensors."""
    x, gc = _kernels.dense(x, gc)
    avg, mx = _kernels.cpu('spatial_pool').spatial_pool(x, None, None, gc)
    return avg, mx


@spatial_pool.register_kernel('cuda')
def cuda_spatial_pool(x: Tensor, gc: Tensor) -> Tuple[Tensor, Tensor]:
    avg, mx = _kernels.cuda('spatial_pool').spatial_pool(x, None, None, gc)
    return avg, mx


@spatial_pool.register_fake
def _(x: Tensor, gc: Tensor) -> Tuple[Tensor, Tensor]:
    return _small(x.shape[0], _hw(x), x), _small(x.shape[0], _hw(x), x)


def _spatial_pool_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1], output[1])


def _spatial_pool_backward(ctx, d_avg: Tensor, d_max: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    x, gc, smax = ctx.saved_tensors
    n, c, h, w = x.shape
    g = gc[:, :, None, None]
    tie = x.float() * g == smax.view(n, 1, h, w)  # x·g_c rounded as the kernels round it
    w_avg = d_avg / c
    w_max = d_max / tie.sum(1, dtype=torch.float32).view(n, h * w).clamp_min(1)
    dx = dgc = None
    if ctx.needs_input_grad[0]:
        wa, wm = w_avg.view(n, 1, h, w), w_max.view(n, 1, h, w)
        dx = (g * torch.where(tie, wa + wm, wa)).to(x.dtype)
    if ctx.needs_input_grad[1]:
        dgc = spatial_pool_grad(x, gc, smax, w_avg.contiguous(), w_max.contiguous())
    return dx, dgc


spatial_pool.register_autograd(_spatial_pool_backward, setup_context=_spatial_pool_setup)


# ---------------------------------------------------------------- apply_gates


@torch.library.custom_op('cbam_det::apply_gates', mutates_args=(), device_types='cpu')
def apply_gates(x: Tensor, gc: Tensor, gs: Optional[Tensor]) -> Tensor:
    """y = x·g_c[n, c]·g_s[n, hw] in x's dtype, g_c (N, C), g_s (N, H·W) or None (SE)."""
    x, gc, gs = _kernels.dense(x, gc, gs)
    return _kernels.cpu('apply_gates').apply_gates(x, None, None, gc, gs, None)


@apply_gates.register_kernel('cuda')
def cuda_apply_gates(x: Tensor, gc: Tensor, gs: Optional[Tensor]) -> Tensor:
    return _kernels.cuda('apply_gates').apply_gates(x, None, None, gc, gs, None)


@apply_gates.register_fake
def _(x: Tensor, gc: Tensor, gs: Optional[Tensor]) -> Tensor:
    return torch.empty_like(x)


def _apply_gates_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _apply_gates_backward(ctx, dy: Tensor) -> Tuple[Optional[Tensor], ...]:
    x, gc, gs = ctx.saved_tensors
    n, c, h, w = x.shape
    dx = dgc = dgs = None
    if ctx.needs_input_grad[0]:
        scale = gc[:, :, None, None] if gs is None else gc[:, :, None, None] * gs.view(n, 1, h, w)
        dx = (dy.float() * scale).to(x.dtype)
    if gs is None:
        dgc = se_gate_grad(dy, x) if ctx.needs_input_grad[1] else None
    elif ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        dgc, dgs = gate_grads(dy, x, gc, gs)
    return dx, dgc, dgs


apply_gates.register_autograd(_apply_gates_backward, setup_context=_apply_gates_setup)


# ---------------------------------------------------------------- gate_grads, se_gate_grad


@torch.library.custom_op('cbam_det::gate_grads', mutates_args=(), device_types='cpu')
def gate_grads(dy: Tensor, x: Tensor, gc: Tensor, gs: Tensor) -> Tuple[Tensor, Tensor]:
    """The gates' gradients of y = x·g_c·g_s in one pass over (dy, x): Σ_hw dy·x·g_s (N, C)
    and Σ_c dy·x·g_c (N, H·W)."""
    dy, x, gc, gs = _kernels.dense(dy, x, gc, gs)
    dgc, dgs, _ = _kernels.cpu('gate_grads').gate_grads(dy, x, None, None, gc, gs, None)
    return dgc, dgs


@gate_grads.register_kernel('cuda')
def cuda_gate_grads(dy: Tensor, x: Tensor, gc: Tensor, gs: Tensor) -> Tuple[Tensor, Tensor]:
    dgc, dgs, _ = _kernels.cuda('gate_grads').gate_grads(dy, x, None, None, gc, gs, gs)  # its tie count: unused
    return dgc, dgs


@gate_grads.register_fake
def _(dy: Tensor, x: Tensor, gc: Tensor, gs: Tensor) -> Tuple[Tensor, Tensor]:
    return _small(x.shape[0], x.shape[1], x), _small(x.shape[0], _hw(x), x)


@torch.library.custom_op('cbam_det::se_gate_grad', mutates_args=(), device_types='cpu')
def se_gate_grad(dy: Tensor, x: Tensor) -> Tensor:
    """SE's gate gradient of y = x·g_c: Σ_hw dy·x (N, C), one pass over (dy, x)."""
    gc = x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32)  # read by nothing without g_s
    dy, x = _kernels.dense(dy, x)
    return _kernels.cpu('se_gate_grad').gate_grads(dy, x, None, None, gc, None, None)[0]


@se_gate_grad.register_kernel('cuda')
def cuda_se_gate_grad(dy: Tensor, x: Tensor) -> Tensor:
    return _kernels.cuda('se_gate_grad').se_grads(dy, x, None, None)[0]


@se_gate_grad.register_fake
def _(dy: Tensor, x: Tensor) -> Tensor:
    return _small(x.shape[0], x.shape[1], x)


# ---------------------------------------------------------------- spatial_pool_grad


@torch.library.custom_op('cbam_det::spatial_pool_grad', mutates_args=(), device_types='cpu')
def spatial_pool_grad(x: Tensor, gc: Tensor, smax: Tensor, w_avg: Tensor, w_max: Tensor) -> Tensor:
    """g_c's gradient through the spatial pooling, Σ_hw x·(w_avg + [x·g_c = s_max]·w_max)
    (N, C), with w_avg = d(savg)/C and w_max = d(smax)/ties per pixel (N, H·W)."""
    x, gc, smax, w_avg, w_max = _kernels.dense(x, gc, smax, w_avg, w_max)
    return _kernels.cpu('spatial_pool_grad').spatial_pool_grad(x, None, None, gc, smax, w_avg, w_max)


@spatial_pool_grad.register_kernel('cuda')
def cuda_spatial_pool_grad(x: Tensor, gc: Tensor, smax: Tensor, w_avg: Tensor, w_max: Tensor) -> Tensor:
    # the launcher also counts the channel max's ties (against its cmax argument): unused here
    return _kernels.cuda('spatial_pool_grad').spatial_pool_grad(x, None, None, gc, smax, w_avg, w_max, gc)[0]


@spatial_pool_grad.register_fake
def _(x: Tensor, gc: Tensor, smax: Tensor, w_avg: Tensor, w_max: Tensor) -> Tensor:
    return _small(x.shape[0], x.shape[1], x)


#: each op's CUDA kernel by op name (tests run them in Triton's interpreter on CPU tensors)
CUDA_KERNELS = {
    'channel_pool': cuda_channel_pool,
    'spatial_pool': cuda_spatial_pool,
    'apply_gates': cuda_apply_gates,
    'gate_grads': cuda_gate_grads,
    'se_gate_grad': cuda_se_gate_grad,
    'spatial_pool_grad': cuda_spatial_pool_grad,
}
