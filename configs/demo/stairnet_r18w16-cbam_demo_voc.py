# CPU demo of the VOC pipeline: a small SSD with the StairNet neck and CBAM right before every
# classifier, trained from random init on the VOC-layout demo data (160x160, 3 classes),
# evaluated with mmdet's VOC metric (VOC2007 11-point mAP@0.5).
_base_ = '../ssd/stairnet300_vgg16-cbam_voc0712.py'

data_root = 'data/demo/VOCdevkit/'
classes = ('circle', 'square', 'triangle')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 128, 255), (0, 200, 0)])
input_size = 160
width = 64
levels = (32, 64, 128, 64, 64)  # ResNet-18/16 stages 2-4 (strides 8, 16, 32) + 2 extra levels
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='AttnResNet',
        depth=18,
        base_channels=16,
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None,
    ),
    neck=[
        dict(
            type='SSDNeck',
            in_channels=levels[:3],
            out_channels=levels,
            level_strides=(2, 2),
            level_paddings=(1, 1),
            l2_norm_scale=None,
        ),
        dict(type='StairNetNeck', in_channels=levels, out_channels=(width,) * 5),
    ],
    bbox_head=dict(
        in_channels=(width,) * 5,
        num_classes=len(classes),
        anchor_generator=dict(
            _delete_=True,
            type='SSDAnchorGenerator',
            scale_major=False,
            input_size=input_size,
            strides=[8, 16, 32, 64, 160],
            min_sizes=[16, 32, 56, 88, 120],
            max_sizes=[32, 56, 88, 120, 160],
            ratios=[[2], [2], [2], [2], [2]],
        ),
    ),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(input_size, input_size), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
voc = dict(type='VOCDataset', data_root=data_root, metainfo=metainfo, data_prefix=dict(sub_data_root='VOC2007/'))
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        _delete_=True,
        **voc,
        ann_file='VOC2007/ImageSets/Main/train.txt',
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        _delete_=True, **voc, ann_file='VOC2007/ImageSets/Main/val.txt', test_mode=True, pipeline=test_pipeline
    ),
)
test_dataloader = val_dataloader

max_iters = 1000
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=1e-4),
    clip_grad=dict(max_norm=10),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, T_max=max_iters - 100, eta_min=2e-5),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
)
log_processor = dict(by_epoch=False)
custom_hooks = [dict(type='CheckInvalidLossHook', interval=50, priority='VERY_LOW'), dict(type='ExactResumeHook')]
auto_scale_lr = dict(enable=False, base_batch_size=16)
env_cfg = dict(cudnn_benchmark=False)
