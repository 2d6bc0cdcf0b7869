"""CBAM (Woo et al., ECCV 2018, eq. 1-3), SE (Hu et al., CVPR 2018) and BAM's refinement (Park et
al., BMVC 2018, eq. 1-2) composed from the ``cbam_det`` operators (:mod:`.library`), with the small
graphs between them (shared MLP, k×k conv and BN, sigmoids) as ordinary PyTorch operations.

This is what ``torch.compile`` and ``torch.export`` trace on the ``cpu`` backend: a graph of
registered ops with no break, whose backward autograd forms from each op's ``register_autograd``
(the full-size input-gradient terms of the three gating ops are PyTorch operations that inductor
can fuse into one pass; docs/performance.md counts the passes). In eager mode the
backends run :mod:`.fused` instead, whose single autograd node keeps the census's pass counts
without a compiler (:mod:`.triton_attend` on CUDA). Without a folded BatchNorm and without
in-place writes: under ``torch.compile`` inductor plans the memory.
"""

import torch
from torch import nn

from .library import bam, gates

__all__ = ['attend', 'bam_refine']


def attend(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s gated output x ⊗ g_c ⊗ g_s (SE: x ⊗ g_c) from the ops; the module's
    ``kernel_variant`` is ``'cbam'`` or ``'se'``."""
    n, c, h, w = x.shape
    cg, sg = module.kernel_gates()
    avg, mx = gates.channel_pool(x)
    gc = module.gate(cg.logits(avg, mx if cg.pool == 'avg_max' else None)).reshape(n, c)
    gs = None
    if sg is not None:
        savg, smax = gates.spatial_pool(x, gc)
        gs = module.gate(sg.logits(savg.view(n, 1, h, w), smax.view(n, 1, h, w))).reshape(n, h * w)
    return gates.apply_gates(x, gc, gs)


def bam_refine(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool, residual: bool) -> torch.Tensor:
    """BAM's x ⊗ (r + σ(c + s)) (``product``: σ(c·s)) from its branch logits c (N, C, 1, 1)
    and s (N, 1, H, W)."""
    n, ch, h, w = x.shape
    c2, s2 = c.reshape(n, ch).float().contiguous(), s.reshape(n, h * w).float().contiguous()
    return bam.bam_apply(x, c2, s2, product, residual)
