"""A freeze stays a freeze: whether attention trains is decided once, at build time (attention
inside mmdet's ``frozen_stages`` is made trainable unless ``allow_frozen=True``); after that
``train()`` / ``eval()`` never change ``requires_grad``. Exercised through mmdet's and
mmengine's own code paths: a SoftTeacher-style ``SemiBaseDetector``, ``ExpMomentumEMA``, a
backbone frozen by hand, and every cbam_det backbone (random init, nothing downloaded)."""

import copy

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from cbam_det import CBAM
from cbam_det.models.layers.base import AttentionModule

from .helpers import DEMO_CONFIG

STOCK = dict(frozen_stages=1, norm_eval=True)  # every stock mmdet ResNet config


def _resnet(**kw):
    plugin = dict(cfg=dict(type='CBAM'), stages=(True,) * 4, position='after_conv3')
    return MODELS.build(dict(type='ResNet', depth=50, base_channels=16, plugins=[plugin], **kw))


def _attention(model):
    return [m for m in model.modules() if isinstance(m, AttentionModule)]


def _cycle(model):
    """What runners, hooks and wrappers do to a model between steps."""
    for mode in (True, False, True):
        model.train(mode)


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _attention_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if '.cbam.' in k}


def test_semi_supervised_teacher_stays_frozen_and_untouched_by_a_student_step():
    """mmdet's SemiBaseDetector (SoftTeacher's base) freezes its teacher; its CBAM must neither
    become trainable nor let its BatchNorms learn while the teacher labels a batch."""
    from mmdet.models.detectors.semi_base import SemiBaseDetector
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    model_cfg = Config.fromfile(DEMO_CONFIG).model
    model_cfg.backbone.update(STOCK)  # the stock settings SoftTeacher's configs inherit
    semi = SemiBaseDetector(
        detector=model_cfg,
        semi_train_cfg=dict(freeze_teacher=True),
        semi_test_cfg=dict(predict_on='teacher'),
        data_preprocessor=model_cfg.data_preprocessor,
    )
    _cycle(semi)
    assert _trainable(semi.teacher) == []
    assert _trainable(semi.student)  # the student trains, its attention included
    assert all(p.requires_grad for m in _attention(semi.student) for p in m.parameters())
    before = _attention_state(semi.teacher)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():  # the teacher's pseudo-labelling forward (SoftTeacher.get_pseudo_instances)
        semi.teacher.extract_feat(x)
    samples = []
    for _ in range(2):
        s = DetDataSample(
            metainfo=dict(img_shape=(96, 96), ori_shape=(96, 96), pad_shape=(96, 96), scale_factor=(1, 1))
        )
        s.gt_instances = InstanceData(bboxes=torch.tensor([[10.0, 12.0, 60.0, 70.0]]), labels=torch.tensor([1]))
        samples.append(s)
    losses = semi.student.loss(x, samples)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if 'loss' in k)
    opt = torch.optim.SGD([p for p in semi.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-4)
    total.backward()
    opt.step()
    after = _attention_state(semi.teacher)
    assert before.keys() == after.keys() and len(before) > 0
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], changed
    assert all(p.grad is None for p in semi.teacher.parameters())


def test_ema_copy_stays_frozen_and_still_averages_the_attention():
    """mmengine's averaged models deep-copy the model and call requires_grad_(False) (YOLOX's
    and RTMDet's ExpMomentumEMA)."""
    from mmdet.models.layers import ExpMomentumEMA

    model = _resnet(**STOCK)
    ema = ExpMomentumEMA(model, momentum=0.5, gamma=1)
    _cycle(ema)
    _cycle(ema.module)
    assert _trainable(ema.module) == []
    ema.update_parameters(model)  # step 0: a copy
    with torch.no_grad():
        for m in _attention(model):
            for p in m.parameters():
                p.add_(1.0)
    ref = copy.deepcopy(ema.module.layer1[0].cbam.channel_gate.fc2.bias)
    ema.update_parameters(model)
    moved = ema.module.layer1[0].cbam.channel_gate.fc2.bias
    assert not torch.allclose(moved, ref) and not moved.requires_grad
    assert _trainable(ema.module) == []


