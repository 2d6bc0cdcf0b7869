# SSDLite (MobileNetV2) with CBAM after each inverted-residual stage the detector reads from
# (layer4: stride 16, layer7: stride 32) and after the other stages, with their own channels.
_base_ = './ssdlite_mobilenetv2_8xb24-600e_coco.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='AttentionInserted',
    detector={{_base_.model}},
    attention=dict(type='CBAM'),
    targets=['backbone.layer[1-7]'],
)
