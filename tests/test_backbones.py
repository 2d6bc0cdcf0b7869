"""AttnResNet / AttnResNeXt: attention in every depth, BAM placement, torchvision keys, freezing."""

import pytest
import torch
import torchvision
from mmdet.registry import MODELS

from cbam_det import BAM, CBAM, SE, AttnResNet, PluginBasicBlock

from . import numerics

FC = {18: 513_000, 34: 513_000, 50: 2_049_000, 101: 2_049_000}  # ImageNet classifier (C*1000 + 1000)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    'depth,attention,expected',
    [
        (18, None, 11_689_512),
        (34, None, 21_797_672),
        (50, None, 25_557_032),
        (18, 'CBAM', 11_779_392),
        (34, 'CBAM', 21_960_468),  # paper Table 4: 11.78M, 21.96M
        (50, 'CBAM', 28_089_624),
        (101, 'CBAM', 49_330_172),  # paper Table 4: 28.09M, 49.33M
        (50, 'SE', 28_088_024),  # paper Table 4: 28.09M
    ],
)
def test_classification_parameter_counts(depth, attention, expected):
    """Backbone + ImageNet fc against the papers' Table 4 (and torchvision for plain ResNets)."""
    cfg = dict(type='AttnResNet', depth=depth)
    if attention:
        cfg['attention'] = dict(type=attention)
    assert n_params(MODELS.build(cfg)) + FC[depth] == expected
    if attention is None:
        assert expected == n_params(getattr(torchvision.models, f'resnet{depth}')())


def test_resnet50_bam_parameter_count():
    b = MODELS.build(dict(type='AttnResNet', depth=50, bam=dict(type='BAM')))
    assert n_params(b) + FC[50] == 25_915_099  # BAM paper Table 4: 25.92M


@pytest.mark.parametrize('depth', [18, 34])
def test_basic_block_plugin_placement_and_output(depth):
    """In a BasicBlock the attention refines bn2's output, before the residual addition."""
    torch.manual_seed(numerics.seed())
    b = MODELS.build(dict(type='AttnResNet', depth=depth, attention=dict(type='CBAM'))).eval()
    blocks = [blk for layer in (b.layer1, b.layer2, b.layer3, b.layer4) for blk in layer]
    assert all(isinstance(blk, PluginBasicBlock) and isinstance(blk.cbam, CBAM) for blk in blocks)
    blk = b.layer2[0]  # has a downsample
    with torch.no_grad():
        for p in blk.cbam.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 64, 10, 14)
    with torch.no_grad():
        out = blk.norm2(blk.conv2(blk.relu(blk.norm1(blk.conv1(x)))))
        expected = torch.relu(blk.cbam(out.clone()) + blk.downsample(x))  # inplace=True here
        numerics.assert_close(blk(x), expected, depth=3)
        # the plain block (attention removed) gives a different output: the attention is used
        assert not torch.allclose(torch.relu(out + blk.downsample(x)), expected)
    outs = b(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 2, 3)]


def test_basic_block_refuses_bottleneck_position():
    with pytest.raises(ValueError, match=r"position='after_conv3' in a BasicBlock.*'after_conv1', 'after_conv2'"):
        MODELS.build(
            dict(
                type='AttnResNet',
                depth=18,
                plugins=[dict(cfg=dict(type='SE'), stages=(True,) * 4, position='after_conv3')],
            )
        )


def test_plugins_argument_works_for_basic_blocks():
    b = MODELS.build(
        dict(
            type='AttnResNet',
            depth=18,
            plugins=[dict(cfg=dict(type='SE'), stages=(False, True, True, True), position='after_conv2')],
        )
    )
    assert not hasattr(b.layer1[0], 'se') and isinstance(b.layer2[1].se, SE)


def test_bam_placement_after_stages_1_to_3():
    torch.manual_seed(numerics.seed())
    b = MODELS.build(dict(type='AttnResNet', depth=50, base_channels=16, bam=dict(type='BAM'))).eval()
    assert b.bam_names == ['bam1', 'bam2', 'bam3']
    assert [getattr(b, n).in_channels for n in b.bam_names] == [64, 128, 256]
    assert not hasattr(b, 'bam4')
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        h = b.maxpool(b.relu(b.norm1(b.conv1(x))))
        expected = []
        for i, layer in enumerate((b.layer1, b.layer2, b.layer3, b.layer4)):
            h = layer(h)
            if i < 3:
                h = getattr(b, f'bam{i + 1}')(h)
            expected.append(h)
        for a, e in zip(b(x), expected):
            numerics.assert_close(a, e, depth=50)
    c4 = MODELS.build(
        dict(
            type='AttnResNet',
            depth=50,
            base_channels=16,
            num_stages=3,
            strides=(1, 2, 2),
            dilations=(1, 1, 1),
            out_indices=(2,),
            bam=dict(type='BAM'),
        )
    )
    assert c4.bam_names == ['bam1', 'bam2', 'bam3']  # bam3 refines the C4 output
    only2 = MODELS.build(dict(type='AttnResNet', depth=18, bam=dict(type='BAM'), bam_stages=(False, True, False)))
    assert only2.bam_names == ['bam2'] and only2.bam2.in_channels == 128
    with pytest.raises(ValueError, match=r'bam_stages must have min\(num_stages, 3\) = 3 entries'):
        MODELS.build(dict(type='AttnResNet', depth=18, bam=dict(type='BAM'), bam_stages=(True,) * 4))


