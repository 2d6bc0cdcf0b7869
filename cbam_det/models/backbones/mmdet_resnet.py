"""Attention plugins in mmdet's own ResNet family stay trainable under ``frozen_stages`` and
``norm_eval`` (CBAM paper, Sec. 4.2: the attention is trained with the detector).

Every stock mmdet config has ``frozen_stages=1, norm_eval=True``. Adding
``plugins=[dict(cfg=dict(type='CBAM'), ..., position='after_conv3')]`` to it would freeze the
new, randomly initialised attention of stage 1 forever and freeze the BatchNorm statistics of
all of it. Importing cbam_det wraps ``ResNet._freeze_stages`` and ``ResNet.train`` (and so
every subclass: ResNeXt, ResNetV1d, Res2Net, ...):

- at build time (mmdet's ``__init__`` calls ``_freeze_stages``), each cbam_det attention
  module with ``allow_frozen=False`` (the default) that mmdet froze gets its parameters back
  to ``requires_grad=True``; one log line per backbone says how many, and the
  ``frozen_stages``. DDP sees the attention as trainable;
- afterwards ``train()`` / ``eval()`` (mmdet's ``train`` calls ``_freeze_stages`` every time)
  leave every attention parameter's ``requires_grad`` as it was: a model frozen later by
  anyone (a semi-supervised teacher, an EMA copy, a backbone frozen for fine-tuning) stays
  frozen, one unfrozen stays unfrozen. Attention that trains at that moment is put in the
  model's mode (mmdet puts frozen stages in eval) and, under ``norm_eval``, its BatchNorms
  keep training. ``train`` returns what mmdet's returns.

``allow_frozen=True`` on the module leaves it to mmdet (frozen with its stage), for
pretrained attention weights.

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

from ._placement import decide_trainable, decided, inplace_by_default, keep_attention_norms_training, trains

__all__ = ['patch_mmdet_resnet', 'attention_modules']


def attention_modules(backbone: nn.Module) -> List[nn.Module]:
    """The cbam_det attention modules in ``backbone``."""
    from ..layers.base import AttentionModule

    return [m for m in backbone.modules() if isinstance(m, AttentionModule)]


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
        atts = attention_modules(self)
        kept = {p: p.requires_grad for m in atts if decided(m) for p in m.parameters()}
        freeze(self)
        for p, flag in kept.items():  # after build time, a freeze or unfreeze is the model owner's
            p.requires_grad = flag
        undone = decide_trainable(atts)
        for m in atts:
            if trains(m):  # mmdet put its frozen stages in eval mode
                m.train(self.training)
        if undone:
            print_log(
                f'cbam_det: {len(undone)} attention modules inside frozen stages '
                f'(frozen_stages={self.frozen_stages}) made trainable at build time, and the BatchNorms of '
                f'trainable attention keep training under norm_eval; allow_frozen=True on the module '
                f'freezes it with its stage',
                logger='current',
            )

    def _train(self, mode: bool = True):
        out = train(self, mode)
        if mode and getattr(self, 'norm_eval', False):
            keep_attention_norms_training(attention_modules(self))
        return out

    ResNet._freeze_stages, ResNet.train, ResNet.make_stage_plugins = _freeze_stages, _train, make_stage_plugins
    ResNet._cbam_det_patched = True
    return True


patch_mmdet_resnet()
