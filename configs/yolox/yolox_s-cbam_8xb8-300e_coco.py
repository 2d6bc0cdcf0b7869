# YOLOX-S with CBAM after every CSPDarknet stage and on every PAFPN output (per level).
# mmdet's CSPDarknet and YOLOXPAFPN have no plugin hook: AttentionInserted attaches the modules
# by module path, finds their channels itself and keeps every original state-dict name.
_base_ = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='AttentionInserted',
    detector={{_base_.model}},
    attention=dict(type='CBAM'),
    targets=['backbone.stage[1-4]', 'neck.out_convs.*'],
)
# the base's hooks, plus random states in checkpoints (--resume continues bit-identically)
custom_hooks = [
    dict(type='YOLOXModeSwitchHook', num_last_epochs=15, priority=48),
    dict(type='SyncNormHook', priority=48),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0001, update_buffers=True, priority=49),
    dict(type='ExactResumeHook'),
]
