"""The whole detector through mmdeploy to ONNX Runtime (dynamic shapes), in the environment of
``make deploy-env`` (upstream stack + mmdeploy 1.3.1, never the test environments): for SSD300
VGG16 with CBAM in its head (AttnSSDHead), Faster R-CNN R50-CBAM-FPN and YOLOX-S + CBAM
(AttentionInserted), onnxruntime gives the same detections above 0.3 as the PyTorch model on demo
images, boxes within 1 px (tools/deploy/ort_check.py)."""

import json
import os.path as osp
import subprocess

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
        assert img['torch'] == img['ort'] == img['matched'] + img['tied'], img
        assert img['box_diff'] <= 1.0 and img['score_diff'] <= 1e-3, img
    assert report['images'][0]['torch'] >= 3 and sum(img['matched'] for img in report['images']) >= 10
    assert report['ok'] and proc.returncode == 0
