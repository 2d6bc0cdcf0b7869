# mmdet's SSDLite (MobileNetV2, trained from scratch) with AttnSSDHead and no attention: the baseline
# of ssdlite_mobilenetv2-cbam_8xb24-600e_coco.py. AttnSSDHead without attention is mmdet's SSDHead with
# its predict path working (mmdet's SSDHead cannot predict: open-mmlab/mmdetection#11780).
_base_ = 'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

model = dict(bbox_head=dict(type='AttnSSDHead'))

# the base's hooks, plus random states in checkpoints (--resume continues bit-identically)
custom_hooks = [
    dict(type='NumClassCheckHook'),
    dict(type='CheckInvalidLossHook', interval=50, priority='VERY_LOW'),
    dict(type='ExactResumeHook'),
]
