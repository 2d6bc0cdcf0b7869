"""Official CBAM/BAM ImageNet checkpoints → cbam_det: a checkpoint with the official layout and
random values is converted, loaded through init_cfg, and the backbone's stage outputs are
compared with a reference forward written from the official code's description."""

import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from mmdet.registry import MODELS

from cbam_det.converters import OFFICIAL_CONFIGS, convert_official_state_dict
from tests.helpers import REPO

from . import numerics

STAGES = [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)]  # ResNet-50: blocks, planes, stride


def official_state_dict(kind: str, seed: int = 0) -> dict:
    """The official ResNet-50 + CBAM / + BAM layout (torchvision names + attention), random values."""
    g = numerics.generator(seed)
    shapes = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items()}
    for li, (n, planes, _) in enumerate(STAGES, 1):
        c, h = planes * 4, planes * 4 // 16
        for i in range(n):
            if kind == 'cbam':
                p = f'layer{li}.{i}.cbam.'
                shapes.update(
                    {
                        p + 'ChannelGate.mlp.1.weight': (h, c),
                        p + 'ChannelGate.mlp.1.bias': (h,),
                        p + 'ChannelGate.mlp.3.weight': (c, h),
                        p + 'ChannelGate.mlp.3.bias': (c,),
                        p + 'SpatialGate.spatial.conv.weight': (1, 2, 7, 7),
                    }
                )
                for b in ('weight', 'bias', 'running_mean', 'running_var'):  # saved without num_batches_tracked
                    shapes[p + 'SpatialGate.spatial.bn.' + b] = (1,)
        if kind == 'bam' and li < 4:
            p = f'bam{li}.'
            shapes.update(
                {
                    p + 'channel_att.gate_c.gate_c_fc_0.weight': (h, c),
                    p + 'channel_att.gate_c.gate_c_fc_0.bias': (h,),
                    p + 'channel_att.gate_c.gate_c_fc_final.weight': (c, h),
                    p + 'channel_att.gate_c.gate_c_fc_final.bias': (c,),
                    p + 'spatial_att.gate_s.gate_s_conv_reduce0.weight': (h, c, 1, 1),
                    p + 'spatial_att.gate_s.gate_s_conv_reduce0.bias': (h,),
                    p + 'spatial_att.gate_s.gate_s_conv_di_0.weight': (h, h, 3, 3),
                    p + 'spatial_att.gate_s.gate_s_conv_di_0.bias': (h,),
                    p + 'spatial_att.gate_s.gate_s_conv_di_1.weight': (h, h, 3, 3),
                    p + 'spatial_att.gate_s.gate_s_conv_di_1.bias': (h,),
                    p + 'spatial_att.gate_s.gate_s_conv_final.weight': (1, h, 1, 1),
                    p + 'spatial_att.gate_s.gate_s_conv_final.bias': (1,),
                }
            )
            for bn in (
                'channel_att.gate_c.gate_c_bn_1',
                'spatial_att.gate_s.gate_s_bn_reduce0',
                'spatial_att.gate_s.gate_s_bn_di_0',
                'spatial_att.gate_s.gate_s_bn_di_1',
            ):
                for b in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
                    shapes[f'{p}{bn}.{b}'] = () if b == 'num_batches_tracked' else (h,)
    state = {}
    for k, shape in shapes.items():
        if k.endswith('num_batches_tracked'):
            v = torch.tensor(100)
        elif k.endswith('running_var'):
            v = torch.rand(shape, generator=g) + 0.5
        elif k.endswith('running_mean') or k.endswith('bias'):
            v = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN weight
            v = torch.rand(shape, generator=g) * 0.5 + 0.75
        else:  # conv / linear: Kaiming-like scale keeps activations sane through 50 layers
            fan_in = int(torch.tensor(shape[1:]).prod())
            v = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
        state['module.' + k] = v
    return state


# -------------------------------------------------- reference forward, from the official description
def _bn(x, sd, p, eps=1e-5):
    return F.batch_norm(
        x, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'], False, 0.0, eps
    )


def _official_cbam(x, sd, p):
    def mlp(v):
        hidden = F.relu(F.linear(v.flatten(1), sd[p + 'ChannelGate.mlp.1.weight'], sd[p + 'ChannelGate.mlp.1.bias']))
        return F.linear(hidden, sd[p + 'ChannelGate.mlp.3.weight'], sd[p + 'ChannelGate.mlp.3.bias'])

    hw = (x.size(2), x.size(3))
    att = mlp(F.avg_pool2d(x, hw, stride=hw)) + mlp(F.max_pool2d(x, hw, stride=hw))
    x = x * torch.sigmoid(att)[:, :, None, None]
    comp = torch.cat([torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)], 1)  # [max, mean]
    s = _bn(F.conv2d(comp, sd[p + 'SpatialGate.spatial.conv.weight'], padding=3), sd, p + 'SpatialGate.spatial.bn')
    return x * torch.sigmoid(s)


