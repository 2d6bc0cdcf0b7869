"""The whole detector through mmdeploy to ONNX Runtime (dynamic shapes), in the environment of
``make deploy-env`` (upstream stack + mmdeploy 1.3.1, never the test environments): for SSD300
VGG16 with CBAM in its head (AttnSSDHead), Faster R-CNN R50-CBAM-FPN and YOLOX-S + CBAM
(AttentionInserted), onnxruntime gives the same detections above 0.3 as the PyTorch model on demo
images, boxes within 1 px (tools/deploy/ort_check.py); only detections that float32 rounding
places on either side of a cut-off (the score threshold, the kept-boxes cap), or that the PyTorch
model itself loses or gains under rounding-size input noise, may differ."""

import importlib.util
import json
import os.path as osp
import subprocess

import numpy as np
import pytest

from .helpers import REPO

DEPLOY_PY = osp.join(REPO, '.venv', 'deploy', 'bin', 'python')
CONFIGS = [
    'configs/ssd/ssd300_vgg16-cbam_voc0712.py',
    'configs/faster_rcnn/faster-rcnn_r50-cbam_fpn_1x_coco.py',
    'configs/yolox/yolox_s-cbam_8xb8-300e_coco.py',
]


def test_deploy_config_is_dynamic_onnxruntime():
    """The deploy config loads without mmdeploy and asks for dynamic batch, height and width."""
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(REPO, 'configs', 'deploy', 'detection_onnxruntime_dynamic.py'))
    assert cfg.backend_config.type == 'onnxruntime' and cfg.codebase_config.type == 'mmdet'
    assert cfg.onnx_config.input_shape is None
    assert dict(cfg.onnx_config.dynamic_axes.input) == {0: 'batch', 2: 'height', 3: 'width'}
    assert set(cfg.onnx_config.dynamic_axes) == {'input', *cfg.onnx_config.output_names}


@pytest.mark.slow
@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: osp.basename(c).split('_')[0])
def test_detector_converts_to_onnxruntime_and_matches_pytorch(config, tiny_demo_data, tmp_path):
    if not osp.exists(DEPLOY_PY):
        pytest.skip('no deploy environment: `make deploy-env` makes .venv/deploy (make test-slow does)')
    images = [osp.join(tiny_demo_data, 'VOCdevkit', 'VOC2007', 'JPEGImages', f'val_0000{i}.jpg') for i in (0, 1)]
    cmd = [DEPLOY_PY, 'tools/deploy/ort_check.py', config, '--images', *images, '--work-dir', str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('ORT_CHECK ')]
    assert lines, f'no ORT_CHECK line (rc {proc.returncode}):\n{proc.stderr[-4000:]}'
    report = json.loads(lines[-1][len('ORT_CHECK ') :])
    assert len(report['images']) == 4  # two images, each also as a crop of another aspect ratio
    for img in report['images']:
        assert img['unexplained'] == 0, img
        assert img['torch'] == img['matched'] + img['tied'] + img['near_a'] + img['unstable_a'], img
        assert img['ort'] == img['matched'] + img['tied'] + img['near_b'] + img['unstable_b'], img
        assert img['box_diff'] <= 1.0 and img['score_diff'] <= 1e-3, img
    assert report['images'][0]['torch'] >= 3 and sum(img['matched'] for img in report['images']) >= 10
    assert report['ok'] and proc.returncode == 0


