"""AttnSSDHead (attention right before every classifier) and the StairNet neck."""

import pytest
import torch
from mmdet.registry import MODELS

from cbam_det import BAM, CBAM, SE, AttnSSDHead, StairNetNeck

from . import numerics

CHANNELS = (32, 48, 32, 16, 16, 16)
SIZES = (38, 19, 10, 5, 3, 1)  # SSD300's levels


def head_cfg(**kw):
    return dict(
        in_channels=CHANNELS,
        num_classes=4,
        anchor_generator=dict(
            type='SSDAnchorGenerator',
            scale_major=False,
            input_size=300,
            basesize_ratio_range=(0.2, 0.9),
            strides=[8, 16, 32, 64, 100, 300],
            ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        ),
        **kw,
    )


def feats(batch=2, seed=0):
    g = numerics.generator(seed)
    return tuple(torch.randn(batch, c, s, s, generator=g) for c, s in zip(CHANNELS, SIZES))


def test_head_without_attention_equals_mmdet_ssd_head():
    torch.manual_seed(numerics.seed())
    ours = MODELS.build(dict(type='AttnSSDHead', **head_cfg()))
    ref = MODELS.build(dict(type='SSDHead', **head_cfg()))
    assert set(ours.state_dict()) == set(ref.state_dict())
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=True)
    x = feats()
    for a, b in zip(ours(x), ref(x)):
        for ta, tb in zip(a, b):
            torch.testing.assert_close(ta, tb, rtol=0, atol=0)


@pytest.mark.parametrize('attention,cls', [('CBAM', CBAM), ('SE', SE), ('BAM', BAM)])
def test_head_attention_per_level(attention, cls):
    torch.manual_seed(numerics.seed())
    head = MODELS.build(dict(type='AttnSSDHead', attention=dict(type=attention, reduction=4), **head_cfg()))
    plain = MODELS.build(dict(type='AttnSSDHead', **head_cfg()))
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith('attentions.')})
    assert len(head.attentions) == 6
    assert [type(m) for m in head.attentions] == [cls] * 6
    assert [m.in_channels for m in head.attentions] == list(CHANNELS)
    head.eval(), plain.eval()
    with torch.no_grad():
        for m in head.attentions:  # away from the identity-like start so that every level changes
            for p in m.parameters():
                p.normal_(0, 0.5)
    x = feats()
    with torch.no_grad():
        out, ref = head(x), plain(x)
        for lvl in range(6):
            assert not torch.allclose(out[0][lvl], ref[0][lvl]) and not torch.allclose(out[1][lvl], ref[1][lvl])
            # each level's predictors read the level's refined feature
            refined = head.attentions[lvl](x[lvl])
            numerics.assert_close(out[0][lvl], head.cls_convs[lvl](refined), depth=2)
            numerics.assert_close(out[1][lvl], head.reg_convs[lvl](refined), depth=2)


def test_neck_shapes_and_gradients_reach_every_level():
    torch.manual_seed(numerics.seed())
    neck = StairNetNeck(CHANNELS, out_channels=(24,) * 6).train()
    x = tuple(t.requires_grad_() for t in feats())
    outs = neck(x)
    assert [tuple(o.shape) for o in outs] == [(2, 24, s, s) for s in SIZES]
    # the finest output depends on every input level (top-down path), and every input gets gradient
    outs[0].sum().backward()
    for i, t in enumerate(x):
        assert t.grad is not None and t.grad.abs().sum() > 0, f'level {i}'
    default = StairNetNeck(CHANNELS)
    assert [o.shape[1] for o in default(feats())] == list(CHANNELS)  # out_channels default: what the head expects


def test_neck_follows_the_documented_recurrence():
    torch.manual_seed(numerics.seed())
    neck = StairNetNeck(CHANNELS, out_channels=(8,) * 6).eval()
    x = feats(batch=1)
    with torch.no_grad():
        outs = neck(x)
        top = neck.fuse[5](neck.laterals[5](x[5]))
        numerics.assert_close(outs[5], top, depth=2)
        # 1x1 -> deconv x2 = 2x2 -> bilinear to 3x3 ; 10x10 -> 20x20 -> crop to 19x19
        up = torch.nn.functional.interpolate(
            neck.deconvs[4](outs[5]), size=(3, 3), mode='bilinear', align_corners=False
        )
        numerics.assert_close(outs[4], neck.fuse[4](neck.laterals[4](x[4]) + up), depth=4)
        up = neck.deconvs[1](outs[2])[:, :, :19, :19]
        numerics.assert_close(outs[1], neck.fuse[1](neck.laterals[1](x[1]) + up), depth=10)


def test_head_predicts_despite_mmdet_330_ssd_bug():
    from mmdet.structures import DetDataSample
    from mmengine.config import ConfigDict

    head = MODELS.build(
        dict(
            type='AttnSSDHead',
            attention=dict(type='CBAM', reduction=4),
            **head_cfg(),
            test_cfg=ConfigDict(
                nms_pre=100, nms=dict(type='nms', iou_threshold=0.45), min_bbox_size=0, score_thr=0.02, max_per_img=20
            ),
        )
    ).eval()
    sample = DetDataSample(metainfo=dict(img_shape=(300, 300), ori_shape=(300, 300), scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        res = head.predict(feats(batch=1), [sample], rescale=True)
    assert res[0].bboxes.shape[1] == 4 and len(res[0].bboxes) <= 20


def test_neck_bad_input():
    with pytest.raises(ValueError, match='same length'):
        StairNetNeck((32, 16), out_channels=(8,))
    with pytest.raises(ValueError, match=r'level 1 has 99 channels, in_channels\[1\]=48'):
        StairNetNeck(CHANNELS)(
            tuple(torch.randn(1, c if i != 1 else 99, s, s) for i, (c, s) in enumerate(zip(CHANNELS, SIZES)))
        )
    with pytest.raises(ValueError, match='expected 6 levels, got 5'):
        StairNetNeck(CHANNELS)(feats()[:5])
    assert isinstance(MODELS.build(dict(type='AttnSSDHead', **head_cfg())), AttnSSDHead)


@pytest.mark.parametrize(
    'norm_cfg, cls',
    [(dict(type='SyncBN'), torch.nn.SyncBatchNorm), (dict(type='GN', num_groups=4), torch.nn.GroupNorm)],
    ids=['SyncBN', 'GN'],
)
def test_neck_norm_cfg_reaches_the_deconvs(norm_cfg, cls):
    """Every norm of the neck, the deconvolutions' included, is built from ``norm_cfg``, so a
    SyncBN config reaches all of them; with SyncBN the state-dict names are those of BN."""
    neck = StairNetNeck(in_channels=(16, 32, 32), norm_cfg=norm_cfg)
    deconv_norms = [seq[1] for seq in neck.deconvs]
    assert len(deconv_norms) == 2 and all(isinstance(m, cls) for m in deconv_norms)
    assert not [m for m in neck.modules() if type(m) is torch.nn.BatchNorm2d]
    if cls is torch.nn.SyncBatchNorm:
        assert set(neck.state_dict()) == set(StairNetNeck(in_channels=(16, 32, 32)).state_dict())
