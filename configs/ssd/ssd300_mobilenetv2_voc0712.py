# MobileNet rows of Table 7. The paper uses MobileNet v1 (SSD: 5.81M params); mmdet offers
# MobileNetV2 (inverted residuals, linear bottlenecks, ReLU6) with the SSDLite neck/head of
# mmdet's ssdlite config (depthwise separable predictors), here on VOC 07+12 at 300x300,
# from mmdet's ImageNet MobileNetV2.
_base_ = './ssd300_vgg16_voc0712.py'
norm_cfg = dict(type='BN', eps=0.001, momentum=0.03)
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(
        _delete_=True,
        type='MobileNetV2',
        out_indices=(4, 7),
        norm_cfg=norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://mmdet/mobilenet_v2'),
    ),
    neck=dict(
        _delete_=True,
        type='SSDNeck',
        in_channels=(96, 1280),
        out_channels=(96, 1280, 512, 256, 256, 128),
        level_strides=(2, 2, 2, 2),
        level_paddings=(1, 1, 1, 1),
        l2_norm_scale=None,
        use_depthwise=True,
        norm_cfg=norm_cfg,
        act_cfg=dict(type='ReLU6'),
    ),
    bbox_head=dict(
        in_channels=(96, 1280, 512, 256, 256, 128),
        use_depthwise=True,
        norm_cfg=norm_cfg,
        act_cfg=dict(type='ReLU6'),
        anchor_generator=dict(
            _delete_=True,
            type='SSDAnchorGenerator',
            scale_major=False,
            input_size=300,
            strides=[16, 32, 64, 100, 150, 300],
            basesize_ratio_range=(0.2, 0.95),
            ratios=[[2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]],
        ),
    ),
)
