"""CBAM ablations (Tables 1-3), SE and BAM (Table 1b) against plain references; init; numerics."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from cbam_det import BAM, CBAM, SE, build_attention

from . import numerics


# ----------------------------------------------------------------------------- references
def ref_bn(x, bn, training):
    """BatchNorm over every dim but 1, written out."""
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    if training and x.numel() // x.shape[1] > 1:
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + bn.eps) * bn.weight.reshape(
        shape
    ) + bn.bias.reshape(shape)


def ref_channel_logit(x, fc1, fc2, pool):
    mlp = lambda v: torch.relu(v @ fc1.weight.t() + fc1.bias) @ fc2.weight.t() + fc2.bias  # noqa: E731
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    out = 0
    if 'avg' in pool:
        out = out + mlp(flat.sum(-1) / flat.shape[-1])
    if 'max' in pool:
        out = out + mlp(flat.max(-1).values)
    return out.reshape(n, c, 1, 1)


def ref_spatial_logit(x, sg, pool, training):
    k = sg.conv.weight.shape[-1]
    if pool == 'conv1x1':
        desc = (x * sg.reduce.weight.reshape(1, -1, 1, 1)).sum(1, keepdim=True)
    else:
        avg, mx = x.sum(1, keepdim=True) / x.shape[1], x.max(1, keepdim=True).values
        desc = torch.cat([avg, mx] if pool == 'avg_max' else [mx, avg], 1)
    return ref_bn(F.conv2d(desc, sg.conv.weight, padding=k // 2), sg.bn, training)


def ref_cbam(m, x, channel_pool, spatial_pool, arrangement):
    c = lambda t: ref_channel_logit(t, m.channel_gate.fc1, m.channel_gate.fc2, channel_pool)  # noqa: E731
    s = lambda t: ref_spatial_logit(t, m.spatial_gate, spatial_pool, m.training)  # noqa: E731
    if arrangement == 'parallel':
        return x * torch.sigmoid(c(x) + s(x))
    order = ['c', 's'] if arrangement == 'channel_first' else ['s', 'c']
    for g in order:
        if g == 'c' and channel_pool is not None:
            x = x * torch.sigmoid(c(x))
        if g == 's' and spatial_pool is not None:
            x = x * torch.sigmoid(s(x))
    return x


def ref_bam(m, x, combine, residual, keep=None):
    """BAM by the paper's equations; ``keep``: a dict that receives each BN's input, by the name
    of the layer before it (their gradients are what a bias before a BN sums to zero)."""
    ca, sa, tr = m.channel_att, m.spatial_att, m.training
    keep = {} if keep is None else keep
    n, ch = x.shape[:2]
    keep['channel_att.fc1'] = x.reshape(n, ch, -1).mean(-1) @ ca.fc1.weight.t() + ca.fc1.bias
    h = ref_bn(keep['channel_att.fc1'], ca.bn, tr)
    c = (torch.relu(h) @ ca.fc2.weight.t() + ca.fc2.bias).reshape(n, ch, 1, 1)
    keep['spatial_att.reduce'] = F.conv2d(x, sa.reduce.weight, sa.reduce.bias)
    t = torch.relu(ref_bn(keep['spatial_att.reduce'], sa.reduce_bn, tr))
    for i, (conv, bn) in enumerate(zip(sa.dilated, sa.dilated_bn)):
        d = conv.dilation[0]
        keep[f'spatial_att.dilated.{i}'] = F.conv2d(t, conv.weight, conv.bias, padding=d, dilation=d)
        t = torch.relu(ref_bn(keep[f'spatial_att.dilated.{i}'], bn, tr))
    s = F.conv2d(t, sa.final.weight, sa.final.bias)
    m_ = {
        'sum': lambda: torch.sigmoid(c + s),
        'max': lambda: torch.sigmoid(torch.maximum(c, s)),
        'product': lambda: torch.sigmoid(c * s),
        'sigmoid_sum': lambda: torch.sigmoid(c) + torch.sigmoid(s),
    }[combine]()
    return x + x * m_ if residual else x * m_


def randomise(m, seed=0):
    g = numerics.generator(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in m.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return m


SHAPES = [(2, 32, 7, 11), (1, 48, 9, 9), (3, 32, 1, 1)]
CBAM_VARIANTS = [  # (channel_pool, spatial_pool, kernel, arrangement): every row of Tables 1-3
    ('avg', None, 7, 'channel_first'),
    ('max', None, 7, 'channel_first'),
    ('avg_max', None, 7, 'channel_first'),
    ('avg_max', 'avg_max', 3, 'channel_first'),
    ('avg_max', 'avg_max', 7, 'channel_first'),
    ('avg_max', 'conv1x1', 3, 'channel_first'),
    ('avg_max', 'conv1x1', 7, 'channel_first'),
    ('avg_max', 'avg_max', 7, 'spatial_first'),
    ('avg_max', 'avg_max', 7, 'parallel'),
    ('avg_max', 'max_avg', 7, 'channel_first'),
    (None, 'avg_max', 7, 'channel_first'),
    ('avg_max', 'avg_max', 5, 'channel_first'),
]


@pytest.mark.parametrize('variant', CBAM_VARIANTS, ids=lambda v: '-'.join(map(str, v)))
@pytest.mark.parametrize('shape', SHAPES, ids=str)
@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_cbam_variants_match_reference(variant, shape, train):
    cp, sp, k, arr = variant
    if train and sp is not None and shape[0] * shape[2] * shape[3] == 1:
        pytest.skip('one value per channel: covered by test_single_value_batchnorm')
    m = randomise(CBAM(shape[1], channel_pool=cp, spatial_pool=sp, spatial_kernel=k, arrangement=arr)).train(train)
    x = torch.randn(shape)
    numerics.assert_close(m(x), ref_cbam(m, x, cp, sp, arr))


@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_se_matches_reference(shape):
    m = randomise(SE(shape[1]))
    x = torch.randn(shape)
    ref = x * torch.sigmoid(ref_channel_logit(x, m.channel_gate.fc1, m.channel_gate.fc2, 'avg'))
    numerics.assert_close(m(x), ref)
    # SE == CBAM channel attention with average pooling only (CBAM paper, Table 1)
    c = CBAM(shape[1], channel_pool='avg', spatial_pool=None)
    c.channel_gate.load_state_dict(m.channel_gate.state_dict())
    numerics.assert_close(c(x), m(x))


@pytest.mark.parametrize(
    'combine,residual', list(itertools.product(['sum', 'max', 'product', 'sigmoid_sum'], [True, False]))
)
@pytest.mark.parametrize('shape', [(2, 32, 7, 11), (2, 64, 13, 5), (3, 32, 1, 1)], ids=str)
@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_bam_variants_match_reference(combine, residual, shape, train):
    m = randomise(BAM(shape[1], combine=combine, residual=residual)).train(train)
    x = torch.randn(shape)
    numerics.assert_close(m(x), ref_bam(m, x, combine, residual))


@pytest.mark.parametrize(
    'make,ref',
    [
        (lambda: CBAM(32), lambda m, x, keep: ref_cbam(m, x, 'avg_max', 'avg_max', 'channel_first')),
        (
            lambda: SE(32),
            lambda m, x, keep: x * torch.sigmoid(ref_channel_logit(x, m.channel_gate.fc1, m.channel_gate.fc2, 'avg')),
        ),
        (lambda: BAM(32), lambda m, x, keep: ref_bam(m, x, 'sum', True, keep)),
    ],
    ids=['CBAM', 'SE', 'BAM'],
)
def test_default_modules_gradients_match_reference(make, ref):
    m = randomise(make()).train()
    for bn in m.modules():  # β = 0: half of each BN's outputs pass the ReLU after it, for any seed
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.zeros_(bn.bias)
    # batch 8: BAM's channel BN normalises N values per channel, and over 2 the BN's backward
    # cancels badly (a bias before it then holds 1e-4 of its terms instead of 0)
    x = torch.randn(8, 32, 9, 6, requires_grad=True)
    w = torch.randn(8, 32, 9, 6)
    names, params = ['input'] + [n for n, _ in m.named_parameters()], [x] + list(m.parameters())
    # a bias followed by BatchNorm in training is cancelled by the mean: its gradient is exactly 0
    # (BAM keeps these biases to match the official parameter layout). What it holds is the rounding
    # of a sum of the BN input's gradients, which a BN over few samples can make far larger than any
    # parameter's gradient: it is judged against those terms (the reference keeps the BN inputs)
    before_bn = {
        'channel_att.fc1.bias',
        'spatial_att.reduce.bias',
        'spatial_att.dilated.0.bias',
        'spatial_att.dilated.1.bias',
    }
    with torch.no_grad():  # cancelled by the BN anyway; at 0 the BN's mean is not formed from an offset
        for name, p in m.named_parameters():
            if name in before_bn:
                p.zero_()
    keep = {}
    g_mod = torch.autograd.grad((m(x) * w).sum(), params)
    g_all = torch.autograd.grad((ref(m, x, keep) * w).sum(), params + list(keep.values()))
    g_ref, bn_inputs = g_all[: len(params)], dict(zip(keep, g_all[len(params) :]))
    rest = []
    for i, (name, a, b) in enumerate(zip(names, g_mod, g_ref)):
        if name in before_bn:  # 0 within the rounding of the sum that forms it, in both
            dz = bn_inputs[name.rsplit('.', 1)[0]]
            for got in (a, b):
                scale, n = float(dz.abs().max()), dz.numel() // dz.shape[1]
                numerics.assert_close(got, torch.zeros_like(got), depth=2, scale=scale, terms=n, msg=name)
        else:  # zero only where the reference's is (random weights can leave a ReLU dead for the batch)
            assert bool(a.abs().sum() > 0) == bool(b.abs().sum() > 0), name
            rest.append(i)
    assert g_mod[0].abs().sum() > 0
    numerics.assert_grads_close([g_mod[i] for i in rest], [g_ref[i] for i in rest], names=[names[i] for i in rest])


def test_bam_defaults_and_official_combine():
    m = BAM(256)
    assert m.channel_att.fc1.out_features == 16 and m.spatial_att.dilated[0].dilation == (4, 4)
    assert len(m.spatial_att.dilated) == 2 and m.combine == 'sum' and m.residual
    # official: x * (1 + sigmoid(C * S)) == combine='product' with the identity path
    randomise(m).eval()
    x = torch.randn(2, 256, 6, 6)
    c = m.channel_att(x)
    s = m.spatial_att(x)
    m.combine = 'product'
    numerics.assert_close(m(x), x * (1 + torch.sigmoid(c * s)))


# ----------------------------------------------------------------------------- init
def test_scratch_init_follows_official_code():
    m = CBAM(64)
    assert torch.all(m.spatial_gate.bn.weight == 0) and torch.all(m.spatial_gate.bn.bias == 0)
    for fc in (m.channel_gate.fc1, m.channel_gate.fc2):
        assert torch.all(fc.bias == 0) and fc.weight.std() > 0
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k)) = sqrt(2 / 49)
    torch.manual_seed(numerics.seed())
    stds = [CBAM(64).spatial_gate.conv.weight.std().item() for _ in range(20)]
    assert abs(sum(stds) / len(stds) - (2 / 49) ** 0.5) < 0.03
    x = torch.randn(2, 64, 5, 5)
    m.eval()
    assert torch.allclose(torch.sigmoid(m.spatial_gate(x)), torch.full((2, 1, 5, 5), 0.5))
    b = BAM(64)
    for mod in b.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            assert torch.all(mod.bias == 0)
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)


IDENTITY_MODULES = {
    'cbam': lambda: CBAM(64, init_mode='identity'),
    'cbam_official': lambda: CBAM(64, init_mode='identity', spatial_pool='max_avg'),
    'cbam_parallel': lambda: CBAM(64, init_mode='identity', arrangement='parallel'),
    'cbam_channel_only': lambda: CBAM(64, init_mode='identity', channel_pool='avg', spatial_pool=None),
    'se': lambda: SE(64, init_mode='identity'),
    'bam': lambda: BAM(64, init_mode='identity'),
    'bam_product': lambda: BAM(64, init_mode='identity', combine='product'),
    'bam_max': lambda: BAM(64, init_mode='identity', combine='max'),
    'bam_sigmoid_sum': lambda: BAM(64, init_mode='identity', combine='sigmoid_sum'),
    'bam_no_residual': lambda: BAM(64, init_mode='identity', residual=False),
}


@pytest.mark.parametrize('kind', list(IDENTITY_MODULES))
@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('backend', ['auto', 'torch'])
def test_identity_init_is_the_identity_at_step_0_and_learns_from_it(kind, train, backend):
    """init_mode='identity': the output equals the input (to float32 rounding) on every backend,
    in training and eval, and the gates' last layers get a gradient in the first step."""
    from cbam_det import kernels

    m = IDENTITY_MODULES[kind]().train(train)
    assert m.gate_scale is not None and 'gate_scale' in m.state_dict()
    x = (torch.randn(4, 64, 6, 9) * 3).requires_grad_()
    with kernels.use_backend(backend):
        y = m(x)
    numerics.assert_close(y, x)
    if not train:
        return
    w = torch.randn(y.shape, generator=numerics.generator(1))
    (y * w).sum().backward()
    last = ('channel_gate.fc2.weight', 'spatial_gate.bn.weight', 'spatial_gate.bn.bias', 'channel_att.fc2.weight')
    if kind != 'bam_product':  # σ(c·s) starts at c = 0, s = 1: the spatial branch moves once c has
        last += ('spatial_att.final.weight',)
    last = [p for n, p in m.named_parameters() if n in last]
    assert last and all(float(p.grad.abs().max()) > 0 for p in last)


