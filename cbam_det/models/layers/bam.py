"""BAM: Bottleneck Attention Module.

Park, Woo, Lee, Kweon, "BAM: Bottleneck Attention Module", BMVC 2018,
https://arxiv.org/abs/1807.06514 — eq. (1)-(4), ablations of Table 1:

    F' = F + F ⊗ M(F),   M(F) = σ(Mc(F) + Ms(F))                  (1), (2)
    Mc(F) = BN(MLP(AvgPool(F))),  MLP: C → C/r → C                (3)
    Ms(F) = BN(f3^{1×1}(f2^{3×3}(f1^{3×3}(f0^{1×1}(F)))))          (4)

Mc is (N, C, 1, 1) and Ms is (N, 1, H, W); both are broadcast to C×H×W. Layers as in
the official code: Linear → BatchNorm1d → ReLU → Linear for Mc; 1×1 conv C → C/r,
two 3×3 convs with dilation d, each conv followed by BatchNorm2d and ReLU, and a
1×1 conv to one channel for Ms; all convs and Linears with bias.

``combine`` selects the Table 1b rows: 'sum' σ(C+S) (paper), 'max' σ(max(C, S)),
'product' σ(C·S), 'sigmoid_sum' σ(C)+σ(S). ``residual=False`` is the no-identity
ablation F' = F ⊗ M(F). The official code computes x · (1 + σ(C·S)): ``combine='product'``.
"""

from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS

from ... import kernels
from ...kernels.dispatch import KernelSetup
from ._utils import autocast_off, check_choice, check_input, check_not_frozen, hidden_channels, safe_batch_norm
from .base import AttentionModule

__all__ = ['BAM', 'BAMChannelGate', 'BAMSpatialGate']

COMBINES = ('sum', 'max', 'product', 'sigmoid_sum')


class BAMChannelGate(nn.Module):
    """Mc: global average pool → Linear(C, C/r) → BN1d → ReLU → Linear(C/r, C)."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return float32 logits of shape (N, C, 1, 1)."""
        desc = x.mean((2, 3), dtype=torch.float32)  # global over H×W, any aspect ratio
        with autocast_off(x.device):
            h = F.relu(safe_batch_norm(self.bn, self.fc1(desc.to(self.fc1.weight.dtype))))
            return self.fc2(h).float()[:, :, None, None]