def _official_bam(x, sd, p):
    gc, gs = p + 'channel_att.gate_c.gate_c_', p + 'spatial_att.gate_s.gate_s_'
    avg = F.avg_pool2d(x, x.size(2), stride=x.size(2)).flatten(1)  # official: square inputs only
    c = F.linear(avg, sd[gc + 'fc_0.weight'], sd[gc + 'fc_0.bias'])
    c = F.linear(F.relu(_bn(c, sd, gc + 'bn_1')), sd[gc + 'fc_final.weight'], sd[gc + 'fc_final.bias'])
    s = F.relu(_bn(F.conv2d(x, sd[gs + 'conv_reduce0.weight'], sd[gs + 'conv_reduce0.bias']), sd, gs + 'bn_reduce0'))
    for i in range(2):
        s = F.conv2d(s, sd[f'{gs}conv_di_{i}.weight'], sd[f'{gs}conv_di_{i}.bias'], padding=4, dilation=4)
        s = F.relu(_bn(s, sd, f'{gs}bn_di_{i}'))
    s = F.conv2d(s, sd[gs + 'conv_final.weight'], sd[gs + 'conv_final.bias'])
    return x * (1 + torch.sigmoid(c[:, :, None, None].expand_as(x) * s.expand_as(x)))  # a product


def official_forward(x, state, kind):
    sd = {k[len('module.') :]: v for k, v in state.items()}
    x = F.relu(_bn(F.conv2d(x, sd['conv1.weight'], stride=2, padding=3), sd, 'bn1'))
    x = F.max_pool2d(x, 3, 2, 1)
    outs = []
    for li, (n, _, stride) in enumerate(STAGES, 1):
        for i in range(n):
            p = f'layer{li}.{i}.'
            s = stride if i == 0 else 1
            out = F.relu(_bn(F.conv2d(x, sd[p + 'conv1.weight']), sd, p + 'bn1'))
            out = F.relu(_bn(F.conv2d(out, sd[p + 'conv2.weight'], stride=s, padding=1), sd, p + 'bn2'))
            out = _bn(F.conv2d(out, sd[p + 'conv3.weight']), sd, p + 'bn3')
            if kind == 'cbam':
                out = _official_cbam(out, sd, p + 'cbam.')
            identity = x
            if i == 0:
                identity = _bn(F.conv2d(x, sd[p + 'downsample.0.weight'], stride=s), sd, p + 'downsample.1')
            x = F.relu(out + identity)
        if kind == 'bam' and li < 4:
            x = _official_bam(x, sd, f'bam{li}.')
        outs.append(x)
    return outs


@pytest.mark.parametrize('kind', ['cbam', 'bam'])
def test_converted_official_checkpoint_reproduces_official_forward(kind, tmp_path):
    state = official_state_dict(kind)
    src, dst = str(tmp_path / f'resnet50_{kind}.pth.tar'), str(tmp_path / f'{kind}_mmdet.pth')
    official = {
        'epoch': 90,
        'arch': 'resnet',
        'state_dict': state,
        'best_prec1': torch.tensor(77.62),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.0001}]},
    }
    torch.save(official, src, _use_new_zipfile_serialization=False)  # legacy pickle, as released

    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools/model_converters/official_to_mmdet.py'), src, dst],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'dropped: module.fc.weight (1000, 2048)' in proc.stdout
    assert 'dropped: module.fc.bias (1000,)' in proc.stdout

    cfg = dict(
        type='AttnResNet',
        depth=50,
        freeze_attention=True,
        **OFFICIAL_CONFIGS[kind],
        init_cfg=dict(type='Pretrained', checkpoint=dst),
    )
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    backbone.eval()
    # every key of the backbone is in the converted file and vice versa (strict load)
    converted = torch.load(dst, map_location='cpu')['state_dict']
    missing, unexpected = backbone.load_state_dict(converted, strict=False)
    assert missing == [] and unexpected == []
    # and init_cfg put exactly those values in the model
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, converted[k]), k

    x = torch.randn(2, 3, 96, 96, generator=numerics.generator(1))
    with torch.no_grad():
        ours = backbone(x)
        ref = official_forward(x, state, kind)
    assert len(ours) == 4
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        numerics.assert_close(a, b, depth=50)


