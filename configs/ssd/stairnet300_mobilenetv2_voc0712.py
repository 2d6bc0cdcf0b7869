# StairNet on SSD300 MobileNetV2 (closest mmdet backbone to the paper's MobileNet v1);
# 128 channels per level after the neck.
_base_ = './ssd300_mobilenetv2_voc0712.py'
width = 128
norm_cfg = dict(type='BN', eps=0.001, momentum=0.03)
model = dict(
    neck=[
        dict(
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
        dict(
            type='StairNetNeck',
            in_channels=(96, 1280, 512, 256, 256, 128),
            out_channels=(width,) * 6,
            norm_cfg=norm_cfg,
        ),
    ],
    bbox_head=dict(in_channels=(width,) * 6),
)
