"""The ``torch`` backend: CBAM (CBAM paper, eq. 1-3) and SE from PyTorch operations, with
memory-lean autograd for CBAM's full-size operations.

The small parts of CBAM (the shared MLP on (N, C) descriptors, the 7×7 conv and BN on
(N, 1, H, W) maps) stay ordinary autograd. The full-size (N, C, H, W) parts are three
functions that save only the input ``x`` and small tensors, and recompute ``x ⊗ Mc``
in backward instead of keeping it:

- :class:`ChannelPool`: ``x`` → (mean over H×W, max over H×W), float32.
- :class:`GatedChannelPool`: (``x``, ``g_c``) → mean and max over C of ``x ⊗ g_c``.
- :class:`ApplyGates`: (``x``, ``g_c``, ``g_s``) → ``x ⊗ g_c ⊗ g_s``.

Max-pooling gradients follow torch's ``amax``: shared evenly between tied maxima.
:func:`attend` runs a module on this backend.
"""

from typing import Tuple

import torch
from torch import nn

from .record import note

__all__ = ['ChannelPool', 'GatedChannelPool', 'ApplyGates', 'attend']


def attend(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CBAM's or SE's gated output with PyTorch operations.

    The paper's CBAM (``kernel_variant == 'cbam'``) keeps only ``x`` and the gates for
    backward; SE multiplies by its gate; other CBAM variants run their own equations
    (``module.reference``). With the module's ``inplace`` and no autograd, the gates are
    multiplied into ``x`` itself. Without autograd, and while tracing or exporting, CBAM runs
    its equations as plain operations: a trace then holds no Python autograd function
    (``prim::PythonOp``), which the ONNX exporter would have to inline, and which beside
    mmdeploy's own marks (autograd functions with a symbolic) broke its export
    ("Dangling node reference"; mmdeploy#2102, YOLOX + CBAM).
    """
    variant = module.kernel_variant
    grad = torch.is_grad_enabled() and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())
    inplace = module.inplace and not torch.is_grad_enabled()
    if variant is None or (variant == 'cbam' and not grad and not inplace):
        return module.reference(x)
    cg, gate = module.channel_gate, module.gate  # gate: σ, or σ normalised to 1 at 0 (identity mode)
    if variant == 'se':
        g_c = gate(cg(x))
        note(module, channel=g_c)
        g_c = g_c.to(x.dtype)
        return x.mul_(g_c) if inplace else x * g_c
    sg = module.spatial_gate
    if inplace:
        g_c = gate(cg(x))
        x = x.mul_(g_c.to(x.dtype))
        g_s = gate(sg(x))
        note(module, channel=g_c, spatial=g_s)
        return x.mul_(g_s.to(x.dtype))
    g_c = gate(cg.logits(*ChannelPool.apply(x)))
    g_s = gate(sg.logits(*GatedChannelPool.apply(x, g_c.to(x.dtype))))
    note(module, channel=g_c, spatial=g_s)
    return ApplyGates.apply(x, g_c.to(x.dtype), g_s.to(x.dtype))


def _pool_grad(
    x: torch.Tensor, mx: torch.Tensor, g_max: torch.Tensor, g_avg: torch.Tensor, n: int, dims
) -> torch.Tensor:
    """Gradient of (mean, amax) over ``dims`` in one full-size pass (``mx``, ``g_*`` keep those dims).

    ``amax`` shares the gradient evenly between tied maxima, as torch does; ``n`` is the
    number of pooled elements. The tie counts and the divisions are float32 whatever x's dtype
    (a float16 count of 67,200 tied maxima, a constant channel of a stage-1 map, is inf; a
    bfloat16 one 67,072); the per-row results are rounded to x's dtype once, for the full-size
    select.
    """
    mask = x == mx
    count = mask.sum(dims, keepdim=True, dtype=torch.float32)
    g_avg = g_avg.float() / n
    g_tie = (g_max.float() / count + g_avg).to(x.dtype)
    return torch.where(mask, g_tie, g_avg.to(x.dtype))


class ChannelPool(torch.autograd.Function):
    """(N, C, H, W) → (mean, max) over H×W, each (N, C) float32; saves ``x`` only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        avg = x.mean((2, 3), dtype=torch.float32)
        mx = x.amax((2, 3))
        ctx.save_for_backward(x, mx)
        return avg, mx.float()

    @staticmethod
    def backward(ctx, g_avg: torch.Tensor, g_max: torch.Tensor) -> torch.Tensor:
        x, mx = ctx.saved_tensors
        return _pool_grad(
            x, mx[:, :, None, None], g_max[:, :, None, None], g_avg[:, :, None, None], x.shape[2] * x.shape[3], (2, 3)
        )


class GatedChannelPool(torch.autograd.Function):
    """(x, g_c) → (mean, max) over C of ``x ⊗ g_c``, each (N, 1, H, W) float32.

    ``g_c`` is (N, C, 1, 1) in ``x``'s dtype. Saves ``x``, ``g_c`` and the (small) max map;
    ``x ⊗ g_c`` is a temporary in forward and recomputed in backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, g_c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y = x * g_c
        avg = y.mean(1, keepdim=True, dtype=torch.float32)
        mx = y.amax(1, keepdim=True)
        ctx.save_for_backward(x, g_c, mx)
        return avg, mx.float()

    @staticmethod
    def backward(ctx, g_avg: torch.Tensor, g_max: torch.Tensor):
        x, g_c, mx = ctx.saved_tensors
        dy = _pool_grad(x * g_c, mx, g_max, g_avg, x.shape[1], 1)
        dg_c = torch.einsum('nchw,nchw->nc', dy, x)[:, :, None, None] if ctx.needs_input_grad[1] else None
        dx = dy.mul_(g_c) if ctx.needs_input_grad[0] else None
        return dx, dg_c


class ApplyGates(torch.autograd.Function):
    """(x, g_c, g_s) → ``x ⊗ g_c ⊗ g_s`` with g_c (N, C, 1, 1) and g_s (N, 1, H, W); saves x and the gates."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g_c: torch.Tensor, g_s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, g_c, g_s)
        return (x * g_c).mul_(g_s)

    @staticmethod
    def backward(ctx, g_out: torch.Tensor):
        x, g_c, g_s = ctx.saved_tensors
        t = g_out * g_s  # d out / d (x ⊗ g_c)
        dg_s = None
        if ctx.needs_input_grad[2]:  # sum over C of g_out ⊗ x ⊗ g_c (einsum would copy: permutes)
            dg_s = (x * g_c).mul_(g_out).sum(1, keepdim=True)
        dg_c = torch.einsum('nchw,nchw->nc', t, x)[:, :, None, None] if ctx.needs_input_grad[1] else None
        dx = t.mul_(g_c) if ctx.needs_input_grad[0] else None
        return dx, dg_c, dg_s