def test_resnext_with_attention_and_bam():
    b = MODELS.build(
        dict(
            type='AttnResNeXt',
            depth=50,
            groups=32,
            base_width=4,
            base_channels=16,
            attention=dict(type='CBAM'),
            bam=dict(type='BAM'),
        )
    )
    assert isinstance(b.layer3[0].cbam, CBAM) and b.layer3[0].conv2.groups == 32
    assert isinstance(b.bam3, BAM)
    assert [o.shape[1] for o in b(torch.randn(1, 3, 64, 64))] == [64, 128, 256, 512]


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
@pytest.mark.parametrize('attention', ['CBAM', 'SE'])
def test_torchvision_state_dict_loads_with_only_attention_missing(depth, attention):
    tv = getattr(torchvision.models, f'resnet{depth}')().state_dict()
    tv = {k: v for k, v in tv.items() if not k.startswith('fc.')}
    b = MODELS.build(
        dict(
            type='AttnResNet',
            depth=depth,
            attention=dict(type=attention),
            bam=dict(type='BAM') if depth == 50 else None,
        )
    )
    missing, unexpected = b.load_state_dict(tv, strict=False)
    assert unexpected == []
    abbr = attention.lower()
    assert missing and all(f'.{abbr}.' in k or k.startswith('bam') for k in missing)
    n_blocks = {18: 8, 34: 16, 50: 16, 101: 33}[depth]
    assert len({k.split(f'.{abbr}.')[0] for k in missing if f'.{abbr}.' in k}) == n_blocks


@pytest.mark.parametrize('freeze_attention', [False, True])
def test_frozen_stages_and_norm_eval_with_attention(freeze_attention):
    b = MODELS.build(
        dict(
            type='AttnResNet',
            depth=50,
            base_channels=16,
            attention=dict(type='CBAM'),
            bam=dict(type='BAM'),
            frozen_stages=1,
            norm_eval=True,
            freeze_attention=freeze_attention,
        )
    )
    b.train()
    att = b.layer1[0].cbam
    assert not b.layer1[0].conv1.weight.requires_grad and not b.layer1[0].bn1.training  # mmdet's freezing
    assert not b.layer2[0].bn1.training  # norm_eval on the backbone's own BNs
    if freeze_attention:
        assert not att.spatial_gate.bn.training and not any(p.requires_grad for p in att.parameters())
    else:
        assert att.training and att.spatial_gate.bn.training and all(p.requires_grad for p in att.parameters())
        assert b.bam1.channel_att.bn.training and b.layer3[2].cbam.spatial_gate.bn.training
    out = b(torch.randn(2, 3, 64, 64))  # a training step works in both modes (no refusal)
    out[-1].sum().backward()
    grads = att.channel_gate.fc2.weight.grad
    assert (grads is None) == freeze_attention


def _mmdet_resnet(allow_frozen=False, **kw):
    plugin = dict(cfg=dict(type='CBAM', allow_frozen=allow_frozen), stages=(True,) * 4, position='after_conv3')
    return MODELS.build(dict(type='ResNet', depth=50, base_channels=16, plugins=[plugin], **kw))


def test_mmdet_resnet_keeps_attention_trainable_under_frozen_stages_and_norm_eval():
    """The stock-config settings frozen_stages=1, norm_eval=True: decided at build time, the
    attention of the frozen stage keeps requires_grad=True and every attention BN trains,
    while the stage's own weights and the backbone's BNs are frozen as mmdet says; a training
    step gives the stage-1 attention a gradient."""
    r = _mmdet_resnet(frozen_stages=1, norm_eval=True)
    atts = [m for m in r.modules() if isinstance(m, CBAM)]
    assert len(atts) == 16 and all(p.requires_grad for m in atts for p in m.parameters())
    assert not any(p.requires_grad for n, p in r.layer1.named_parameters() if '.cbam.' not in n)
    r.train()
    assert all(m.training for a in atts for m in a.modules())
    assert not r.layer1[0].bn1.training and not r.layer2[0].bn1.training
    out = r(torch.randn(2, 3, 32, 32))
    sum(o.sum() for o in out).backward()
    assert r.layer1[0].cbam.channel_gate.fc2.weight.grad is not None
    assert r.layer1[0].conv1.weight.grad is None


