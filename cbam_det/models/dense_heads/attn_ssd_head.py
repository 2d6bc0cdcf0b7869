"""SSD head with an attention module right before every level's classifier.

CBAM paper, Sec. 4.5 (VOC 2007, Table 7) and BAM paper, Table 7: SE / BAM / CBAM are
placed "right before every classifier, refining the final features which are composed
of up-sampled global features and corresponding local features" (the StairNet outputs).
One module per pyramid level, built with that level's channel count; the refined feature
feeds both the classification and the box-regression convolutions of the level.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from mmdet.models.dense_heads import SSDHead
from mmdet.registry import MODELS
from torch import nn

from ..layers.factory import build_attention

__all__ = ['AttnSSDHead']


@MODELS.register_module()
class AttnSSDHead(SSDHead):
    """mmdet's ``SSDHead`` plus ``attention=dict(type=...)`` applied per level.

    With ``attention=None`` it is exactly ``SSDHead`` (same parameters, same outputs), except
    that it can predict under mmdet 3.3.0 (whose ``SSDHead`` raises there, issue #11780).

    Args:
        attention: config of any registered module taking ``in_channels`` first
            (``dict(type='CBAM')``, ``dict(type='SE')``, ``dict(type='BAM')``) or None.
        **kwargs: ``SSDHead`` arguments (``in_channels`` gives the per-level channels).
    """

    def __init__(
        self,
        *,
        attention: Optional[dict] = None,
        in_channels: Sequence[int] = (512, 1024, 512, 256, 256, 256),
        **kwargs,
    ) -> None:
        super().__init__(in_channels=in_channels, **kwargs)
        # mmdet 3.3.0 bug (open-mmlab/mmdetection#11780): BaseDenseHead's predict path reads
        # self.loss_cls, which SSDHead never sets (its loss is computed inline), so SSD cannot
        # predict. A head without a loss module there is what the check expects.
        self.loss_cls = None
        self.attentions = (
            None if attention is None else nn.ModuleList(build_attention(attention, c) for c in self.in_channels)
        )

    def forward(self, x: Tuple[torch.Tensor, ...]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        if len(x) != len(self.cls_convs):
            raise ValueError(f'AttnSSDHead: expected {len(self.cls_convs)} feature levels, got {len(x)}')
        cls_scores, bbox_preds = [], []
        for i, (feat, reg_conv, cls_conv) in enumerate(zip(x, self.reg_convs, self.cls_convs)):
            if self.attentions is not None:
                feat = self.attentions[i](feat)
            cls_scores.append(cls_conv(feat))
            bbox_preds.append(reg_conv(feat))
        return cls_scores, bbox_preds