def test_identity_mode_is_kept_in_the_checkpoint():
    """The normalised gate is part of the function: its buffer is in the state dict, so loading
    an identity-trained checkpoint into a module with the papers' gates (or the reverse) is named
    as an unexpected (missing) key, never silently run with the other gate."""
    paper, identity = CBAM(32), CBAM(32, init_mode='identity')
    with pytest.raises(RuntimeError, match='Unexpected key.*gate_scale'):
        paper.load_state_dict(identity.state_dict())
    with pytest.raises(RuntimeError, match='Missing key.*gate_scale'):
        identity.load_state_dict(paper.state_dict())
    with pytest.raises(ValueError, match="identity_logit is no longer an argument.*init_mode='scratch'"):
        CBAM(32, init_mode='identity', identity_logit=5.0)


def test_init_weights_restores_scheme_after_backbone_constant_init():
    """mmdet's ResNet init sets every BN gamma to 1; the module's init_weights runs after it."""
    from mmdet.registry import MODELS

    backbone = MODELS.build(
        dict(
            type='ResNet',
            depth=50,
            base_channels=16,
            plugins=[dict(cfg=dict(type='CBAM'), stages=(True,) * 4, position='after_conv3')],
        )
    )
    backbone.init_weights()
    assert all(torch.all(b.cbam.spatial_gate.bn.weight == 0) for b in backbone.layer1)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize('make', [lambda: CBAM(32), lambda: SE(32), lambda: BAM(32)], ids=['CBAM', 'SE', 'BAM'])
