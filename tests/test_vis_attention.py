"""tools/analysis/vis_attention.py: the attention panels are the gates the modules applied, the
CAM target is the chosen detection, files are written, bad input is refused. Models are built
with random init and saved as checkpoints; images come from the demo data generator."""

import os.path as osp
import sys

import pytest
import torch
from PIL import Image

from cbam_det import CBAM, SE

from .helpers import DEMO_CONFIG, REPO

sys.path.insert(0, osp.join(REPO, 'tools', 'analysis'))
import vis_attention as V  # noqa: E402

from . import numerics

BASELINE_CONFIG = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r50w16_fpn_demo.py')
SMALL_PIPELINE = """
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""


def small_config(tmp_path, base: str) -> str:
    """``base`` with a 128-pixel test pipeline."""
    path = tmp_path / ('small_' + osp.basename(base))
    path.write_text(f'_base_ = {base!r}\n{SMALL_PIPELINE}\n')
    return str(path)


def save_random_checkpoint(config: str, path) -> str:
    """A checkpoint of ``config``'s model at random init (weights_only-loadable)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config, ConfigDict

    from cbam_det.utils import no_pretrained

    torch.manual_seed(numerics.seed())
    model = MODELS.build(ConfigDict(no_pretrained(Config.fromfile(config).model.to_dict())))
    with torch.no_grad():  # away from the official init (spatial BN γ = 0 makes M_s constant)
        for m in model.modules():
            if isinstance(m, CBAM):
                m.spatial_gate.bn.weight.fill_(0.8)
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': {'classes': ('a', 'b', 'c')}}}, path)
    return str(path)


@pytest.fixture(scope='module')
def demo_images(tiny_demo_data):
    return [osp.join(tiny_demo_data, 'VOCdevkit', 'VOC2007', 'JPEGImages', f'val_0000{i}.jpg') for i in range(2)]


@pytest.fixture(scope='module')
def demo_models(tmp_path_factory):
    d = tmp_path_factory.mktemp('vis_ckpt')
    return {
        'cbam': (DEMO_CONFIG, save_random_checkpoint(DEMO_CONFIG, d / 'cbam.pth')),
        'baseline': (BASELINE_CONFIG, save_random_checkpoint(BASELINE_CONFIG, d / 'baseline.pth')),
    }


def test_panels_are_the_gates_the_modules_applied(demo_models, demo_images):
    """Recorded gates (the CPU kernels ran the modules) equal a plain recomputation from each
    module's input, captured by a forward pre-hook in the same forward."""
    model = V.load_detector(*demo_models['cbam'])
    inputs_seen = {}
    mods = {n: m for n, m in model.named_modules() if isinstance(m, (CBAM, SE))}
    hooks = [
        m.register_forward_pre_hook(lambda m, a, n=n: inputs_seen.__setitem__(n, a[0].clone())) for n, m in mods.items()
    ]
    r = V.analyse(model, V.read_image(demo_images[0]), ['backbone.layer4'], 'gradcam', 0.0)
    for h in hooks:
        h.remove()
    assert [p['stage'] for p in r['panels']] == [f'backbone.layer{i}' for i in range(1, 5)]
    for p in r['panels']:
        m, x = mods[p['module']], inputs_seen[p['module']]
        with torch.no_grad():
            g_c = torch.sigmoid(m.channel_gate(x))
            g_s = torch.sigmoid(m.spatial_gate(x * g_c))[0, 0]
        numerics.assert_close(p['heat'], g_s)
        assert p['module'].endswith(f'.{len(getattr(model.backbone, p["stage"].split(".")[-1])) - 1}.cbam')
        top = g_c[0, :, 0, 0].topk(3)
        assert p['top'] == ' '.join(f'c{i}:{v:.2f}' for v, i in zip(top.values.tolist(), top.indices.tolist()))
        assert float(g_s.std()) > 0  # a real map, not the constant of the official init


def test_cam_target_is_the_chosen_detection(demo_models, demo_images):
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model = V.load_detector(*demo_models['cbam'])
    img = V.read_image(demo_images[0])
    r = V.analyse(model, img, ['backbone.layer4'], 'gradcam', 0.0)
    chosen = r['chosen']
    assert chosen['score'] == pytest.approx(float(r['result'].pred_instances.scores.max()))
    inputs, samples = V.preprocess(model, img)
    with torch.no_grad():
        out = V.DetectionOutputs(model, samples)(inputs)[0]
    k = chosen['index']
    target = FasterRCNNBoxScoreTarget(labels=[chosen['label']], bounding_boxes=[out['boxes'][k].numpy()])
    # the library's box-score target on this image: IoU with the chosen box (1) + its score
    assert float(target(out)) == pytest.approx(1.0 + chosen['score'], abs=1e-5)
    assert int(out['labels'][k]) == chosen['label']
    cam = r['cam']
    assert cam.shape == tuple(inputs.shape[-2:]) and cam.min() >= 0 and cam.max() <= 1


