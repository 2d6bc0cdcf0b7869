# CPU demo: Faster R-CNN + FPN with CBAM in every bottleneck of a slim ResNet-50
# (base_channels=16: stage outputs 64/128/256/512), trained from random init on the
# synthetic shapes data of tools/misc/make_demo_data.py (160x160 images, 3 classes).
# Sized for 2 CPU cores: 800 iterations of batch 8 (times in README), COCO bbox mAP@0.5 >= 0.5 on demo val.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

data_root = 'data/demo/'
classes = ('circle', 'square', 'triangle')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 128, 255), (0, 200, 0)])
img_scale = (160, 160)
width = 64  # FPN / RPN / RoI feature width

model = dict(
    backbone=dict(
        base_channels=16,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None,  # random init: nothing is downloaded
        plugins=[dict(cfg=dict(type='CBAM', inplace=True), stages=(True, True, True, True), position='after_conv3')],
    ),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=width),
    rpn_head=dict(
        in_channels=width,
        feat_channels=width,
        # objects are 16-72 px: anchors of 16 px at stride 4 up to 256 px at stride 64
        anchor_generator=dict(scales=[4]),
    ),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=len(classes)),
    ),
    # a 2-core CPU step is dominated by mmcv's single-threaded RoIAlign backward (~ RoIs x channels) and
    # NMS (~ boxes^2): 64 sampled RoIs per image and 500 boxes into the RPN's NMS (0.85 -> 0.53 s a step)
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=50)),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# data loads in the training process: on 2 cores a worker would take a core from the two torch
# threads (tools/train.py: torch threads x processes <= cores, workers included); decoding and
# resizing eight 160x160 images is a few ms of a step
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='VOCdevkit/VOC2007/JPEGImages/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='VOCdevkit/VOC2007/JPEGImages/'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json', metric='bbox')
test_evaluator = val_evaluator

# iteration-based schedule: warm-up, then cosine decay
max_iters = 800
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.04, momentum=0.9, weight_decay=1e-4), clip_grad=dict(max_norm=10, norm_type=2)
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, T_max=max_iters - 100, eta_min=4e-4),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
)
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=8)
env_cfg = dict(cudnn_benchmark=False)

custom_hooks = [dict(type='ExactResumeHook')]  # random states in checkpoints: --resume continues bit-identically
