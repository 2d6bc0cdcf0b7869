"""Every config in configs/ builds, and runs one training and one inference step on CPU on the
demo data at a small input size, with no download (pretrained init is overridden)."""

import copy
import glob
import os.path as osp

import pytest
import torch
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate

from cbam_det.utils import no_pretrained
from tests.helpers import REPO

# configs that wrap a stock detector in AttentionInserted have their own test (test_attention_anywhere.py);
# configs/deploy/ holds mmdeploy deploy configs, not model configs (tested in test_deploy.py)
CONFIGS = sorted(
    p
    for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in p and osp.join('configs', 'deploy') not in p and "type='AttentionInserted'" not in open(p).read()
)
SMALL = (160, 128)  # (w, h) every Resize is set to
SSD300_VGG = (300, 300)  # SSD300-VGG16's last extra layers are unpadded 3x3 convs: it needs its own size


def _small_pipeline(pipeline, scale):
    out = []
    for t in copy.deepcopy(pipeline):
        if t['type'] in ('Resize', 'RandomResize'):
            t = dict(type='Resize', scale=scale, keep_ratio=True)
        elif t['type'] in ('Expand', 'MinIoURandomCrop', 'PhotoMetricDistortion', 'RandomChoiceResize'):
            continue  # random photometric/geometric augmentation: not needed for one step
        out.append(t)
    return out


def _inner_dataset(ds):
    while 'dataset' in ds or 'datasets' in ds:
        ds = ds['dataset'] if 'dataset' in ds else ds['datasets'][0]
    return ds


def input_scale(cfg) -> tuple:
    return SSD300_VGG if cfg.model.backbone.type == 'SSDVGG' else SMALL


def demo_dataset(cfg, root: str, split: str):
    """The config's own pipeline on the demo data in the layout of the config's dataset type."""
    loader = cfg.train_dataloader if split == 'train' else cfg.test_dataloader
    inner = _inner_dataset(loader.dataset)
    classes = ('circle', 'square', 'triangle')
    ds = dict(
        type=inner['type'],
        data_root=root + '/',
        metainfo=dict(classes=classes),
        pipeline=_small_pipeline(inner['pipeline'], input_scale(cfg)),
        test_mode=split != 'train',
    )
    if inner['type'] == 'CocoDataset':
        ds.update(ann_file=f'annotations/instances_{split}.json', data_prefix=dict(img='VOCdevkit/VOC2007/JPEGImages/'))
    elif inner['type'] == 'VOCDataset':
        ds.update(
            data_root=root + '/VOCdevkit/',
            ann_file=f'VOC2007/ImageSets/Main/{split}.txt',
            data_prefix=dict(sub_data_root='VOC2007/'),
        )
    else:
        raise AssertionError(f'unexpected dataset type {inner["type"]}')
    return DATASETS.build(ds)


def _few_rois(model_cfg: dict) -> dict:
    """Few proposals and sampled RoIs: a C4 RoI head runs ResNet stage 4 on every one."""
    train, test = model_cfg.get('train_cfg') or {}, model_cfg.get('test_cfg') or {}
    if 'rpn_proposal' in train:
        train['rpn_proposal'].update(nms_pre=200, max_per_img=32)
        train['rcnn']['sampler']['num'] = 16
    if 'rpn' in test:
        test['rpn'].update(nms_pre=200, max_per_img=16)
    return model_cfg


def _param(path):
    return pytest.param(path, id=osp.relpath(path, osp.join(REPO, 'configs')))


@pytest.mark.parametrize('path', [_param(p) for p in CONFIGS])
def test_config_trains_and_infers_one_step(path, tiny_demo_data):
    cfg = Config.fromfile(path)
    assert cfg.get('custom_imports', {}).get('imports') == ['cbam_det']
    model_cfg = _few_rois(no_pretrained(cfg.model.to_dict()))
    torch.manual_seed(0)
    model = MODELS.build(ConfigDict(model_cfg))
    model.init_weights()

    train_set = demo_dataset(cfg, tiny_demo_data, 'train')
    batch = pseudo_collate([train_set[0], train_set[1]])
    scale = input_scale(cfg)
    assert batch['inputs'][0].shape[-1] <= scale[0] and batch['inputs'][0].shape[-2] <= scale[1]
    model.train()
    optim = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    optim.step()

    test_set = demo_dataset(cfg, tiny_demo_data, 'val')
    model.eval()
    with torch.no_grad():
        results = model.test_step(pseudo_collate([test_set[0]]))
    inst = results[0].pred_instances
    assert inst.bboxes.shape[-1] == 4 and len(inst.bboxes) == len(inst.scores) == len(inst.labels)
