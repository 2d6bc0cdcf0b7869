# CBAM paper Table 6 baseline: Faster R-CNN, ResNet-50 C4 (stage 4 in the RoI head), COCO.
# mmdet's C4 config with torchvision's ImageNet ResNet-50 (pytorch style, RGB) instead of
# detectron2's caffe one, so that the same weights start every row of the table.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50-caffe_c4-1x_coco.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

pretrained = 'torchvision://resnet50'
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(type='AttnResNet', style='pytorch', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    roi_head=dict(
        shared_head=dict(type='AttnResLayer', style='pytorch', init_cfg=dict(type='Pretrained', checkpoint=pretrained))
    ),
)

custom_hooks = [dict(type='ExactResumeHook')]  # random states in checkpoints: --resume continues bit-identically
