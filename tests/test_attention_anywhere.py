"""Attention in any detector: AttentionInserted on YOLOX, RTMDet, SSDLite, SSD300-VGG16 and an FPN
neck; the residual CBAM; and the plugin route on mmdet's own stock configs."""

import os.path as osp

import mmdet
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config, ConfigDict

from cbam_det import CBAM, insert_attention, match_modules
from cbam_det.utils import no_pretrained
from tests.helpers import REPO, dist_train_with_attention_dumps

from . import numerics

ANYWHERE = {  # config -> (input size, number of attention modules, channels of the first one)
    'yolox/yolox_s-cbam_8xb8-300e_coco.py': (128, 7, 64),
    'rtmdet/rtmdet_s-cbam_8xb32-300e_coco.py': (128, 7, 64),
    'ssd/ssdlite_mobilenetv2-cbam_8xb24-600e_coco.py': (128, 7, 16),
    'ssd/ssd300_vgg16-cbam-residual_voc0712.py': (300, 5, 64),
    'faster_rcnn/faster-rcnn_r50_fpn-cbam_1x_coco.py': (128, 4, 256),
}


def build(cfg_model: dict):
    torch.manual_seed(numerics.seed())
    model = MODELS.build(ConfigDict(no_pretrained(cfg_model)))
    model.init_weights()
    return model


def loss_step(model, size: int, num_classes: int, with_mask: bool = False) -> torch.Tensor:
    packed = demo_mm_inputs(
        2, [[3, size, size], [3, size, size]], num_items=[3, 2], num_classes=num_classes, with_mask=with_mask
    )
    model.train()
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    return packed


@pytest.mark.parametrize('rel', list(ANYWHERE))
def test_shipped_config_trains_and_predicts(rel):
    size, n_modules, first_c = ANYWHERE[rel]
    cfg = Config.fromfile(osp.join(REPO, 'configs', rel))
    assert cfg.custom_imports.imports == ['cbam_det']
    model_cfg = cfg.model.to_dict()
    model_cfg['detector'].get('data_preprocessor', {}).pop('batch_augments', None)  # no random 480-800 resize
    model = build(model_cfg)
    atts = [m for m in model.attention_inserts.modules() if isinstance(m, CBAM)]
    assert len(atts) == n_modules and atts[0].in_channels == first_c
    # original names untouched: the stock detector's state dict is the same minus the new modules
    plain = build(model_cfg['detector'])
    keys = {k for k in model.state_dict() if not k.startswith('attention_inserts.')}
    assert keys == set(plain.state_dict())
    assert all(p.requires_grad for p in model.attention_inserts.parameters())

    head = getattr(model, 'bbox_head', None) or model.roi_head.bbox_head
    num_classes = head.num_classes
    packed = loss_step(model, size, min(num_classes, 3))
    for i, m in enumerate(atts):  # every module is on the gradient path (the spatial conv waits for BN γ ≠ 0)
        assert all(p.grad is not None for p in m.parameters()), f'{rel}: module {i}'
        assert m.channel_gate.fc2.weight.grad.abs().sum() > 0, f'{rel}: module {i}'
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2 and results[0].pred_instances.bboxes.shape[-1] == 4


def test_checkpoint_reloads_into_a_fresh_build(tmp_path):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'yolox/yolox_s-cbam_8xb8-300e_coco.py')).model.to_dict()
    a = build(cfg)
    with torch.no_grad():
        for p in a.attention_inserts.parameters():
            p.add_(1.0)
    torch.save(a.state_dict(), tmp_path / 'ckpt.pth')
    b = build(cfg)
    result = b.load_state_dict(torch.load(tmp_path / 'ckpt.pth', weights_only=True), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_a_top_level_data_preprocessor_is_taken_as_tools_give_it():
    """mmdeploy's task processors add ``data_preprocessor`` to the model config's top level: an
    empty one (their default) leaves the detector's, a non-empty one replaces it."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'yolox/yolox_s-cbam_8xb8-300e_coco.py')).model.to_dict()
    own = build(dict(cfg, data_preprocessor={})).data_preprocessor
    assert own.pad_size_divisor == cfg['detector']['data_preprocessor']['pad_size_divisor'] == 32
    other = build(dict(cfg, data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=64)))
    assert other.data_preprocessor.pad_size_divisor == 64


def test_insertion_changes_exactly_the_target_outputs():
    """The hook output is the attention applied to the module's own output (per level for a
    tuple), and the input position refines a head's inputs."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'yolox/yolox_s-cbam_8xb8-300e_coco.py')).model.to_dict()
    model = build(cfg['detector']).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        stage2 = model.backbone.stage2(model.backbone.stage1(model.backbone.stem(x)))
        feats = model.extract_feat(x)
    insert_attention(
        model, [dict(path='backbone.stage2'), dict(path='bbox_head', position='input')], probe_size=(96, 96)
    )
    model.eval()
    att = model.attention_inserts['backbone__stage2']
    heads = model.attention_inserts['bbox_head']
    assert [m.in_channels for m in heads] == [f.shape[1] for f in feats]
    with torch.no_grad():
        got = model.backbone.stage2(model.backbone.stage1(model.backbone.stem(x)))
        numerics.assert_close(got, att(stage2))
        seen = []
        handle = model.bbox_head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        model.bbox_head(feats)
        handle.remove()
    for f, h, g in zip(feats, heads, seen[0]):
        numerics.assert_close(g, h(f))


