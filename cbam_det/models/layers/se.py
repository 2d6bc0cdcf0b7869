"""SE: Squeeze-and-Excitation, the baseline of the CBAM and BAM papers.

Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018, https://arxiv.org/abs/1709.01507:
    F' = F ⊗ σ(W2 δ(W1 AvgPool(F)))   (W1: C → C/r, W2: C/r → C, with biases)
It equals CBAM's channel attention with average pooling only (CBAM paper, Table 1).
"""

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmdet.registry import MODELS

from ... import kernels
from ...kernels.dispatch import KernelSetup
from ._utils import check_input, check_not_frozen
from .base import AttentionModule
from .cbam import ChannelGate

__all__ = ['SE']


@MODELS.register_module()
class SE(AttentionModule):
    """Squeeze-and-Excitation channel attention (average pooling, MLP, sigmoid).

    Args:
        in_channels: channels C of the refined feature map.
        reduction: reduction ratio r; hidden width ``max(C // r, min_hidden_channels)``.
        min_hidden_channels: lower bound of the hidden width (None: no bound).
        init_mode: ``'scratch'`` (zero biases, PyTorch Linear init) or ``'identity'``
            (the gate is 2σ(·), 1 at zero logits, and the MLP's last layer starts at 0: the
            output equals the input at step 0).
        allow_frozen: accept mmdet's frozen_stages / norm_eval freezing this module
            (see ``check_not_frozen``); for pretrained attention weights.
        inplace: the caller does not read the input again; as CBAM's ``inplace`` (in-place
            product in inference and after a BatchNorm in training, otherwise the input
            gradient written over the saved input in training).
    """

    _abbr_ = 'se'
    fusable_with_bn = True
    kernel_variant = 'se'

    @classmethod
    def kernel_setups(cls, channels: int, inplace: bool = False) -> Dict[str, KernelSetup]:
        """SE alone (an mmdet plugin) and with the BatchNorm before it folded in."""
        return {
            'se_plugin': KernelSetup(lambda: cls(channels, 4, inplace=inplace), False),
            'se_fused': KernelSetup(lambda: cls(channels, 4, inplace=inplace), True),
        }

    def __init__(
        self,
        in_channels: int,
        reduction: int = 16,
        *,
        min_hidden_channels: Optional[int] = None,
        init_mode: str = 'scratch',
        allow_frozen: bool = False,
        inplace: bool = False,
        init_cfg: Optional[Union[dict, list]] = None,
        identity_logit: Optional[float] = None,
    ) -> None:
        super().__init__('SE', in_channels, reduction, init_mode, allow_frozen, init_cfg, identity_logit)
        self.inplace = inplace
        self.channel_gate = ChannelGate(in_channels, reduction, 'avg', min_hidden_channels, owner='SE')
        self._normalise_gates(0.5)  # identity mode: 2σ(·), 1 at zero logits
        self.reset_parameters()

    def kernel_gates(self) -> Tuple[nn.Module, Optional[nn.Module]]:
        """(the channel gate, None): SE has no spatial gate."""
        return self.channel_gate, None

    def _init_special(self) -> None:
        if self.init_mode == 'identity':  # zero logits: the normalised gate is exactly 1
            nn.init.zeros_(self.channel_gate.fc2.weight)
            nn.init.zeros_(self.channel_gate.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input('SE', x, self.in_channels, self.training)
        check_not_frozen(self, 'SE')
        return kernels.attend(self, x)  # F ⊗ σ(MLP(AvgPool(F))) on the selected backend

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """F' = F ⊗ σ(W2 δ(W1 AvgPool(F))) in plain PyTorch: what every backend computes."""
        return x * self.gate(self.channel_gate(x)).to(x.dtype)
