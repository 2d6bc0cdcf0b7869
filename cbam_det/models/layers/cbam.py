"""CBAM: Convolutional Block Attention Module.

Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521 — Sec. 3, eq. (1)-(3), ablations of Tables 1-3:

    F'  = Mc(F) ⊗ F,   F'' = Ms(F') ⊗ F'                          (1)
    Mc(F) = σ(MLP(AvgPool(F)) + MLP(MaxPool(F)))                  (2)
    Ms(F) = σ(f7×7([AvgPool_c(F); MaxPool_c(F)]))                 (3)

Parameter layout of the authors' official code (so their ImageNet weights convert):
shared MLP Linear(C, C//r) → ReLU → Linear(C//r, C), both with bias; spatial conv
without bias, then BatchNorm2d(1, eps=1e-5, momentum=0.01), then the sigmoid.
The official spatial gate concatenates [max; mean] where the paper writes [avg; max]:
``spatial_pool='max_avg'`` reproduces it; the default follows the paper.
"""

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS

from ... import kernels
from ...kernels.dispatch import KernelSetup
from ._utils import (
    autocast_off,
    check_choice,
    check_input,
    check_not_frozen,
    check_odd_kernel,
    hidden_channels,
    safe_batch_norm,
)
from .base import AttentionModule

__all__ = ['CBAM', 'ChannelGate', 'SpatialGate']

CHANNEL_POOLS = ('avg_max', 'avg', 'max')
SPATIAL_POOLS = ('avg_max', 'max_avg', 'conv1x1')
ARRANGEMENTS = ('channel_first', 'spatial_first', 'parallel')