def test_mmdet_resnet_allow_frozen_freezes_and_manual_freezing_is_the_owners_choice():
    """allow_frozen=True leaves the attention to mmdet (frozen with its stage, BNs in eval);
    attention frozen by hand after the build stays frozen: a training step runs and gives it
    no gradient (tests/test_freezing.py covers teachers, EMA copies and fine-tuning)."""
    r = _mmdet_resnet(allow_frozen=True, frozen_stages=1, norm_eval=True)
    r.train()
    assert not any(p.requires_grad for p in r.layer1[0].cbam.parameters())
    assert not r.layer2[0].cbam.spatial_gate.bn.training
    r(torch.randn(2, 3, 32, 32))
    r = _mmdet_resnet()
    r.train()
    r.layer1.eval().requires_grad_(False)
    out = r(torch.randn(2, 3, 32, 32, requires_grad=True))
    sum(o.sum() for o in out).backward()
    assert r.layer1[0].cbam.channel_gate.fc2.weight.grad is None
    assert r.layer2[0].cbam.channel_gate.fc2.weight.grad is not None


def test_attention_frozen_outside_a_deciding_backbone_is_refused():
    """A CBAM that no backbone decided about, frozen in eval mode, refuses a training step:
    it would stay at its initialisation (mmdet's frozen_stages in a backbone cbam_det does not wrap)."""
    m = CBAM(16)
    m.eval().requires_grad_(False)
    with pytest.raises(RuntimeError, match='frozen_stages covers its stage'):
        m(torch.randn(2, 16, 8, 8, requires_grad=True))
    with torch.no_grad():  # inference is fine
        m(torch.randn(2, 16, 8, 8))


def test_zero_init_residual_for_basic_blocks():
    b = MODELS.build(dict(type='AttnResNet', depth=18, attention=dict(type='SE')))
    b.init_weights()
    assert all(torch.all(blk.norm2.weight == 0) for layer in (b.layer1, b.layer4) for blk in layer)
    assert isinstance(b, AttnResNet)


def test_attn_res_layer_follows_the_backbone_placement_width_and_fusion():
    """AttnResLayer uses the backbone's placement helper: same blocks, in-place attention by
    default, fused with the last BN, a configurable base width, and the same output as the
    backbone's own stage 4 with the same weights."""
    torch.manual_seed(numerics.seed())
    head = MODELS.build(dict(type='AttnResLayer', depth=50, base_channels=16, attention=dict(type='CBAM')))
    backbone = MODELS.build(
        dict(type='AttnResNet', depth=50, base_channels=16, attention=dict(type='CBAM'), zero_init_residual=False)
    )
    atts = head.attention_modules()
    assert len(atts) == 3 and all(isinstance(m, CBAM) and m.inplace for m in atts)
    assert all(blk.fuse_attention for blk in head.layer4)
    assert head.layer4[0].conv1.in_channels == 16 * 2**2 * 4
    head.layer4.load_state_dict(backbone.layer4.state_dict())
    head.train(), backbone.train()
    x = torch.randn(2, 16 * 2**2 * 4, 8, 8)
    numerics.assert_close(head(x), backbone.layer4(x), depth=9)
    with pytest.raises(ValueError, match='base_channels'):
        MODELS.build(dict(type='AttnResLayer', depth=50, base_channels=0))


def test_resnet50_cbam_parameter_count():
    """mmdet ResNet-50 + CBAM in all 16 blocks = 28,089,624 (paper: 28.09M) - 2,049,000 fc."""
    backbone = MODELS.build(
        dict(
            type='ResNet',
            depth=50,
            plugins=[dict(cfg=dict(type='CBAM'), stages=(True, True, True, True), position='after_conv3')],
        )
    )
    assert sum(p.numel() for p in backbone.parameters()) == 26_040_624
    cbam_blocks = [m for m in backbone.modules() if isinstance(m, CBAM)]
    assert len(cbam_blocks) == 16
    assert [m.in_channels for m in cbam_blocks] == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    plain = MODELS.build(dict(type='ResNet', depth=50))
    assert sum(p.numel() for p in plain.parameters()) == 23_508_032