def test_bf16_autocast_and_fp16_overflow(make):
    m = randomise(make()).eval()
    x = torch.randn(2, 32, 8, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16
    numerics.assert_close(y.float(), m(x.bfloat16().float()), dtype=torch.bfloat16, terms=64)
    # 64*64 values of 30000 sum to ~1.2e8: overflows fp16 (max 65504) unless accumulated in fp32
    big = torch.full((1, 32, 64, 64), 30000.0).half()
    assert torch.isfinite(m(big)).all()


@pytest.mark.parametrize('make', [lambda: CBAM(32), lambda: SE(32), lambda: BAM(32)], ids=['CBAM', 'SE', 'BAM'])
@pytest.mark.parametrize('train', [False, True])
def test_channels_last_matches(make, train):
    m = randomise(make()).train(train)
    x = torch.randn(2, 32, 9, 7)
    numerics.assert_close(m(x.to(memory_format=torch.channels_last)), m(x))


@pytest.mark.parametrize('shape', [(1, 32, 8, 6), (1, 32, 1, 1), (2, 32, 1, 1)], ids=str)
def test_single_value_batchnorm(shape):
    """Batch 1 in training (BAM's BatchNorm1d sees one value; the official code raises):
    normalised with the running statistics, which stay unchanged."""
    for m in (randomise(BAM(32)), randomise(CBAM(32))):
        m.train()
        before = {k: v.clone() for k, v in m.state_dict().items() if 'running' in k}
        y = m(torch.randn(shape))
        assert torch.isfinite(y).all() and y.shape == shape
        if isinstance(m, BAM):  # the channel branch BN1d sees one value per channel at batch 1
            changed = not torch.equal(before['channel_att.bn.running_mean'], m.channel_att.bn.running_mean)
            assert changed == (shape[0] > 1)
        if shape[0] * shape[2] * shape[3] == 1:  # every BN2d sees one value: nothing updated
            for k, v in before.items():
                assert torch.equal(v, m.state_dict()[k]), k


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    'make,match',
    [
        (lambda: CBAM(8, 16), r'CBAM: reduction=16 leaves 0 hidden channels.*1 <= reduction <= 8'),
        (lambda: SE(8, 16), r'SE: reduction=16 leaves 0 hidden channels'),
        (lambda: BAM(8, 16), r'BAM: reduction=16 leaves 0 hidden channels'),
        (lambda: CBAM(32, reduction=0), r'reduction must be a positive int'),
        (lambda: CBAM(0), r'in_channels must be a positive int'),
        (lambda: CBAM(32, spatial_kernel=6), r'spatial_kernel must be a positive odd int'),
        (lambda: CBAM(32, channel_pool='mean'), r"unknown channel_pool='mean'; allowed: 'avg_max', 'avg', 'max'"),
        (lambda: CBAM(32, spatial_pool='min'), r"unknown spatial_pool='min'; allowed: 'avg_max', 'max_avg', 'conv1x1'"),
        (lambda: CBAM(32, arrangement='both'), r"unknown arrangement='both'; allowed: 'channel_first'"),
        (lambda: CBAM(32, channel_pool=None, spatial_pool=None), r'cannot both be None'),
        (lambda: CBAM(32, arrangement='parallel', spatial_pool=None), r"parallel' needs both"),
        (lambda: BAM(32, combine='mul'), r"unknown combine='mul'; allowed: 'sum', 'max', 'product', 'sigmoid_sum'"),
        (lambda: BAM(32, dilation=0), r'dilation must be a positive int'),
        (lambda: CBAM(32, init_mode='zeros'), r"unknown init_mode='zeros'; allowed: 'scratch', 'identity'"),
        (lambda: build_attention('eca', 32), r"unknown attention='eca'; allowed: None, 'bam', 'cbam', 'se' or a dict"),
    ],
)
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_min_hidden_channels():
    assert CBAM(8, 16, min_hidden_channels=2).channel_gate.fc1.out_features == 2
    assert BAM(64, 16, min_hidden_channels=8).channel_att.fc1.out_features == 8
    assert SE(64, 16, min_hidden_channels=2).channel_gate.fc1.out_features == 4


