# CBAM paper Table 6 comparison row: SE in every block of ResNet-50, C4 (RoI-head stage included).
_base_ = './faster-rcnn_r50_c4_1x_coco.py'
# torchvision weights have no attention: start it at identity so the pretrained function is kept;
# AttnResNet keeps it trainable despite frozen_stages=1 / norm_eval=True (freeze_attention=False)
attention = dict(type='SE', init_mode='identity')
model = dict(
    backbone=dict(attention=attention, attention_stages=(True, True, True)),
    roi_head=dict(shared_head=dict(attention=attention)),
)
