# RTMDet-S with CBAM after every CSPNeXt stage and on every CSPNeXtPAFPN output.
_base_ = 'mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py'
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
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True, priority=49),
    dict(type='PipelineSwitchHook', switch_epoch=280, switch_pipeline={{_base_.train_pipeline_stage2}}),
    dict(type='ExactResumeHook'),
]
