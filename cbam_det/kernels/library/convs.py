"""The two small convolutions with CPU kernels as PyTorch operators: CBAM's k×k spatial conv with
one output channel (Woo et al., ECCV 2018, eq. 3: f^{7×7}) and BAM's 1×1 reduction (Park et al.,
BMVC 2018, eq. 4: f^{1×1}_0), with their input-gradient ops.

    out = spatial_conv(x, w)         F.conv2d(x, w, padding=k // 2), w (1, C, k, k), no bias
    out = pointwise_conv(x, w, b)    F.conv2d(x, w[:, :, None, None], b), w (O, C)

CPU only (float32, contiguous NCHW): on CUDA, cuDNN's convolutions are used and these ops have no
kernel. Schema, CPU kernel (C++), fake and autograd below; the weight gradient of the 1×1 conv is a
batched matrix product in PyTorch.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _kernels

__all__ = ['spatial_conv', 'spatial_conv_grad', 'pointwise_conv', 'pointwise_conv_input_grad']


# ---------------------------------------------------------------- spatial_conv


@torch.library.custom_op('cbam_det::spatial_conv', mutates_args=(), device_types='cpu')
def spatial_conv(x: Tensor, w: Tensor) -> Tensor:
    """k×k conv of x (N, C, H, W) with w (1, C, k, k), zero padding k // 2: (N, 1, H, W)."""
    x, w = _kernels.dense(x, w)
    return _kernels.cpu('spatial_conv').spatial_conv(x, w)


@spatial_conv.register_fake
def _(x: Tensor, w: Tensor) -> Tensor:
    return x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]))


def _spatial_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _spatial_backward(ctx, dout: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    x, w = ctx.saved_tensors
    want_x, want_w = ctx.needs_input_grad
    if not (want_x or want_w):
        return None, None
    dx, dw = spatial_conv_grad(dout.contiguous(), x, w)
    return (dx if want_x else None), (dw if want_w else None)


spatial_conv.register_autograd(_spatial_backward, setup_context=_spatial_setup)


@torch.library.custom_op('cbam_det::spatial_conv_grad', mutates_args=(), device_types='cpu')
def spatial_conv_grad(dout: Tensor, x: Tensor, w: Tensor) -> Tuple[Tensor, Tensor]:
    """(d x, d w) of :func:`spatial_conv` from dout (N, 1, H, W)."""
    dout, x, w = _kernels.dense(dout, x, w)
    dx, dw = _kernels.cpu('spatial_conv_grad').spatial_conv_grad(dout, x, w, True, True)
    return dx, dw


@spatial_conv_grad.register_fake
def _(dout: Tensor, x: Tensor, w: Tensor) -> Tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(w)


# ---------------------------------------------------------------- pointwise_conv


@torch.library.custom_op('cbam_det::pointwise_conv', mutates_args=(), device_types='cpu')
def pointwise_conv(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    """1×1 conv of x (N, C, H, W) with w (O, C) and an optional bias (O,): (N, O, H, W)."""
    x, w, bias = _kernels.dense(x, w, bias)
    return _kernels.cpu('pointwise_conv').pointwise_conv(x, w, bias)


@pointwise_conv.register_fake
def _(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    return x.new_empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3]))


def _pointwise_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1])


def _pointwise_backward(ctx, dout: Tensor) -> Tuple[Optional[Tensor], ...]:
    x, w = ctx.saved_tensors
    n, c, h, wd = x.shape
    dout = dout.contiguous()
    d = dout.view(n, -1, h * wd)
    want_x, want_w, want_b = ctx.needs_input_grad
    dx = pointwise_conv_input_grad(dout, w) if want_x else None
    dw = torch.bmm(d, x.reshape(n, c, h * wd).transpose(1, 2)).sum(0) if want_w else None
    return dx, dw, (d.sum((0, 2)) if want_b else None)


pointwise_conv.register_autograd(_pointwise_backward, setup_context=_pointwise_setup)


@torch.library.custom_op('cbam_det::pointwise_conv_input_grad', mutates_args=(), device_types='cpu')
def pointwise_conv_input_grad(dout: Tensor, w: Tensor) -> Tensor:
    """d x of :func:`pointwise_conv` from dout (N, O, H, W): (N, C, H, W)."""
    dout, w = _kernels.dense(dout, w)
    return _kernels.cpu('pointwise_conv_input_grad').pointwise_conv_input_grad(dout, w)


@pointwise_conv_input_grad.register_fake
def _(dout: Tensor, w: Tensor) -> Tensor:
    return dout.new_empty((dout.shape[0], w.shape[1], dout.shape[2], dout.shape[3]))