def test_patterns_and_bad_targets_are_named():
    model = build(Config.fromfile(osp.join(REPO, 'configs', 'yolox/yolox_s-cbam_8xb8-300e_coco.py')).model.detector)
    assert match_modules(model, 'neck.out_convs.*') == ['neck.out_convs.0', 'neck.out_convs.1', 'neck.out_convs.2']
    assert match_modules(model, 'backbone.stage[2-3]') == ['backbone.stage2', 'backbone.stage3']
    with pytest.raises(ValueError, match=r"target 'backbone.stage9' matches no module; top-level modules: \["):
        insert_attention(model, ['backbone.stage9'])
    with pytest.raises(ValueError, match=r"unknown position='after'; allowed: 'output', 'input'"):
        insert_attention(model, [dict(path='backbone.stage1', position='after')])
    with pytest.raises(ValueError, match=r'a target is a pattern string or dict\(path=...'):
        insert_attention(model, [dict(pattern='backbone.stage1')])
    with pytest.raises(ValueError, match='targets is empty'):
        insert_attention(model, [])
    with pytest.raises(TypeError, match=r"target 'bbox_head' \(output\): expected a tensor or a tuple/list of"):
        insert_attention(model, ['bbox_head'], probe_size=(64, 64))  # returns lists of per-level outputs


def test_residual_cbam_is_f_plus_cbam_f():
    torch.manual_seed(numerics.seed())
    plain, res = CBAM(32), CBAM(32, residual=True)
    res.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for m in (plain, res):
            m.spatial_gate.bn.weight.fill_(0.7)
    x = torch.randn(2, 32, 9, 7, requires_grad=True)
    for mode in (True, False):
        plain.train(mode), res.train(mode)
        numerics.assert_close(res(x), x + plain(x))
    with pytest.raises(ValueError, match='inplace=True and residual=True exclude each other'):
        CBAM(32, inplace=True, residual=True)


STOCK = {  # mmdet's own configs, plus CBAM plugins in every stage of their ResNet/ResNeXt: (with masks, size)
    'retinanet/retinanet_r50_fpn_1x_coco.py': (False, 96),
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py': (True, 96),
    'cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py': (False, 96),
    'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py': (False, 96),
    'atss/atss_r50_fpn_1x_coco.py': (False, 96),
    'dino/dino-4scale_r50_8xb2-12e_coco.py': (False, 256),  # 900 queries need >= 900 encoder tokens
    'faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py': (False, 96),
}


@pytest.mark.parametrize('rel', list(STOCK))
def test_stock_configs_with_plugin_lines_train(rel):
    """frozen_stages=1, norm_eval=True as shipped: the plugin lines alone give a model whose
    every CBAM, the frozen stage's included, trains."""
    cfg = Config.fromfile(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', rel))
    assert cfg.model.backbone.frozen_stages == 1 and cfg.model.backbone.norm_eval
    cfg.model.backbone.plugins = [dict(cfg=dict(type='CBAM'), stages=(True, True, True, True), position='after_conv3')]
    cfg.model.backbone.zero_init_residual = False  # else the attention input is 0 at step 0
    model = build(cfg.model.to_dict())
    atts = [m for m in model.backbone.modules() if isinstance(m, CBAM)]
    assert len(atts) == sum(model.backbone.stage_blocks) and all(p.requires_grad for m in atts for p in m.parameters())
    with_mask, size = STOCK[rel]
    loss_step(model, size, 3, with_mask=with_mask)
    assert model.backbone.layer1[0].cbam.channel_gate.fc2.weight.grad.abs().sum() > 0
    assert model.backbone.layer1[0].conv1.weight.grad is None  # the stage itself stays frozen


def yolox_on_demo_data(root: str) -> str:
    """The YOLOX-S + CBAM config on the demo data: 160 px, batch 2, 3 iterations, no evaluation."""
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=(160, 160), keep_ratio=True),
        dict(type='Pad', size=(160, 160), pad_val=dict(img=(114.0, 114.0, 114.0))),
        dict(type='PackDetInputs'),
    ]
    dataset = dict(
        type='CocoDataset',
        data_root=root.rstrip('/') + '/',
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='VOCdevkit/VOC2007/JPEGImages/'),
        metainfo=dict(classes=('circle', 'square', 'triangle')),
        filter_cfg=dict(filter_empty_gt=True),
        pipeline=pipeline,
    )
    return f"""
_base_ = {osp.join(REPO, 'configs/yolox/yolox_s-cbam_8xb8-300e_coco.py')!r}
custom_imports = dict(imports=['cbam_det', 'dump_attention'], allow_failed_imports=False)
model = dict(detector=dict(data_preprocessor=dict(batch_augments=None), bbox_head=dict(num_classes=3)))
train_dataloader = dict(_delete_=True, batch_size=2, num_workers=0, persistent_workers=False,
                        sampler=dict(type='DefaultSampler', shuffle=True), dataset={dataset!r})
val_dataloader = val_cfg = val_evaluator = test_dataloader = test_cfg = test_evaluator = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3, val_interval=1000)
param_scheduler = []
custom_hooks = [dict(type='DumpAttention')]
default_hooks = dict(checkpoint=dict(interval=1000, by_epoch=False), logger=dict(interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
"""


@pytest.mark.slow
def test_yolox_cbam_two_processes_keep_attention_equal_across_ranks(tiny_demo_data, tmp_path):
    """tools/dist_train.sh with 2 CPU processes (gloo): after 3 steps every attention parameter
    has moved from its initial value and is bit-identical on both ranks."""
    out, before, r0, r1 = dist_train_with_attention_dumps(tmp_path, yolox_on_demo_data(tiny_demo_data), 29541)
    assert 'Iter(train) [3/3]' in out, out[-3000:]
    params = [k for k in r0 if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    assert len(r0) == len(before) > len(params) > 0
    for name in params:
        assert torch.equal(r0[name], r1[name]), name
    moved = sum(not torch.equal(r0[k], before[k]) for k in params)
    assert moved >= len(params) // 2, f'only {moved} of {len(params)} attention parameters changed'