@pytest.mark.parametrize('make', [lambda: CBAM(32), lambda: SE(32), lambda: BAM(32)], ids=['CBAM', 'SE', 'BAM'])
def test_channel_mismatch_at_forward(make):
    with pytest.raises(ValueError, match=r'expected input of shape \(N, in_channels=32, H, W\), got \(2, 16, 4, 4\)'):
        make()(torch.randn(2, 16, 4, 4))


def test_factory_builds_by_key_and_dict():
    assert isinstance(build_attention('cbam', 64), CBAM)
    assert isinstance(build_attention('SE', 64), SE)
    m = build_attention(dict(type='BAM', combine='product'), 64)
    assert isinstance(m, BAM) and m.combine == 'product' and m.in_channels == 64
    assert build_attention(None, 64) is None


# ----------------------------------------------------------------------------- the paper's CBAM
@pytest.mark.parametrize('shape', [(1, 64, 5, 11), (3, 48, 17, 4), (1, 16, 1, 1)], ids=str)
@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_default_cbam_odd_shapes_match_reference(shape, train):
    m = randomise(CBAM(shape[1])).train(train)
    x = torch.randn(shape)
    numerics.assert_close(m(x), ref_cbam(m, x, 'avg_max', 'avg_max', 'channel_first'))


def test_cbam_changes_input_and_is_deterministic():
    m = randomise(CBAM(32)).eval()
    x = torch.randn(2, 32, 6, 7)
    y = m(x)
    assert y.shape == x.shape
    assert not torch.allclose(y, x)
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)


