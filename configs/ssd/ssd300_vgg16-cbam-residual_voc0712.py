# SSD300 with CBAM in the VGG16 backbone after each conv stage (after the stage's last ReLU,
# before its pooling: features.3/8/15/22/29), in the residual form F + CBAM(F) that CBAM code for
# plain (non-residual) backbones such as VGG uses.
_base_ = './ssd300_vgg16_voc0712.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='AttentionInserted',
    detector={{_base_.model}},
    attention=dict(type='CBAM', residual=True),
    targets=[
        'backbone.features.3',
        'backbone.features.8',
        'backbone.features.15',
        'backbone.features.22',
        'backbone.features.29',
    ],
    probe_size=(300, 300),
)
