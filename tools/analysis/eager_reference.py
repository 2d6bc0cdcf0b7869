"""The obvious eager implementations of CBAM (Woo et al., ECCV 2018, eq. 1-3), SE (Hu et al.,
CVPR 2018) and BAM (Park et al., BMVC 2018, eq. 1-4), as one writes them first: adaptive
pools, two MLP calls, ``cat``, out-of-place products. The benchmarks' baseline: each wraps one
of our modules and recomputes it with its weights (no kernels, no memory savings). Beside them
:class:`TimmStyleCBAM`, timm's ``CbamModule`` written out (timm is no dependency): the host-time
yardstick of tools/analysis/host_census.py, and :class:`NodeFloor`, the least a module with one
autograd node costs the host. A measuring tool's baselines, not part of the package.
"""

import os.path as osp
import sys

import torch
import torch.nn.functional as F
from torch import nn

_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:  # run from a clone without an install
    sys.path.insert(0, _REPO)

from cbam_det.models.layers import BAM, CBAM, SE  # noqa: E402

__all__ = ['EagerCBAM', 'EagerSE', 'EagerBAM', 'TimmStyleCBAM', 'NodeFloor', 'to_reference']


class _Eager(nn.Module):
    """Wraps a cbam_det module ``m`` and recomputes it the obvious eager way with its weights."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m


class EagerCBAM(_Eager):
    """CBAM, channel then spatial gate, eq. 1-3 written out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cg, sg = self.m.channel_gate, self.m.spatial_gate
        mlp = lambda v: cg.fc2(F.relu(cg.fc1(v.flatten(1))))  # noqa: E731
        mc = torch.sigmoid(mlp(F.adaptive_avg_pool2d(x, 1)) + mlp(F.adaptive_max_pool2d(x, 1)))
        x = x * mc[:, :, None, None].to(x.dtype)
        desc = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)
        return x * torch.sigmoid(sg.bn(sg.conv(desc))).to(x.dtype)


class EagerSE(_Eager):
    """SE: F ⊗ σ(W2 δ(W1 AvgPool(F)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cg = self.m.channel_gate
        gate = torch.sigmoid(cg.fc2(F.relu(cg.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)))))
        return x * gate[:, :, None, None].to(x.dtype)


class EagerBAM(_Eager):
    """BAM: F + F ⊗ σ(Mc(F) + Ms(F)) with the full-size M(F) materialised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ca, sa = self.m.channel_att, self.m.spatial_att
        c = ca.fc2(F.relu(ca.bn(ca.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)))))[:, :, None, None]
        s = F.relu(sa.reduce_bn(sa.reduce(x)))
        for conv, bn in zip(sa.dilated, sa.dilated_bn):
            s = F.relu(bn(conv(s)))
        s = sa.final(s)
        return x + x * torch.sigmoid(c.expand_as(x) + s.expand_as(x)).to(x.dtype)


class TimmStyleCBAM(nn.Module):
    """timm's ``CbamModule`` (``timm/layers/cbam.py``) written out: the channel MLP as two 1×1
    convs on the (N, C, 1, 1) mean and max, the spatial gate a 7×7 conv + BatchNorm on
    [mean; max] over channels, sigmoid gates, out-of-place products (the paper's CBAM, one
    of the most used implementations of it)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        rd = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=False)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=False)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)), inplace=True))
        x_max = self.fc2(F.relu(self.fc1(x.amax((2, 3), keepdim=True)), inplace=True))
        x = x * torch.sigmoid(x_avg + x_max)
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(x_attn)))


class _EmptyNode(torch.autograd.Function):
    """Allocates the output (forward) and the inputs' gradients (backward); computes nothing."""

    @staticmethod
    def forward(ctx, x, *params):
        ctx.save_for_backward(x, *params)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dy):
        return tuple(torch.empty_like(t) for t in ctx.saved_tensors)


class NodeFloor(nn.Module):
    """The host's floor for a module with one autograd node: SE's parameters (the MLP's two
    layers with biases, their tensors read once and kept), one ``autograd.Function`` call whose
    forward allocates the output and saves its inputs and whose backward allocates their
    gradients; no arithmetic, no checks, no launches. What any module of that shape costs beyond it
    is its own work."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        rd = max(channels // reduction, 1)
        self.fc1, self.fc2 = nn.Linear(channels, rd), nn.Linear(rd, channels)
        self._params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _EmptyNode.apply(x, *self._params)


def to_reference(model: nn.Module) -> nn.Module:
    """Replace every CBAM (paper arrangement), SE and BAM (sum, residual) in ``model`` by its
    eager reference with the same weights, in place; returns ``model``."""
    for name, child in model.named_children():
        if isinstance(child, CBAM) and child.arrangement == 'channel_first' and child.spatial_gate is not None:
            setattr(model, name, EagerCBAM(child))
        elif isinstance(child, SE):
            setattr(model, name, EagerSE(child))
        elif isinstance(child, BAM) and child.combine == 'sum' and child.residual:
            setattr(model, name, EagerBAM(child))
        else:
            to_reference(child)
    return model