def test_converter_reports_and_refuses_unknown_keys():
    state = {'module.conv1.weight': torch.zeros(64, 3, 7, 7), 'module.layer1.0.cbam.Other.w': torch.zeros(1)}
    with pytest.raises(KeyError, match=r'1 checkpoint keys have no place.*module.layer1.0.cbam.Other.w'):
        convert_official_state_dict(state)
    new, dropped, kind = convert_official_state_dict(
        {
            'module.fc.weight': torch.zeros(2, 2),
            'module.bn1.weight': torch.ones(64),
            'module.bn1.running_var': torch.ones(64),
        }
    )
    assert dropped == ['module.fc.weight'] and kind == 'plain'
    assert int(new['bn1.num_batches_tracked']) == 0  # added for pre-0.4.1 checkpoints


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f'touch {self.marker}',))


def test_converter_refuses_a_checkpoint_that_would_run_code(tmp_path):
    """weights_only=True: a pickled callable is refused before it runs, the error names the file,
    the callable and --unsafe-load; the official layout itself loads without the flag."""
    marker = tmp_path / 'code_ran'
    src, dst = str(tmp_path / 'evil.pth.tar'), str(tmp_path / 'out.pth')
    torch.save({'state_dict': {'module.conv1.weight': torch.zeros(1)}, 'x': _RunsCode(str(marker))}, src)
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools/model_converters/official_to_mmdet.py'), src, dst],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and not marker.exists() and not osp.exists(dst)
    assert f'{src}: refused to unpickle' in proc.stderr and 'system' in proc.stderr, proc.stderr[-2000:]
    assert '--unsafe-load' in proc.stderr


def test_tools_load_foreign_checkpoints_with_weights_only(tmp_path):
    """mmengine's local loader, as tools/train.py and tools/test.py set it: a file outside the
    work_dir that would run code is refused; a plain state dict loads; the work_dir is trusted."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from cbam_det.engine import UnsafeCheckpointError, use_safe_checkpoint_loading

    marker = tmp_path / 'code_ran'
    evil, plain = tmp_path / 'evil.pth', tmp_path / 'plain.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'x': _RunsCode(str(marker))}, evil)
    torch.save({'state_dict': {'w': torch.ones(2)}}, plain)
    work = tmp_path / 'work'
    work.mkdir()
    own = work / 'iter_2.pth'
    torch.save(
        {
            'state_dict': {'w': torch.ones(2)},
            'meta': {'dtype': torch.float32, 'when': __import__('datetime').date(2026, 1, 1)},
        },
        own,
    )
    previous = CheckpointLoader._schemes['']
    try:
        use_safe_checkpoint_loading(trusted_dirs=[str(work)])
        with pytest.raises(UnsafeCheckpointError, match=r'evil.pth: refused to unpickle .*system'):
            CheckpointLoader.load_checkpoint(str(evil), map_location='cpu')
        assert not marker.exists()
        assert torch.equal(
            CheckpointLoader.load_checkpoint(str(plain), map_location='cpu')['state_dict']['w'], torch.ones(2)
        )
        assert CheckpointLoader.load_checkpoint(str(own), map_location='cpu')['meta']['when'].year == 2026
    finally:
        CheckpointLoader.register_scheme(prefixes='', loader=previous, force=True)


def test_attention_key_mismatch_is_named_with_the_config_line():
    """Unexpected attention keys (the checkpoint has CBAM/BAM/inserted attention the model lacks)
    are an error naming them and the config that builds them; missing ones only when resuming."""
    from cbam_det.engine import attention_key_mismatch

    plain = ['backbone.layer1.0.conv1.weight', 'backbone.layer1.0.bn3.weight']
    cbam = plain + ['backbone.layer1.0.cbam.channel_gate.fc1.weight', 'backbone.layer1.0.cbam.spatial_gate.bn.bias']
    bam = plain + ['backbone.bam1.channel_att.fc1.weight']
    inserted = plain + ['attention_inserts.neck__out_convs__0.channel_gate.fc1.weight']
    assert attention_key_mismatch(cbam, cbam, resuming=True) is None
    msg = attention_key_mismatch(plain, cbam, resuming=False)
    assert '2 attention keys of the checkpoint have no module' in msg and 'layer1.0.cbam.channel_gate' in msg
    assert "plugins=[dict(cfg=dict(type='CBAM')" in msg and "type='AttnResNet', attention=dict(type='CBAM')" in msg
    assert "bam=dict(type='BAM')" in attention_key_mismatch(plain, bam, resuming=False)
    assert "targets=['neck.out_convs.0']" in attention_key_mismatch(plain, inserted, resuming=False)
    assert attention_key_mismatch(cbam, plain, resuming=False) is None  # load_from a plain detector: fine
    assert 'a resumed run must match its checkpoint' in attention_key_mismatch(cbam, plain, resuming=True)
