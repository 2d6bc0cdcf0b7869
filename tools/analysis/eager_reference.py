"""The obvious eager implementations of CBAM (Woo et al., ECCV 2018, eq. 1-3), SE (Hu et al.,
CVPR 2018) and BAM (Park et al., BMVC 2018, eq. 1-4), as one writes them first: adaptive
pools, two MLP calls, ``cat``, out-of-place products. The benchmarks' baseline: each wraps one
of our modules and recomputes it with its weights (no kernels, no memory savings). A measuring
tool's baseline, not part of the package.
"""

import toolkit  # noqa: F401  (only to put the repository on sys.path)
import torch
import torch.nn.functional as F
from torch import nn

from cbam_det.models.layers import BAM, CBAM, SE

__all__ = ['EagerCBAM', 'EagerSE', 'EagerBAM', 'to_reference']


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
