# Modern default: Faster R-CNN R-101-FPN 1x with BAM after stages 1, 2, 3 (the FPN sees the
# refined stage outputs), torchvision ImageNet weights, BAM initialised at identity.
_base_ = './faster-rcnn_r101_fpn_1x_coco.py'
model = dict(backbone=dict(bam=dict(type='BAM', init_mode='identity')))
