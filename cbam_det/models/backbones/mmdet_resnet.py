"""Attention plugins in mmdet's own ResNet family stay trainable under ``frozen_stages`` and
``norm_eval`` (CBAM paper, Sec. 4.2: the attention is trained with the detector).

Every stock mmdet config has ``frozen_stages=1, norm_eval=True``. Adding
``plugins=[dict(cfg=dict(type='CBAM'), ..., position='after_conv3')]`` to it would freeze the
new, randomly initialised attention of stage 1 forever and freeze the BatchNorm statistics of
all of it. Importing cbam_det wraps ``ResNet._freeze_stages`` and ``ResNet.train`` (and so
every subclass: ResNeXt, ResNetV1d, Res2Net, ...): after mmdet freezes, each cbam_det
attention module with ``allow_frozen=False`` (the default) gets its parameters back to
``requires_grad=True``, its mode back to the model's, and its BatchNorms back to training.
``_freeze_stages`` runs in ``__init__``, so this is decided at build time and DDP sees the
attention as trainable. One log line per backbone says so. ``allow_frozen=True`` on the
module leaves it to mmdet (frozen with its stage), for pretrained attention weights.

``ResNet.make_stage_plugins`` is wrapped too: a cbam_det plugin whose config does not set
``inplace`` gets ``inplace=True``. In every plugin position of mmdet's bottleneck (after
conv1's ReLU, conv2's ReLU, the last BN) nothing but the plugin reads the tensor it
refines, so inference multiplies into it instead of allocating a new one (measured:
docs/performance.md). ``inplace=False`` in the plugin config keeps the copy.
"""

from typing import List

from mmdet.models.backbones.resnet import ResNet
from mmengine.logging import print_log
from torch import nn

from ._placement import inplace_by_default, keep_attention_norms_training, keep_attention_trainable

__all__ = ['patch_mmdet_resnet', 'trainable_attention']


def trainable_attention(backbone: nn.Module) -> List[nn.Module]:
    """cbam_det attention modules in ``backbone`` that must stay trainable (``allow_frozen=False``)."""
    from ..layers.base import AttentionModule

    return [m for m in backbone.modules() if isinstance(m, AttentionModule) and not m.allow_frozen]


def _is_cbam_det(cfg) -> bool:
    """Whether a plugin config builds one of cbam_det's attention modules."""
    from ..layers.base import AttentionModule

    if not isinstance(cfg, dict):
        return False
    cls = cfg.get('type')
    if isinstance(cls, str):
        from mmdet.registry import MODELS

        cls = MODELS.get(cls)
    return isinstance(cls, type) and issubclass(cls, AttentionModule)


def patch_mmdet_resnet() -> bool:
    """Wrap mmdet's ``ResNet._freeze_stages`` / ``train`` / ``make_stage_plugins`` once; False where they are missing
    (an mmdet without them: the modules' own check then refuses a frozen training step)."""
    if getattr(ResNet, '_cbam_det_patched', False):
        return True
    freeze, train = getattr(ResNet, '_freeze_stages', None), getattr(ResNet, 'train', None)
    make_plugins = getattr(ResNet, 'make_stage_plugins', None)
    if freeze is None or train is None or make_plugins is None:
        return False

    def make_stage_plugins(self, plugins, stage_idx):
        stage_plugins = make_plugins(self, plugins, stage_idx)
        for plugin in stage_plugins:
            if isinstance(plugin, dict) and _is_cbam_det(plugin.get('cfg')):
                plugin['cfg'] = inplace_by_default(plugin['cfg'])
        return stage_plugins

    def _freeze_stages(self) -> None:
        freeze(self)
        atts = trainable_attention(self)
        if not atts:
            return
        frozen = [m for m in atts if not all(p.requires_grad for p in m.parameters())]
        keep_attention_trainable(atts, self.training)
        if frozen and not getattr(self, '_cbam_det_logged', False):
            self._cbam_det_logged = True
            print_log(
                f'cbam_det: {len(frozen)} attention modules inside frozen stages '
                f'(frozen_stages={self.frozen_stages}) kept trainable, and every attention BatchNorm '
                f'keeps training under norm_eval; allow_frozen=True on the module freezes it with its stage',
                logger='current',
            )

    def _train(self, mode: bool = True):
        train(self, mode)
        if mode and getattr(self, 'norm_eval', False):
            keep_attention_norms_training(trainable_attention(self))
        return self

    ResNet._freeze_stages, ResNet.train, ResNet.make_stage_plugins = _freeze_stages, _train, make_stage_plugins
    ResNet._cbam_det_patched = True
    return True


patch_mmdet_resnet()