def _ort_check():
    spec = importlib.util.spec_from_file_location('ort_check', osp.join(REPO, 'tools', 'deploy', 'ort_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dets(scores, labels=None, shift=0.0):
    scores = np.asarray(scores, dtype=np.float32)
    boxes = np.stack([np.arange(len(scores)) * 10.0 + shift] * 4, 1).astype(np.float32)
    return boxes, scores, np.zeros(len(scores), np.int64) if labels is None else np.asarray(labels)


def test_match_explains_rounding_at_the_cut_offs_and_nothing_else():
    """The comparison of tools/deploy/ort_check.py: a swap across the kept-boxes cap or across the
    score threshold within the score tolerance is a near-tie; a swap farther from a cut-off, or
    a box moved, fails."""
    match = _ort_check().match
    base = [0.9, 0.8, 0.7, 0.6]
    # cap 4: the torch side keeps a detection at 0.6, onnxruntime one at 0.6000004 (another box)
    a, b = _dets(base), _dets(base[:3] + [0.6000004])
    b[0][3] += 50.0
    m = match(a, b, 1e-3, 1.0, thr=0.3, cap=4)
    assert (m['matched'], m['near_a'], m['near_b'], m['unexplained']) == (3, 1, 1, 0)
    # the same swap with room below the cap: not at a cut-off, so it fails
    assert match(a, b, 1e-3, 1.0, thr=0.3, cap=10)['unexplained'] == 2
    # the threshold: one side has a detection at thr + 2e-4, the other dropped it
    m = match(_dets(base + [0.3002]), _dets(base), 1e-3, 1.0, thr=0.3, cap=10)
    assert (m['matched'], m['near_a'], m['unexplained']) == (4, 1, 0)
    # far from every cut-off: a missing confident detection is a failure
    all_but_best = tuple(t[1:] for t in _dets(base))
    assert match(_dets(base), all_but_best, 1e-3, 1.0, thr=0.3, cap=10)['unexplained'] == 1
    # a box that moved by more than the pixel tolerance is not a match
    moved = _dets(base, shift=2.0)
    assert match(_dets(base), moved, 1e-3, 1.0, thr=0.3, cap=10)['matched'] == 0
    # exact ties in equal numbers on both sides (NMS keeps an order-dependent subset)
    a, b = _dets([0.9, 0.5, 0.5]), _dets([0.9, 0.5, 0.5])
    b[0][1:] += 100.0
    m = match(a, b, 1e-3, 1.0, thr=0.3, cap=10)
    assert (m['matched'], m['tied'], m['unexplained']) == (1, 2, 0)


def test_match_explains_only_what_the_pytorch_model_itself_changes_under_rounding_noise():
    """A confident detection missing on the onnxruntime side is explained only when one of the
    PyTorch model's perturbed runs lacks it too; an extra one only when a perturbed run has it."""
    match = _ort_check().match
    base = [0.9, 0.8, 0.7, 0.6]
    a = _dets(base)
    b = tuple(t[[0, 1, 3]] for t in _dets(base))  # onnxruntime lost the 0.7 detection ...
    extra = _dets([0.75], shift=500.0)  # ... and found one at 0.75 that PyTorch did not
    b = tuple(np.concatenate([x, y]) for x, y in zip(b, extra))
    stable = a
    unstable = tuple(np.concatenate([x[[0, 1, 3]], y]) for x, y in zip(a, extra))  # PyTorch, noise added
    m = match(a, b, 1e-3, 1.0, thr=0.3, cap=10, perturbed=[stable, unstable])
    assert (m['matched'], m['unstable_a'], m['unstable_b'], m['unexplained']) == (3, 1, 1, 0)
    # the PyTorch model is stable under the noise: both differences fail
    m = match(a, b, 1e-3, 1.0, thr=0.3, cap=10, perturbed=[stable, stable])
    assert (m['matched'], m['unstable_a'], m['unstable_b'], m['unexplained']) == (3, 0, 0, 2)
    # no perturbed runs: nothing is explained that way
    assert match(a, b, 1e-3, 1.0, thr=0.3, cap=10)['unexplained'] == 2


def test_perturbed_input_changes_the_backbone_input_by_rounding_size_only():
    """The noise reaches the backbone only inside the block, with the relative size asked for."""
    import torch

    perturbed_input = _ort_check().perturbed_input
    seen = []
    model = torch.nn.Module()
    model.backbone = torch.nn.Identity()
    model.backbone.register_forward_hook(lambda _m, args, out: seen.append(out))
    x = torch.full((1, 3, 8, 8), 2.0)
    with perturbed_input(model, 1e-6, seed=1):
        model.backbone(x)
    model.backbone(x)
    rel = (seen[0] / x - 1).abs()
    assert 0 < rel.max() < 6e-6 and rel.std() > 5e-7
    assert torch.equal(seen[1], x)