def test_a_backbone_frozen_by_hand_stays_frozen_and_one_unfrozen_stays_unfrozen():
    r = _resnet(**STOCK)
    r.requires_grad_(False)  # fine-tuning a head on a frozen backbone
    _cycle(r)
    assert _trainable(r) == []
    assert not any(m.training for a in _attention(r) for m in a.modules() if isinstance(m, _BatchNorm))
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    sum(o.sum() for o in r(x)).backward()  # a training step through it works (a head would train)
    assert all(p.grad is None for p in r.parameters())
    r.requires_grad_(True)  # unfrozen by hand: mmdet re-freezes its own stage 1, the attention stays trainable
    _cycle(r)
    assert all(p.requires_grad for a in _attention(r) for p in a.parameters())
    assert not r.layer1[0].conv1.weight.requires_grad and r.layer2[0].conv1.weight.requires_grad


def test_build_time_rule_for_a_stock_config_backbone():
    """Fresh frozen_stages=1, norm_eval=True: stage 1's attention trainable, its other weights
    frozen, every attention BN training, the backbone's BNs in eval; the log states frozen_stages=1."""
    import logging

    from mmengine.logging import MMLogger

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        r = _resnet(**STOCK)
        _cycle(r)
        later = _resnet(norm_eval=True)  # frozen_stages=-1: nothing to undo at build time ...
        later.requires_grad_(False)  # ... and a freeze afterwards is not mmdet's: no claim about it
        _cycle(later)
    finally:
        logger.removeHandler(handler)
    lines = [rec.getMessage() for rec in records if 'cbam_det' in rec.getMessage()]
    assert len(lines) == 1 and '3 attention modules' in lines[0] and 'frozen_stages=1' in lines[0], lines
    r.train()
    atts = _attention(r)
    assert len(atts) == 16 and all(p.requires_grad for a in atts for p in a.parameters())
    assert all(m.training for a in atts for m in a.modules())
    assert not any(p.requires_grad for n, p in r.layer1.named_parameters() if '.cbam.' not in n)
    assert not r.layer1[0].bn1.training and not r.layer3[0].bn1.training


def test_wrapped_train_returns_what_mmdets_returns():
    from mmdet.models.backbones.resnet import ResNet

    r = _resnet(**STOCK)
    plain = MODELS.build(dict(type='ResNet', depth=50, base_channels=16, **STOCK))
    assert r.train() is plain.train() is None  # mmdet's ResNet.train returns None
    assert ResNet._cbam_det_patched


def _attn_resnet(**kw):
    return MODELS.build(dict(type='AttnResNet', depth=50, base_channels=16, attention=dict(type='CBAM'), **kw))


def _attn_resnext(**kw):
    return MODELS.build(
        dict(type='AttnResNeXt', depth=50, groups=4, base_width=4, base_channels=16, attention=dict(type='CBAM'), **kw)
    )


def _attn_res_layer(**kw):
    kw.pop('frozen_stages')
    return MODELS.build(
        dict(type='AttnResLayer', depth=50, stage=3, base_channels=16, attention=dict(type='CBAM'), **kw)
    )


@pytest.mark.parametrize('make', [_attn_resnet, _attn_resnext, _attn_res_layer], ids=lambda f: f.__name__[1:])
def test_cbam_det_backbones_keep_a_freeze_and_an_unfreeze(make):
    m = make(**STOCK)
    atts = _attention(m)
    assert atts and all(p.requires_grad for a in atts for p in a.parameters())  # the build-time rule
    m.requires_grad_(False)
    _cycle(m)
    assert _trainable(m) == []
    assert not any(b.training for a in atts for b in a.modules() if isinstance(b, _BatchNorm))  # norm_eval applies
    m.requires_grad_(True)
    _cycle(m)
    assert all(p.requires_grad for a in atts for p in a.parameters())
    assert all(b.training for a in atts for b in a.modules() if isinstance(b, _BatchNorm))


def test_allow_frozen_attention_is_left_to_mmdet():
    plugin = dict(cfg=dict(type='CBAM', allow_frozen=True), stages=(True,) * 4, position='after_conv3')
    r = MODELS.build(dict(type='ResNet', depth=50, base_channels=16, plugins=[plugin], **STOCK))
    _cycle(r)
    assert not any(p.requires_grad for p in r.layer1[0].cbam.parameters())
    assert all(p.requires_grad for p in r.layer2[0].cbam.parameters())
    assert isinstance(r.layer2[0].cbam, CBAM) and not r.layer2[0].cbam.spatial_gate.bn.training