class ChannelGate(nn.Module):
    """Channel attention logits (eq. 2 before σ): shared MLP over pooled descriptors.

    ``pool='avg'`` is SE's channel attention (Table 1, row "SE"), ``'max'`` and
    ``'avg_max'`` (the paper's choice) the other rows of Table 1.
    """

    def __init__(
        self,
        in_channels: int,
        reduction: int = 16,
        pool: str = 'avg_max',
        min_hidden_channels: Optional[int] = None,
        owner: str = 'CBAM',
    ) -> None:
        super().__init__()
        check_choice(owner, 'channel_pool', pool, CHANNEL_POOLS)
        hidden = hidden_channels(owner, in_channels, reduction, min_hidden_channels)
        self.pool = pool
        self.fc1 = nn.Linear(in_channels, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, in_channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float32 logits of shape (N, C, 1, 1)."""
        avg = x.mean((2, 3), dtype=torch.float32) if self.pool != 'max' else None  # fp32: no fp16 overflow
        mx = x.amax((2, 3)).float() if self.pool != 'avg' else None
        return self.logits(avg, mx)

    def logits(self, avg: Optional[torch.Tensor], mx: Optional[torch.Tensor]) -> torch.Tensor:
        """Shared MLP on the (N, C) float32 descriptors (one call on the stacked ones)."""
        descs = [d for d in (avg, mx) if d is not None]
        n = descs[0].shape[0]
        with autocast_off(descs[0].device):
            out = self.fc2(F.relu(self.fc1(torch.cat(descs, 0).to(self.fc1.weight.dtype)))).float()
        if len(descs) == 2:
            out = out[:n] + out[n:]
        return out[:, :, None, None]


class SpatialGate(nn.Module):
    """Spatial attention logits (eq. 3 before σ): k×k conv over a 2D descriptor, then BN.

    Descriptor (Table 2): ``'avg_max'`` = [mean; max] over channels (paper),
    ``'max_avg'`` = [max; mean] (official code), ``'conv1x1'`` = a learned 1×1 conv C → 1.
    """

    def __init__(self, in_channels: int, kernel_size: int = 7, pool: str = 'avg_max', owner: str = 'CBAM') -> None:
        super().__init__()
        check_choice(owner, 'spatial_pool', pool, SPATIAL_POOLS)
        check_odd_kernel(owner, 'spatial_kernel', kernel_size)
        self.pool = pool
        if pool == 'conv1x1':
            self.reduce = nn.Conv2d(in_channels, 1, 1, bias=False)
        self.conv = nn.Conv2d(1 if pool == 'conv1x1' else 2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float32 logits of shape (N, 1, H, W)."""
        if self.pool == 'conv1x1':
            with autocast_off(x.device):
                desc = self.reduce(x.to(self.reduce.weight.dtype))
                return safe_batch_norm(self.bn, self._conv(desc)).float()
        return self.logits(x.mean(1, keepdim=True, dtype=torch.float32), x.amax(1, keepdim=True))

    def logits(self, avg: torch.Tensor, mx: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """k×k conv + BN on the channel-pooled (N, 1, H, W) maps, in the configured order
        (``update_stats=False``: a recomputation; the BN leaves its running statistics)."""
        with autocast_off(avg.device):
            dtype = self.conv.weight.dtype
            desc = torch.cat([avg, mx] if self.pool == 'avg_max' else [mx, avg], 1).to(dtype)
            return safe_batch_norm(self.bn, self._conv(desc), update_stats).float()

    def _conv(self, desc: torch.Tensor) -> torch.Tensor:
        return self.conv(desc)


@MODELS.register_module()
class CBAM(AttentionModule):
    """Convolutional Block Attention Module; every row of the paper's Tables 1-3.

    An mmcv plugin (``in_channels`` first, ``_abbr_ = 'cbam'``): in mmdet's ResNet use
    ``plugins=[dict(cfg=dict(type='CBAM'), stages=(True,) * 4, position='after_conv3')]``,
    the paper's Fig. 3 placement (after the block's last BN, before the residual addition).

    Args:
        in_channels: channels C of the refined feature map.
        reduction: MLP reduction ratio r; hidden width ``max(C // r, min_hidden_channels)``.
        channel_pool: ``'avg_max'`` (paper), ``'avg'`` (SE-style), ``'max'``, or None for
            spatial attention only.
        spatial_pool: ``'avg_max'`` (paper), ``'max_avg'`` (official code), ``'conv1x1'``
            (learned descriptor), or None for channel attention only.
        spatial_kernel: odd kernel size of the spatial conv (paper: 7; Table 2 also 3).
        arrangement: ``'channel_first'`` (paper), ``'spatial_first'``, or ``'parallel'``
            (F ⊗ σ(logit_c + logit_s), the two maps added before the sigmoid).
        min_hidden_channels: lower bound of the hidden width (None: no bound).
        init_mode: ``'scratch'`` (official init: zero biases, Kaiming fan-out convs,
            spatial BN γ = 0 so the spatial gate starts at 0.5) or ``'identity'`` (for a
            network trained without attention: the gates are 2σ(·), 1 at zero logits, and
            start at zero logits (the MLP's last layer and the spatial BN's γ and β at 0), so
            the module's output equals its input at step 0; see docs/modules.md).
        allow_frozen: accept mmdet's frozen_stages / norm_eval freezing this module
            (see ``check_not_frozen``); for pretrained attention weights.
        inplace: the caller does not read the input again (true for a ResNet plugin: the
            block does not reuse its BN output). Inference multiplies the gates into the
            input tensor itself, like ``nn.ReLU(inplace=True)``: no full-size allocation.
            With the fused CPU kernels in training, the output is written over the input
            too when the input is a BatchNorm's output (the module then computes from the
            BN's saved input and keeps nothing full-size of its own); otherwise backward
            writes the input gradient over the saved input (so do not backward twice
            through one graph). Results unchanged.
        residual: return F + CBAM(F) instead of CBAM(F): the form used for plain,
            non-residual backbones such as VGG, where the module is not followed by a
            residual addition (the identity path keeps the pretrained signal).
    """

    _abbr_ = 'cbam'

    @classmethod
    def kernel_setups(cls, channels: int, inplace: bool = False) -> Dict[str, KernelSetup]:
        """The paper's CBAM alone (an mmdet plugin) and with the BatchNorm before it folded in."""
        return {
            'cbam_plugin': KernelSetup(lambda: cls(channels, 4, inplace=inplace), False),
            'cbam_fused': KernelSetup(lambda: cls(channels, 4, inplace=inplace), True),
        }

    def __init__(
        self,
        in_channels: int,
        reduction: int = 16,
        *,
        channel_pool: Optional[str] = 'avg_max',
        spatial_pool: Optional[str] = 'avg_max',
        spatial_kernel: int = 7,
        arrangement: str = 'channel_first',
        min_hidden_channels: Optional[int] = None,
        init_mode: str = 'scratch',
        allow_frozen: bool = False,
        inplace: bool = False,
        residual: bool = False,
        init_cfg: Optional[Union[dict, list]] = None,
        identity_logit: Optional[float] = None,
    ) -> None:
        super().__init__('CBAM', in_channels, reduction, init_mode, allow_frozen, init_cfg, identity_logit)
        check_choice('CBAM', 'arrangement', arrangement, ARRANGEMENTS)
        if channel_pool is None and spatial_pool is None:
            raise ValueError('CBAM: channel_pool and spatial_pool cannot both be None (no attention left)')
        if arrangement == 'parallel' and (channel_pool is None or spatial_pool is None):
            raise ValueError("CBAM: arrangement='parallel' needs both channel_pool and spatial_pool")
        if inplace and residual:
            raise ValueError('CBAM: inplace=True and residual=True exclude each other (F + CBAM(F) reads F again)')
        self.arrangement = arrangement
        self.inplace = inplace
        self.residual = residual
        # validate in_channels/reduction even for spatial-only (the error names them)
        hidden_channels('CBAM', in_channels, reduction, min_hidden_channels)
        self.channel_gate = (
            None if channel_pool is None else ChannelGate(in_channels, reduction, channel_pool, min_hidden_channels)
        )
        self.spatial_gate = None if spatial_pool is None else SpatialGate(in_channels, spatial_kernel, spatial_pool)
        self._normalise_gates(0.5)  # identity mode: 2σ(·), 1 at zero logits
        self.reset_parameters()

    def _init_special(self) -> None:
        if self.spatial_gate is not None:
            nn.init.zeros_(self.spatial_gate.bn.weight)  # official: spatial gate starts at σ(0) = 0.5
        if self.init_mode == 'identity':  # zero logits: every (normalised) gate is exactly 1
            if self.channel_gate is not None:
                nn.init.zeros_(self.channel_gate.fc2.weight)
                nn.init.zeros_(self.channel_gate.fc2.bias)
            if self.spatial_gate is not None:
                nn.init.zeros_(self.spatial_gate.bn.bias)  # and γ = 0 above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input('CBAM', x, self.in_channels, self.training)
        check_not_frozen(self, 'CBAM')
        y = kernels.attend(self, x)  # eq. 1 on the selected backend (cbam_det.kernels)
        return x + y if self.residual else y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1 as written, F'' = M_s(F') ⊗ F' with F' = M_c(F) ⊗ F (or the configured
        arrangement), in plain PyTorch: what every backend computes."""
        if self.arrangement == 'parallel':  # one full-size gate: nothing separable to record
            gate = self.gate(self.channel_gate(x) + self.spatial_gate(x))
            return x * gate.to(x.dtype)
        applied = {}
        for name, gate in (('channel', self.channel_gate), ('spatial', self.spatial_gate))[
            :: -1 if self.arrangement == 'spatial_first' else 1
        ]:
            if gate is not None:
                applied[name] = self.gate(gate(x))
                x = x * applied[name].to(x.dtype)
        kernels.record.note(self, **applied)
        return x

    def kernel_gates(self) -> Tuple[nn.Module, Optional[nn.Module]]:
        """(channel gate, spatial gate): what the kernels' autograd runs between their passes."""
        return self.channel_gate, self.spatial_gate

    @property
    def kernel_variant(self) -> Optional[str]:
        """``'cbam'`` for the configurations the kernels cover (the paper's module and the
        official [max; mean] variant), else None (the ``torch`` backend runs :meth:`reference`)."""
        covered = (
            self.arrangement == 'channel_first'
            and self.channel_gate is not None
            and self.channel_gate.pool == 'avg_max'
            and self.spatial_gate is not None
            and self.spatial_gate.pool in ('avg_max', 'max_avg')
        )
        return 'cbam' if covered else None

    @property
    def fusable_with_bn(self) -> bool:  # type: ignore[override]
        return self.kernel_variant is not None and not self.residual

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, arrangement={self.arrangement!r}'
