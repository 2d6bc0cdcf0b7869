# StairNet (Woo et al., WACV 2018) on SSD300 VGG16: top-down aggregation after mmdet's SSD
# extra layers; every level is 256 channels wide after the neck (see cbam_det/models/necks/stairnet.py).
_base_ = './ssd300_vgg16_voc0712.py'
width = 256
model = dict(
    neck=[
        dict(
            type='SSDNeck',
            in_channels=(512, 1024),
            out_channels=(512, 1024, 512, 256, 256, 256),
            level_strides=(2, 2, 1, 1),
            level_paddings=(1, 1, 0, 0),
            l2_norm_scale=20,
        ),
        dict(type='StairNetNeck', in_channels=(512, 1024, 512, 256, 256, 256), out_channels=(width,) * 6),
    ],
    bbox_head=dict(in_channels=(width,) * 6),
)
