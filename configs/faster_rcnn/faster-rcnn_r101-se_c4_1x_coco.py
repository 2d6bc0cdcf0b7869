# SE comparison row for ResNet-101, Faster R-CNN C4.
_base_ = './faster-rcnn_r101_c4_1x_coco.py'
attention = dict(type='SE', init_mode='identity')
model = dict(
    backbone=dict(attention=attention, attention_stages=(True, True, True)),
    roi_head=dict(shared_head=dict(attention=attention)),
)
