# Modern default, baseline row: mmdet's Faster R-CNN R-101-FPN 1x (AttnResNet without attention
# is mmdet's ResNet: same layers, same names, same torchvision weights).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)
model = dict(backbone=dict(type='AttnResNet'))

custom_hooks = [dict(type='ExactResumeHook')]  # random states in checkpoints: --resume continues bit-identically
