# SSD300 VGG16 with CBAM on every prediction level (AttnSSDHead): each pyramid feature is refined
# right before its classification and regression convs, one module per level with its channels.
_base_ = './ssd300_vgg16_voc0712.py'
custom_imports = dict(imports=['cbam_det'], allow_failed_imports=False)

model = dict(bbox_head=dict(attention=dict(type='CBAM')))
