# CBAM paper Table 7 / BAM paper Table 7, first row: SSD300, VGG16, VOC 07+12 trainval -> VOC 2007 test
# (mAP@.5, VOC2007 11-point metric; set val_evaluator.eval_mode='area' for the area metric).
# mmdet's own setting; AttnSSDHead without attention is mmdet's SSDHead.
_base_ = 'mmdet::pascal_voc/ssd300_voc0712.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)
model = dict(bbox_head=dict(type='AttnSSDHead'))
val_evaluator = dict(type='VOCMetric', metric='mAP', eval_mode='11points')
test_evaluator = val_evaluator

# the base's hooks, plus random states in checkpoints (--resume continues bit-identically)
custom_hooks = [
    dict(type='NumClassCheckHook'),
    dict(type='CheckInvalidLossHook', interval=50, priority='VERY_LOW'),
    dict(type='ExactResumeHook'),
]