def test_hidden_width_rounding_is_floor():
    # C not a multiple of r: documented rounding is floor(C / r), as in the official code
    m = CBAM(40, reduction=16)
    assert m.channel_gate.fc1.weight.shape == (2, 40)
    assert m.channel_gate.fc2.weight.shape == (40, 2)


def test_cbam_gradients_reach_every_parameter():
    m = randomise(CBAM(32)).train()
    x = torch.randn(2, 32, 9, 6, requires_grad=True)
    (m(x) * torch.randn(2, 32, 9, 6)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_official_parameter_layout():
    m = CBAM(256)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        'channel_gate.fc1.weight': (16, 256),
        'channel_gate.fc1.bias': (16,),
        'channel_gate.fc2.weight': (256, 16),
        'channel_gate.fc2.bias': (256,),
        'spatial_gate.conv.weight': (1, 2, 7, 7),
        'spatial_gate.bn.weight': (1,),
        'spatial_gate.bn.bias': (1,),
        'spatial_gate.bn.running_mean': (1,),
        'spatial_gate.bn.running_var': (1,),
        'spatial_gate.bn.num_batches_tracked': (),
    }
    assert m.spatial_gate.conv.bias is None
    assert m.spatial_gate.bn.momentum == 0.01 and m.spatial_gate.bn.eps == 1e-5