def test_side_by_side_files(demo_models, demo_images, tmp_path):
    args = V.parse_args(
        [*demo_models['cbam'], *demo_images, '--out-dir', str(tmp_path), '--baseline', *demo_models['baseline']]
        + ['--score-thr', '0']
    )
    written = V.run(args)
    assert sorted(osp.basename(p) for p in written) == ['val_00000.png', 'val_00001.png']
    single = V.run(V.parse_args([*demo_models['cbam'], demo_images[0], '--out-dir', str(tmp_path / 'one')]))
    for path in written:
        size = osp.getsize(path)
        assert 10_000 < size < 1_000_000, size  # a picture, not a blank or a dump (PNG size follows the seed)
        w, h = Image.open(path).size
        assert w > 4 * h / 2  # one row per model, 2 + 4 stage panels per row
    assert Image.open(written[0]).size[1] > 1.8 * Image.open(single[0]).size[1]  # two rows against one


@pytest.mark.parametrize(
    'config',
    [
        'configs/faster_rcnn/faster-rcnn_r50-cbam_c4_1x_coco.py',
        'configs/demo/stairnet_r18w16-cbam_demo_voc.py',
        'configs/yolox/yolox_s-cbam_8xb8-300e_coco.py',
    ],
    ids=['faster-rcnn-c4', 'ssd-stairnet', 'yolox-attention-inserted'],
)
def test_other_detectors(config, demo_images, tmp_path):
    cfg = small_config(tmp_path, osp.join(REPO, config)) if 'demo' not in config else osp.join(REPO, config)
    ckpt = save_random_checkpoint(cfg, tmp_path / 'm.pth')
    (path,) = V.run(V.parse_args([cfg, ckpt, demo_images[0], '--out-dir', str(tmp_path), '--score-thr', '0']))
    assert osp.getsize(path) > 10_000


def test_bad_input_is_refused_with_a_clear_error(demo_models, demo_images, tmp_path):
    cbam_cfg, cbam_ckpt = demo_models['cbam']
    base_cfg, base_ckpt = demo_models['baseline']
    out = ['--out-dir', str(tmp_path)]
    with pytest.raises(FileNotFoundError, match='image .*missing.jpg'):
        V.run(V.parse_args([cbam_cfg, cbam_ckpt, str(tmp_path / 'missing.jpg'), *out]))
    with pytest.raises(ValueError, match='does not match config'):
        V.run(V.parse_args([cbam_cfg, base_ckpt, demo_images[0], *out]))  # no attention weights in it
    with pytest.raises(ValueError, match='without cbam_det attention modules'):
        V.run(V.parse_args([base_cfg, base_ckpt, demo_images[0], *out]))
    with pytest.raises(ValueError, match=r"--method 'gradcam\+\+\+'; allowed"):
        V.run(V.parse_args([cbam_cfg, cbam_ckpt, demo_images[0], *out, '--method', 'gradcam+++']))
    with pytest.raises(ValueError, match="--target-layers 'backbone.layer9' is not a module"):
        V.run(V.parse_args([cbam_cfg, cbam_ckpt, demo_images[0], *out, '--target-layers', 'backbone.layer9']))
    assert not list(tmp_path.glob('*.png'))  # nothing written for refused input


def test_baseline_row_explains_the_same_detection(demo_models, demo_images):
    """Fig. 5: both rows' maps are for the attention model's top detection (same box, class)."""
    cbam, base = V.load_detector(*demo_models['cbam']), V.load_detector(*demo_models['baseline'])
    img = V.read_image(demo_images[0])
    first = V.analyse(cbam, img, ['backbone.layer4'], 'gradcam', 0.0)
    second = V.analyse(base, img, ['backbone.layer4'], 'gradcam', 0.0, target=first['chosen'])
    assert second['chosen']['box'] == first['chosen']['box']
    assert second['chosen']['label'] == first['chosen']['label']
    k = second['chosen']['index']
    if k is None:  # the baseline does not detect it: no map, said in the title
        assert second['cam'] is None
    else:
        inst = second['result'].pred_instances
        assert int(inst.labels[k]) == first['chosen']['label']
        assert second['chosen']['score'] == pytest.approx(float(inst.scores[k]))
