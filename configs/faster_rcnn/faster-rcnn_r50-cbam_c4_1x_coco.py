# CBAM paper Table 6: ResNet-50 + CBAM, Faster R-CNN C4 (CBAM also in the RoI-head stage 4).
_base_ = './faster-rcnn_r50_c4_1x_coco.py'
attention = dict(type='CBAM', init_mode='identity')  # on torchvision weights: start at identity
model = dict(
    backbone=dict(attention=attention, attention_stages=(True, True, True)),
    roi_head=dict(shared_head=dict(attention=attention)),
)