# ----------------------------------------------------------------------------- bad input, named
KINDS = [lambda: CBAM(32), lambda: SE(32), lambda: BAM(32)]
KIND_IDS = ['CBAM', 'SE', 'BAM']


@pytest.mark.parametrize('make', KINDS, ids=KIND_IDS)
@pytest.mark.parametrize('dtype', [torch.int64, torch.uint8, torch.bool], ids=str)
def test_non_floating_input_is_refused(make, dtype):
    """An integer input would truncate the gates to the integer dtype: refused, naming the allowed dtypes."""
    x = torch.ones(2, 32, 4, 4, dtype=dtype)
    with pytest.raises(TypeError, match=rf'input dtype must be float16, bfloat16, float32 or float64, got {dtype}'):
        make()(x)


@pytest.mark.parametrize('make', KINDS, ids=KIND_IDS)
@pytest.mark.parametrize('shape', [(32, 4, 4), (2, 32, 4, 4, 1), (2, 32)], ids=str)
def test_wrong_rank_is_named(make, shape):
    with pytest.raises(ValueError, match=r'expected input of shape \(N, in_channels=32, H, W\), got'):
        make()(torch.randn(shape))


@pytest.mark.parametrize('make', KINDS, ids=KIND_IDS)
@pytest.mark.parametrize('shape', [(2, 32, 0, 5), (2, 32, 5, 0), (0, 32, 4, 4)], ids=str)
def test_empty_input_is_named(make, shape):
    with pytest.raises(ValueError, match=r'is empty; N, H and W must be >= 1'):
        make()(torch.randn(shape))


@pytest.mark.parametrize('make', KINDS, ids=KIND_IDS)
@pytest.mark.parametrize('bad', [float('nan'), float('inf')], ids=['nan', 'inf'])
def test_non_finite_training_input_check_is_opt_in(make, bad):
    """Off by default (it costs a pass); on, a NaN/Inf in a training step is refused before any
    BatchNorm statistic moves, naming the module; inference is not checked."""
    from cbam_det import set_check_finite

    m = make().train()
    x = torch.randn(2, 32, 4, 4)
    x[1, 3, 2, 1] = bad
    m(x)  # off: goes through (and poisons the statistics, which is what the check is for)
    m = make().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    previous = set_check_finite(True)
    try:
        with pytest.raises(
            FloatingPointError, match=r'\(in_channels=32\): the input holds (NaN|Inf) in a training step'
        ):
            m(x)
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[k]), k
        m.eval()(x)
    finally:
        set_check_finite(previous)
