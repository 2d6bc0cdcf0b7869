# CBAM paper Table 6 / BAM paper COCO baseline: Faster R-CNN, ResNet-101 C4.
_base_ = './faster-rcnn_r50_c4_1x_coco.py'
pretrained = 'torchvision://resnet101'
model = dict(
    backbone=dict(depth=101, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    roi_head=dict(shared_head=dict(depth=101, init_cfg=dict(type='Pretrained', checkpoint=pretrained))),
)
