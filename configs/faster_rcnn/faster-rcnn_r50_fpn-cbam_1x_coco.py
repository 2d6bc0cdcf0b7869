# Faster R-CNN R-50-FPN with CBAM on each FPN output (fpn_convs.0-3, 256 channels, one module per
# level); the backbone is the stock ResNet-50.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='AttentionInserted',
    detector={{_base_.model}},
    attention=dict(type='CBAM'),
    targets=['neck.fpn_convs.*'],
)

custom_hooks = [dict(type='ExactResumeHook')]  # random states in checkpoints: --resume continues bit-identically