class BAMSpatialGate(nn.Module):
    """Ms: 1×1 conv C → C/r, ``num_dilated`` 3×3 convs with dilation d, 1×1 conv → 1."""

    def __init__(self, in_channels: int, hidden: int, dilation: int, num_dilated: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.reduce_bn = nn.BatchNorm2d(hidden)
        self.dilated = nn.ModuleList(
            nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation) for _ in range(num_dilated)
        )
        self.dilated_bn = nn.ModuleList(nn.BatchNorm2d(hidden) for _ in range(num_dilated))
        self.final = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, 1, H, W) (float32 under autocast)."""
        with autocast_off(x.device):
            h = F.relu(safe_batch_norm(self.reduce_bn, self._reduce(x.to(self.reduce.weight.dtype))))
            for conv, bn in zip(self.dilated, self.dilated_bn):
                h = F.relu(safe_batch_norm(bn, conv(h)))
            return self.final(h).float()

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """``self.reduce(x)`` (the ``cpu`` backend has a faster 1×1 conv for few channels)."""
        return kernels.pointwise_conv(x, self.reduce)


@MODELS.register_module()
class BAM(AttentionModule):
    """Bottleneck Attention Module, placed between stages (after stages 1-3 of a ResNet).

    Args:
        in_channels: channels C of the refined feature map.
        reduction: reduction ratio r of both branches (paper: 16).
        dilation: dilation d of the 3×3 convs (paper: 4).
        num_dilated: number of dilated 3×3 convs (paper: 2).
        combine: 'sum' (paper), 'max', 'product' (official code), 'sigmoid_sum' (Table 1b).
        residual: F + F ⊗ M (paper) or, False, F ⊗ M (the no-identity ablation).
        min_hidden_channels: lower bound of the hidden width (None: no bound).
        init_mode: 'scratch' (official: zero biases, Kaiming fan-out convs, BN γ = 1) or
            'identity' (for a network trained without attention: the refinement
            F ⊗ (1 + M) (or F ⊗ M) is divided by its value at zero logits, and the last layer
            of each branch starts at 0, so F' = F at step 0; the ``torch`` backend runs it).
        allow_frozen: accept mmdet's frozen_stages / norm_eval freezing this module
            (see ``check_not_frozen``); for pretrained attention weights.
        inplace: without autograd (inference), write F' into the input tensor itself (safe
            between ResNet stages, where nothing else reads the stage output). Training is
            unaffected.

    With ``combine`` 'sum' or 'product', the ``cpu`` and ``triton`` backends compute
    F ⊗ (1 + M(F)) in one pass: M(F) is formed on the fly (forward and backward), never stored.
    """

    _abbr_ = 'bam'

    kernel_family = 'bam'
    paper_placement = 'stage'

    @classmethod
    def kernel_setups(cls, channels: int, inplace: bool = False) -> Dict[str, KernelSetup]:
        """BAM with the paper's 'sum' and one dilated conv."""
        return {'bam': KernelSetup(lambda: cls(channels, 4, 1, combine='sum', inplace=inplace), False)}

    def __init__(
        self,
        in_channels: int,
        reduction: int = 16,
        dilation: int = 4,
        *,
        num_dilated: int = 2,
        combine: str = 'sum',
        residual: bool = True,
        min_hidden_channels: Optional[int] = None,
        init_mode: str = 'scratch',
        allow_frozen: bool = False,
        inplace: bool = False,
        init_cfg: Optional[Union[dict, list]] = None,
        identity_logit: Optional[float] = None,
    ) -> None:
        super().__init__('BAM', in_channels, reduction, init_mode, allow_frozen, init_cfg, identity_logit)
        check_choice('BAM', 'combine', combine, COMBINES)
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f'BAM: dilation must be a positive int, got {dilation!r}')
        if not isinstance(num_dilated, int) or num_dilated < 0:
            raise ValueError(f'BAM: num_dilated must be a non-negative int, got {num_dilated!r}')
        hidden = hidden_channels('BAM', in_channels, reduction, min_hidden_channels)
        self.combine = combine
        self.residual = residual
        self.inplace = inplace
        self.channel_att = BAMChannelGate(in_channels, hidden)
        self.spatial_att = BAMSpatialGate(in_channels, hidden, dilation, num_dilated)
        m0 = 1.0 if combine == 'sigmoid_sum' else 0.5  # M at zero logits
        self._normalise_gates(1.0 + m0 if residual else m0)  # identity mode: the refinement is 1 there
        self.reset_parameters()

    def _init_special(self) -> None:
        if self.init_mode == 'identity':  # zero logits: the normalised refinement is exactly 1
            for layer in (self.channel_att.fc2, self.spatial_att.final):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            if self.combine == 'product':  # c·s with c = 0 and s = 1: zero, but not a saddle (∂/∂c = s)
                nn.init.ones_(self.spatial_att.final.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M(F) of shape (N, C, H, W), float32."""
        return self.combined(self.channel_att(x), self.spatial_att(x))

    def combined(self, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """M from the branch logits c (N, C, 1, 1) and s (N, 1, H, W) by the ``combine`` rule."""
        if self.combine == 'sum':
            return torch.sigmoid(c + s)
        if self.combine == 'max':
            return torch.sigmoid(torch.maximum(c, s))
        if self.combine == 'product':
            return torch.sigmoid(c * s)
        return torch.sigmoid(c) + torch.sigmoid(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input('BAM', x, self.in_channels, self.training)
        check_not_frozen(self, 'BAM')
        c, s = self.channel_att(x), self.spatial_att(x)  # eq. 3, 4
        return kernels.run(self, x, c, s)  # eq. 1, 2 on the selected backend

    @property
    def kernel_variant(self) -> Optional[str]:
        """``'bam'`` for the ``combine`` rules the kernels cover ('sum', 'product') with the
        paper's gates, else None (identity mode's normalised refinement runs on ``torch``)."""
        return 'bam' if self.combine in ('sum', 'product') and self.gate_scale is None else None

    def refine(self, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Eq. 1-2 in plain PyTorch from the branch logits: F + F ⊗ M(F) (or F ⊗ M(F)),
        divided by its value at zero logits in identity mode; with ``inplace`` and no
        autograd, written into ``x``."""
        m = self.combined(c, s)
        if self.gate_scale is not None:
            g = ((1 + m) if self.residual else m) * self.gate_scale
            return x.mul_(g.to(x.dtype)) if self.inplace and not torch.is_grad_enabled() else x * g.to(x.dtype)
        m = m.to(x.dtype)
        if self.inplace and not torch.is_grad_enabled():
            return x.mul_(m.add_(1) if self.residual else m)
        return x + x * m if self.residual else x * m

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, combine={self.combine!r}, residual={self.residual}'
