"""tools/train.py then tools/test.py end to end on a tiny slice of the demo data (CPU)."""

import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest

from tests.helpers import DEMO_CONFIG, REPO, demo_data_options, dist_train

TINY = [
    'train_cfg.max_iters=2',
    'train_cfg.val_interval=2',
    'param_scheduler=[]',
    'train_dataloader.batch_size=2',
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'val_dataloader.num_workers=0',
    'val_dataloader.persistent_workers=False',
    'test_dataloader.num_workers=0',
    'test_dataloader.persistent_workers=False',
    'default_hooks.logger.interval=1',
    'default_hooks.checkpoint.interval=2',
]


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _metrics(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith('cbam_det metrics: ')]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len('cbam_det metrics: ') :])


def test_train_then_test_produce_coco_metric(tiny_demo_data, tmp_path):
    work = str(tmp_path / 'work')
    opts = TINY + demo_data_options(tiny_demo_data)
    out = _run([sys.executable, 'tools/train.py', DEMO_CONFIG, '--work-dir', work, '--cfg-options', *opts])
    assert 'Iter(train) [2/2]' in out
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.isfile(ckpt)

    pkl = str(tmp_path / 'preds.pkl')
    out = _run(
        [sys.executable, 'tools/test.py', DEMO_CONFIG, ckpt, '--work-dir', work, '--out', pkl, '--cfg-options', *opts]
    )
    m = _metrics(out)
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert key in m and (0.0 <= m[key] <= 1.0 or m[key] == -1.0)
    with open(pkl, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 4 and 'pred_instances' in preds[0]

    # --resume continues from the checkpoint in work_dir
    out = _run(
        [
            sys.executable,
            'tools/train.py',
            DEMO_CONFIG,
            '--work-dir',
            work,
            '--resume',
            '--cfg-options',
            *opts[1:],
            'train_cfg.max_iters=3',
        ]
    )
    assert 'resumed' in out.lower() and 'Iter(train) [3/3]' in out

    # the CBAM checkpoint into the same detector without attention: refused, naming keys and the config line
    proc = subprocess.run(
        [
            sys.executable,
            'tools/test.py',
            DEMO_CONFIG,
            osp.join(work, 'iter_3.pth'),
            '--work-dir',
            work,
            '--cfg-options',
            *opts,
            'model.backbone.plugins=None',
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert '160 attention keys of the checkpoint have no module' in proc.stderr, proc.stderr[-3000:]  # 16 CBAM x 10
    assert "plugins=[dict(cfg=dict(type='CBAM')" in proc.stderr


def test_bad_out_extension_is_refused(tiny_demo_data, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [
            sys.executable,
            'tools/test.py',
            DEMO_CONFIG,
            'missing.pth',
            '--out',
            'x.json',
            '--cfg-options',
            *TINY,
            *demo_data_options(tiny_demo_data),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and '--out must be a .pkl or .pickle file' in proc.stderr


@pytest.mark.slow
def test_dist_train_and_test_two_cpu_processes(tiny_demo_data, tmp_path):
    """tools/dist_train.sh / dist_test.sh: 2 processes via torchrun, gloo on CPU."""
    work = str(tmp_path / 'dist')
    env = dict(os.environ, PYTHON=sys.executable, PORT='29533')
    opts = TINY + demo_data_options(tiny_demo_data)
    out = dist_train(DEMO_CONFIG, work, 29533, '--cfg-options', *opts)
    # the runner's environment banner (mmengine calls the world size "GPU number")
    assert 'Distributed training: True' in out and 'GPU number: 2' in out, out[-3000:]
    assert "dist_cfg: {'backend': 'gloo'}" in out and "type='CPUDistributedDataParallel'" in out
    assert 'Iter(train) [2/2]' in out and osp.isfile(osp.join(work, 'iter_2.pth'))
    proc = subprocess.run(
        [
            'bash',
            'tools/dist_test.sh',
            DEMO_CONFIG,
            osp.join(work, 'iter_2.pth'),
            '2',
            '--work-dir',
            work,
            '--cfg-options',
            *opts,
        ],
        cwd=REPO,
        env=dict(env, PORT='29534'),
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert 'coco/bbox_mAP' in _metrics(out)


def coco_config_on_demo_data(root: str) -> list:
    """--cfg-options that run a paper COCO config on the demo data, small, few iterations, no download."""
    root = root.rstrip('/') + '/'
    opts = [
        'model.backbone.init_cfg=None',
        'model.roi_head.shared_head.init_cfg=None',
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1',
        'param_scheduler=[]',
        'default_hooks.logger.interval=1',
        'model.train_cfg.rcnn.sampler.num=32',
        'model.test_cfg.rpn.max_per_img=32',
        'model.roi_head.bbox_head.num_classes=3',  # the demo data's classes
        'model.test_cfg.rcnn.score_thr=0.0',
    ]  # 4 iterations from random init: keep every detection
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        split = 'train' if loader == 'train_dataloader' else 'val'
        opts += [
            f'{loader}.batch_size=2',
            f'{loader}.num_workers=0',
            f'{loader}.persistent_workers=False',
            f'{loader}.dataset.data_root={root}',
            f'{loader}.dataset.ann_file=annotations/instances_{split}.json',
            f'{loader}.dataset.data_prefix.img=VOCdevkit/VOC2007/JPEGImages/',
            f"{loader}.dataset.metainfo.classes=('circle','square','triangle')",
            # Resize is step 2 of the train pipeline and step 1 of the test pipeline
            f'{loader}.dataset.pipeline.{2 if split == "train" else 1}.scale=(192,128)',
        ]
    for ev in ('val_evaluator', 'test_evaluator'):
        opts.append(f'{ev}.ann_file={root}annotations/instances_val.json')
    return opts


@pytest.mark.slow
def test_paper_coco_config_runs_through_the_tools_on_demo_data(tiny_demo_data, tmp_path):
    config = osp.join(REPO, 'configs/faster_rcnn/faster-rcnn_r50-cbam_c4_1x_coco.py')
    work = str(tmp_path / 'c4')
    opts = coco_config_on_demo_data(tiny_demo_data)
    out = _run([sys.executable, 'tools/train.py', config, '--work-dir', work, '--cfg-options', *opts], timeout=1200)
    assert 'Epoch(train) [1][4/4]' in out
    out = _run(
        [
            sys.executable,
            'tools/test.py',
            config,
            osp.join(work, 'epoch_1.pth'),
            '--work-dir',
            work,
            '--cfg-options',
            *opts,
        ],
        timeout=600,
    )
    assert 'coco/bbox_mAP' in _metrics(out)


def test_resume_finds_the_newest_complete_checkpoint(tmp_path):
    """--resume: last_checkpoint's file when it exists; else (missing, empty after a kill, or
    naming a removed file) the highest iter_N/epoch_N.pth, never a temporary file."""
    from cbam_det.engine import latest_checkpoint

    work = str(tmp_path)
    assert latest_checkpoint(work) is None
    for name in ('iter_4.pth', 'iter_12.pth', 'iter_16.pth.tmp-123'):
        (tmp_path / name).write_bytes(b'x')
    assert latest_checkpoint(work) == osp.join(work, 'iter_12.pth')
    (tmp_path / 'last_checkpoint').write_text('')
    assert latest_checkpoint(work) == osp.join(work, 'iter_12.pth')
    (tmp_path / 'last_checkpoint').write_text(osp.join(work, 'iter_4.pth'))
    assert latest_checkpoint(work) == osp.join(work, 'iter_4.pth')
    (tmp_path / 'last_checkpoint').write_text(osp.join(work, 'iter_8.pth'))  # removed since
    assert latest_checkpoint(work) == osp.join(work, 'iter_12.pth')
